"""Audience-free cache of mapped per-source results (in process, cachetools).

Key: backend + request (the contract) + patient. Value: every resource the mappings sharing that
request built from the answer — all types, before merge and before any audience policy, so one
entry serves every asker; redaction, audit and search run on every request, cached or not.
Entries are never modified after they are stored (the later stages copy what they change).

An entry is *fresh* for ``ttl_s``; after that, for ``max_stale_s`` more, it may stand in for a
backend that fails — reported as such in the answer — and is otherwise refetched.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from cachetools import LRUCache

from proxy.types import MappedResource


@dataclass(frozen=True, slots=True)
class CacheEntry:
    stored_at: float  # epoch seconds
    resources: tuple[MappedResource, ...]


class SourceCache:
    def __init__(
        self,
        *,
        ttl_s: float,
        max_stale_s: float,
        max_entries: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_stale_s = max_stale_s
        self.clock = clock
        self._entries: LRUCache[tuple[str, str, str], CacheEntry] = LRUCache(maxsize=max_entries)

    def get(self, backend: str, request_key: str, pnr: str) -> tuple[CacheEntry, bool] | None:
        """The entry and whether it is fresh; None when there is none worth having."""
        key = (backend, request_key, pnr)
        entry = self._entries.get(key)
        if entry is None:
            return None
        age = self.clock() - entry.stored_at
        if age > self.ttl_s + self.max_stale_s:
            self._entries.pop(key, None)
            return None
        return entry, age <= self.ttl_s

    def put(self, backend: str, request_key: str, pnr: str, resources: tuple[MappedResource, ...]) -> None:
        self._entries[(backend, request_key, pnr)] = CacheEntry(self.clock(), resources)

    def age_s(self, entry: CacheEntry) -> float:
        return self.clock() - entry.stored_at
