"""When each record is dated, learnt as records are mapped: what narrows a later read by id.

A resource id (``<patient>-<backend>-<hash>``) names the backend that holds the record but not its
date, so a read by id used to ask the holder for its whole list of that type (a long history's lab
results: hundreds of kB for one). Every mapped resource of a type some backend can narrow by date
(``request.filters``) leaves its clinical time here, by id; a read of an id found here asks the holder
for the days around it first (``proxy.pipeline.stages``). It is only a hint: a record not in that
narrowed list — moved to another date, or gone — is looked for in the whole list, as without one,
so a hint never makes an answer differ; and hints are learnt from what the backends said, whoever
asked, never from what any asker was shown.

Per worker, bounded (``MAX``): when it is full, the half learnt first is forgotten (an id learnt
again keeps its first place). The ids are opaque; no personnummer is kept.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import islice

from proxy.types import MappedResource

MAX = 50_000  # ids (about 7 MB)


class RecordDates:
    __slots__ = ("_at", "_types")

    def __init__(self, types: Iterable[str]) -> None:
        self._types = frozenset(types)  # the types a backend can narrow by date
        self._at: dict[str, float] = {}

    def learn(self, mapped: Iterable[MappedResource]) -> None:
        types = self._types
        self._at.update(
            (r.resource["id"], r.clinical_time)
            for r in mapped
            if r.clinical_time is not None and r.resource["resourceType"] in types
        )
        if len(self._at) > MAX:  # (the half learnt last kept: a dict keeps the order keys came in)
            self._at = dict(islice(self._at.items(), len(self._at) - MAX // 2, None))

    def get(self, resource_id: str) -> float | None:
        return self._at.get(resource_id)

    def forget(self) -> None:
        """Every hint (a worker that has mapped nothing yet: the reads ask whole lists)."""
        self._at.clear()
