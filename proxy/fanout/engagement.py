"""A learned engagement index: which backends hold nothing about a patient, for a while.

NTjP's engagement index tells the aggregating platform which source systems hold data for a
patient, so it asks only those. The facade learns the negative half from the answers themselves:
when a backend has answered *every* one of its contracts for a patient (an ``$everything``) and none
held a record, it is not asked about that patient again for ``ttl_s`` — the answer says so. Any
record from it clears the mark at once. The index is per worker; losing it costs only requests.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from cachetools import TTLCache


class EngagementIndex:
    def __init__(
        self, *, ttl_s: float, max_entries: int = 200_000, clock: Callable[[], float] = time.monotonic
    ):
        self._empty: TTLCache[tuple[str, str], bool] = TTLCache(maxsize=max_entries, ttl=ttl_s, timer=clock)

    def holds_nothing(self, backend: str, patient_id: str) -> bool:
        return (backend, patient_id) in self._empty

    def learn(self, backend: str, patient_id: str, *, holds_data: bool) -> None:
        if holds_data:
            self._empty.pop((backend, patient_id), None)
        else:
            self._empty[(backend, patient_id)] = True
