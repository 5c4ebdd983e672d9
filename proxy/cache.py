"""Audience-free cache of mapped per-source results: in process (cachetools) or shared (Redis).

Key (``entry_key``, the one place it is built): backend + cache key + patient. The cache key
(``MappingSet.cache_key``) is the request (the contract: the fetch key's hash) and the digest of
the mappings that read its answer (their YAML, the code maps they use, the backend configuration
they read): entries made by other mappings — before a deploy — are never served. The shared store
puts ``redis_prefix`` (the layout's version and the deployment key's fingerprint) in front.

Value: every resource the mappings sharing that request built from the answer — all types, before
merge and before any audience policy, so one entry serves every asker; redaction, audit and
search run on every request, cached or not.
Entries are never modified after they are stored (the later stages copy what they change).

An entry is *fresh* for ``ttl_s``; after that, for ``max_stale_s`` more, it may stand in for a
backend that fails — reported as such in the answer — and is otherwise refetched.

The shared store (``cache.store: redis``) lets every worker and host reuse one answer. Its keys
carry the opaque patient id, never a personnummer; its values are health data, so the Redis server
belongs inside the same trust zone as the facade (loopback or a private network, with AUTH/TLS).
A Redis that fails is a cache miss, never a failed request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from cachetools import LRUCache

from proxy.clock import SYSTEM_CLOCK, Clock
from proxy.types import MappedResource

log = logging.getLogger(__name__)


LAYOUT = "fhir-facade:v3"  # v3: the cache key names the mappings too (v2: the request only)


def redis_prefix(fingerprint: str) -> str:
    """What the shared store puts in front of every entry key: the key layout's version and the
    fingerprint of the deployment's key (the cached resources' ids depend on it)."""
    return f"{LAYOUT}:{fingerprint}"


def entry_key(backend: str, cache_key: str, patient_id: str) -> str:
    """The one place an entry's key is built, for every store: ``<backend>:<cache key>:<patient>``.
    ``cache_key`` is ``MappingSet.cache_key``; ``patient_id`` the opaque id, never a personnummer."""
    return f"{backend}:{cache_key}:{patient_id}"


@dataclass(frozen=True, slots=True)
class CacheEntry:
    stored_at: float  # epoch seconds
    resources: tuple[MappedResource, ...]
    size: int | None = None  # bytes read, where the store knows it (the shared store; metrics)


class SourceCache(Protocol):
    ttl_s: float

    async def get(self, backend: str, cache_key: str, patient_id: str) -> tuple[CacheEntry, bool] | None:
        """The entry and whether it is fresh; None when there is none worth having."""

    async def put(
        self, backend: str, cache_key: str, patient_id: str, resources: tuple[MappedResource, ...]
    ) -> None: ...

    def age_s(self, entry: CacheEntry) -> float: ...

    async def close(self) -> None: ...


class _Ages:
    ttl_s: float
    max_stale_s: float
    clock: Clock  # (its epoch reading: a shared entry is judged by other hosts too)

    def age_s(self, entry: CacheEntry) -> float:
        return self.clock.time() - entry.stored_at

    def judge(self, entry: CacheEntry) -> tuple[CacheEntry, bool] | None:
        age = self.age_s(entry)
        if age > self.ttl_s + self.max_stale_s:
            return None
        return entry, age <= self.ttl_s


class MemoryCache(_Ages):
    """Per worker, bounded (least recently used entries go first)."""

    def __init__(
        self, *, ttl_s: float, max_stale_s: float, max_entries: int, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.ttl_s = ttl_s
        self.max_stale_s = max_stale_s
        self.clock = clock
        self._entries: LRUCache[str, CacheEntry] = LRUCache(maxsize=max_entries)

    async def get(self, backend: str, cache_key: str, patient_id: str) -> tuple[CacheEntry, bool] | None:
        key = entry_key(backend, cache_key, patient_id)
        entry = self._entries.get(key)
        if entry is None:
            return None
        judged = self.judge(entry)
        if judged is None:
            self._entries.pop(key, None)
        return judged

    async def put(
        self, backend: str, cache_key: str, patient_id: str, resources: tuple[MappedResource, ...]
    ) -> None:
        self._entries[entry_key(backend, cache_key, patient_id)] = CacheEntry(self.clock.time(), resources)

    async def close(self) -> None:
        self._entries.clear()


class RedisCache(_Ages):
    """Shared by every worker and host; Redis expires entries after ``ttl_s + max_stale_s``."""

    def __init__(
        self,
        client: Any,  # redis.asyncio.Redis
        *,
        ttl_s: float,
        max_stale_s: float,
        prefix: str = "fhir-facade:v1",
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.max_stale_s = max_stale_s
        self.prefix = prefix
        self.clock = clock

    def _key(self, backend: str, cache_key: str, patient_id: str) -> str:
        return f"{self.prefix}:{entry_key(backend, cache_key, patient_id)}"

    async def get(self, backend: str, cache_key: str, patient_id: str) -> tuple[CacheEntry, bool] | None:
        try:
            raw = await self.client.get(self._key(backend, cache_key, patient_id))
        except Exception as exc:  # an unavailable cache is a miss, not a failure
            log.warning("cache read failed (%s): treating as a miss", type(exc).__name__)
            return None
        if raw is None:
            return None
        try:
            doc = orjson.loads(raw)
            entry = CacheEntry(
                doc["stored_at"],
                tuple(MappedResource(**{**r, "refs": tuple(r["refs"])}) for r in doc["resources"]),
                len(raw),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return None
        return self.judge(entry)

    async def put(
        self, backend: str, cache_key: str, patient_id: str, resources: tuple[MappedResource, ...]
    ) -> None:
        doc = {"stored_at": self.clock.time(), "resources": [r._asdict() for r in resources]}
        expire_ms = max(1, int((self.ttl_s + self.max_stale_s) * 1000))
        try:
            await self.client.set(self._key(backend, cache_key, patient_id), orjson.dumps(doc), px=expire_ms)
        except Exception as exc:  # ditto: the answer is just not shared
            log.warning("cache write failed (%s): answer not shared", type(exc).__name__)

    async def close(self) -> None:
        await self.client.aclose()
