"""Audience-free cache of mapped per-source results: in process (cachetools) or shared (Redis).

Key: backend + request (the contract) + patient. Value: every resource the mappings sharing that
request built from the answer — all types, before merge and before any audience policy, so one
entry serves every asker; redaction, audit and search run on every request, cached or not.
Entries are never modified after they are stored (the later stages copy what they change).

An entry is *fresh* for ``ttl_s``; after that, for ``max_stale_s`` more, it may stand in for a
backend that fails — reported as such in the answer — and is otherwise refetched.

The shared store (``cache.store: redis``) lets every worker and host reuse one answer. Its keys
carry the opaque patient id, never a personnummer; its values are health data, so the Redis server
belongs inside the same trust zone as the facade (loopback or a private network, with AUTH/TLS).
A Redis that fails is a cache miss, never a failed request.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from cachetools import LRUCache

from proxy.types import MappedResource

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class CacheEntry:
    stored_at: float  # epoch seconds
    resources: tuple[MappedResource, ...]
    size: int | None = None  # bytes read, where the store knows it (the shared store; metrics)


class SourceCache(Protocol):
    ttl_s: float

    async def get(self, backend: str, request_key: str, patient_id: str) -> tuple[CacheEntry, bool] | None:
        """The entry and whether it is fresh; None when there is none worth having."""

    async def put(
        self, backend: str, request_key: str, patient_id: str, resources: tuple[MappedResource, ...]
    ) -> None: ...

    def age_s(self, entry: CacheEntry) -> float: ...

    async def close(self) -> None: ...


class _Ages:
    ttl_s: float
    max_stale_s: float
    clock: Callable[[], float]

    def age_s(self, entry: CacheEntry) -> float:
        return self.clock() - entry.stored_at

    def judge(self, entry: CacheEntry) -> tuple[CacheEntry, bool] | None:
        age = self.age_s(entry)
        if age > self.ttl_s + self.max_stale_s:
            return None
        return entry, age <= self.ttl_s


class MemoryCache(_Ages):
    """Per worker, bounded (least recently used entries go first)."""

    def __init__(
        self, *, ttl_s: float, max_stale_s: float, max_entries: int, clock: Callable[[], float] = time.time
    ) -> None:
        self.ttl_s = ttl_s
        self.max_stale_s = max_stale_s
        self.clock = clock
        self._entries: LRUCache[tuple[str, str, str], CacheEntry] = LRUCache(maxsize=max_entries)

    async def get(self, backend: str, request_key: str, patient_id: str) -> tuple[CacheEntry, bool] | None:
        key = (backend, request_key, patient_id)
        entry = self._entries.get(key)
        if entry is None:
            return None
        judged = self.judge(entry)
        if judged is None:
            self._entries.pop(key, None)
        return judged

    async def put(
        self, backend: str, request_key: str, patient_id: str, resources: tuple[MappedResource, ...]
    ) -> None:
        self._entries[(backend, request_key, patient_id)] = CacheEntry(self.clock(), resources)

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
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.ttl_s = ttl_s
        self.max_stale_s = max_stale_s
        self.prefix = prefix
        self.clock = clock

    def _key(self, backend: str, request_key: str, patient_id: str) -> str:
        contract = hashlib.blake2b(request_key.encode(), digest_size=8).hexdigest()
        return f"{self.prefix}:{backend}:{contract}:{patient_id}"

    async def get(self, backend: str, request_key: str, patient_id: str) -> tuple[CacheEntry, bool] | None:
        try:
            raw = await self.client.get(self._key(backend, request_key, patient_id))
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
        self, backend: str, request_key: str, patient_id: str, resources: tuple[MappedResource, ...]
    ) -> None:
        doc = {"stored_at": self.clock(), "resources": [r._asdict() for r in resources]}
        expire_ms = max(1, int((self.ttl_s + self.max_stale_s) * 1000))
        try:
            await self.client.set(
                self._key(backend, request_key, patient_id), orjson.dumps(doc), px=expire_ms
            )
        except Exception as exc:  # ditto: the answer is just not shared
            log.warning("cache write failed (%s): answer not shared", type(exc).__name__)

    async def close(self) -> None:
        await self.client.aclose()
