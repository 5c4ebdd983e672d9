"""A learned engagement index: which backends do not know a patient, for a short while.

NTjP's engagement index tells the aggregating platform which source systems hold data for a
patient, so it asks only those. The facade learns the negative half, and only from a positive
statement: a backend whose patient lookup answered its declared "unknown patient" (the mapping's
``request.unknown_patient``; see proxy.fanout) is not asked about that patient again for ``ttl_s``
(config ``engagement.ttl_s``, 60 s, at most 300) — the answer names it "not asked" and says why.
Empty lists, records, failures and bare 404s teach it nothing (so whether a source is asked never
depends on records an asker may not see, and the first answer after a fault is complete); a lookup
that knows the patient clears the mark. The pipeline never consults it for a query holding a type
in ``engagement.never_skip`` (Flag, AllergyIntolerance). The index is per worker; losing it costs
only requests.
"""

from __future__ import annotations

from cachetools import TTLCache

from proxy.clock import SYSTEM_CLOCK, Clock


class EngagementIndex:
    """(backend, patient id) pairs whose lookup said "unknown patient" less than ``ttl_s`` ago."""

    def __init__(self, *, ttl_s: float, max_entries: int = 200_000, clock: Clock = SYSTEM_CLOCK):
        self._unknown: TTLCache[tuple[str, str], bool] = TTLCache(
            maxsize=max_entries, ttl=ttl_s, timer=clock.monotonic
        )

    def unknown_here(self, backend: str, patient_id: str) -> bool:
        """Whether ``backend`` said positively, a moment ago, that it does not know the patient."""
        return (backend, patient_id) in self._unknown

    def learn(self, backend: str, patient_id: str, *, known: bool) -> None:
        """What the backend's patient lookup just said: it knows the patient, or positively not."""
        if known:
            self._unknown.pop((backend, patient_id), None)
        else:
            self._unknown[(backend, patient_id)] = True
