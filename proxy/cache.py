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

The memory store is bounded per worker by bytes (``max_bytes``: the entries' estimated footprint,
``footprint``; least recently used first) and by count (``max_entries``); an entry larger than the
whole budget is not kept. The shared store keeps each entry as zlib-compressed JSON (an entry an
older facade wrote as plain JSON still reads).

The shared store (``cache.store: redis``) lets every worker and host reuse one answer. Its keys
carry the opaque patient id, never a personnummer; its values are health data, so the Redis server
belongs inside the same trust zone as the facade (loopback or a private network, with AUTH/TLS).
A Redis that fails is a cache miss, never a failed request.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
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
    footprint: int = 0  # what it holds in memory, estimated (the memory store's budget counts it)


# What Python holds for mapped resources, per byte of their JSON: tracemalloc measures 3.0–3.5 (2,000
# Cosmic lab results, 400 NPÖ lab results: dicts, strings, the MappedResource tuples); the process's
# resident size grows by more (the allocator's own overhead), so the estimate leans high.
FOOTPRINT_PER_JSON_BYTE = 4
_ENTRY_OVERHEAD = 256  # the entry, its key and the LRU's bookkeeping
_SAMPLE = 32  # resources whose JSON is measured: an entry is one request's answer, one kind of record


def footprint(resources: Sequence[MappedResource]) -> int:
    """An entry's estimated footprint in bytes: ``FOOTPRINT_PER_JSON_BYTE`` × the JSON size of its
    resources, measured on an evenly spread sample of at most 32 of them (an entry's resources are
    of one kind; measuring all would cost a serialisation of every answer cached)."""
    n = len(resources)
    if not n:
        return _ENTRY_OVERHEAD
    sample = resources[:: max(1, n // _SAMPLE)]
    measured = len(orjson.dumps([r._asdict() for r in sample]))
    return _ENTRY_OVERHEAD + FOOTPRINT_PER_JSON_BYTE * measured * n // len(sample)


def _footprint_of(entry: CacheEntry) -> int:
    return entry.footprint


class SourceCache(Protocol):
    ttl_s: float

    async def get(self, backend: str, cache_key: str, patient_id: str) -> tuple[CacheEntry, bool] | None:
        """The entry and whether it is fresh; None when there is none worth having."""

    async def fresh(self, backend: str, cache_key: str, patient_id: str) -> bool:
        """Whether there is a fresh entry — without reading it (a shared entry is not decoded)."""

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


class _Bounded(LRUCache[str, CacheEntry]):
    """cachetools' LRU bounded by the entries' footprints, and by their number as well."""

    def __init__(self, max_bytes: int, max_entries: int) -> None:
        super().__init__(maxsize=max_bytes, getsizeof=_footprint_of)
        self.max_entries = max_entries

    def __setitem__(self, key: str, value: CacheEntry, *args: Any) -> None:
        super().__setitem__(key, value, *args)
        while len(self) > self.max_entries:
            self.popitem()


class MemoryCache(_Ages):
    """Per worker, bounded by bytes and by count (least recently used entries go first)."""

    def __init__(
        self,
        *,
        ttl_s: float,
        max_stale_s: float,
        max_entries: int,
        max_bytes: int = 256 * 1024 * 1024,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_stale_s = max_stale_s
        self.clock = clock
        self._entries = _Bounded(max_bytes, max_entries)

    @property
    def held_bytes(self) -> int:
        """The footprint of the entries held (within ``max_bytes``)."""
        return int(self._entries.currsize)

    async def get(self, backend: str, cache_key: str, patient_id: str) -> tuple[CacheEntry, bool] | None:
        key = entry_key(backend, cache_key, patient_id)
        entry = self._entries.get(key)
        if entry is None:
            return None
        judged = self.judge(entry)
        if judged is None:
            self._entries.pop(key, None)
        return judged

    async def fresh(self, backend: str, cache_key: str, patient_id: str) -> bool:
        entry = self._entries.get(entry_key(backend, cache_key, patient_id))
        return entry is not None and self.age_s(entry) <= self.ttl_s

    async def put(
        self, backend: str, cache_key: str, patient_id: str, resources: tuple[MappedResource, ...]
    ) -> None:
        key = entry_key(backend, cache_key, patient_id)
        entry = CacheEntry(self.clock.time(), resources, footprint=footprint(resources))
        try:
            self._entries[key] = entry
        except ValueError:  # (cachetools: larger than the whole budget) kept, it would empty the cache
            self._entries.pop(key, None)  # (nor does an older answer to the same request stay)
            log.debug(
                "an answer of %d resources (~%d bytes) is larger than the cache: not cached",
                len(resources),
                entry.footprint,
            )

    async def close(self) -> None:
        self._entries.clear()


# zlib level 3: most of level 6's ratio on mapped resources for under half its time (a 2.5 MB entry:
# ~5 ms to compress, ~2 ms to decompress, against ~100 ms to decode its JSON)
_ZLIB_LEVEL = 3


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
            doc = orjson.loads(raw if raw[:1] == b"{" else zlib.decompress(raw))  # ("{": written plain)
            entry = CacheEntry(
                doc["stored_at"],
                tuple(MappedResource(**{**r, "refs": tuple(r["refs"])}) for r in doc["resources"]),
                len(raw),
            )
        except (orjson.JSONDecodeError, zlib.error, KeyError, TypeError):
            return None
        return self.judge(entry)

    async def fresh(self, backend: str, cache_key: str, patient_id: str) -> bool:
        # Redis expires an entry ``ttl_s + max_stale_s`` after it was stored: fresh while more than
        # ``max_stale_s`` of that is left (PTTL: -2 none, -1 no expiry — not ours)
        try:
            left_ms = await self.client.pttl(self._key(backend, cache_key, patient_id))
        except Exception as exc:  # (unavailable: as a miss)
            log.warning("cache read failed (%s): treating as a miss", type(exc).__name__)
            return False
        return bool(left_ms > self.max_stale_s * 1000)

    async def put(
        self, backend: str, cache_key: str, patient_id: str, resources: tuple[MappedResource, ...]
    ) -> None:
        doc = {"stored_at": self.clock.time(), "resources": [r._asdict() for r in resources]}
        expire_ms = max(1, int((self.ttl_s + self.max_stale_s) * 1000))
        try:
            value = zlib.compress(orjson.dumps(doc), _ZLIB_LEVEL)
            await self.client.set(self._key(backend, cache_key, patient_id), value, px=expire_ms)
        except Exception as exc:  # ditto: the answer is just not shared
            log.warning("cache write failed (%s): answer not shared", type(exc).__name__)

    async def close(self) -> None:
        await self.client.aclose()
