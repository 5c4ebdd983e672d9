"""A simulator's patients, their records made when first asked for.

At start a simulator knows only who exists (the index: each patient's ``Person`` and place in the
simulator's own numbering, which some dialects' ids carry). A patient's records are generated on
the first request that needs them and kept in a least-recently-used cache bounded by the number of
records it holds, so 100,000 patients start in seconds and a few long histories cannot fill memory.
Generation is seeded by the patient, so a patient dropped from the cache comes back the same.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Generic, TypeVar

from proxy.simulators.population import Person

Entry = TypeVar("Entry")

DEFAULT_CACHED_RECORDS = 250_000


class Patients(Generic[Entry]):
    """personnummer → the patient's entry in one simulator, made on first access by
    ``make(person, seq)``; ``size(entry)`` is what an entry weighs against ``cached_records``.
    The most recently made entry is always kept, however large."""

    def __init__(
        self,
        people: Iterable[Person],
        make: Callable[[Person, int], Entry],
        size: Callable[[Entry], int],
        cached_records: int = DEFAULT_CACHED_RECORDS,
    ) -> None:
        self._index = {p.pnr: (p, seq) for seq, p in enumerate(people)}
        self._make = make
        self._size = size
        self.cached_records = cached_records
        self._cache: OrderedDict[str, tuple[Entry, int]] = OrderedDict()
        self._held = 0
        self.made = 0  # entries generated so far (a patient dropped and asked for again counts twice)

    def __len__(self) -> int:
        return len(self._index)

    def __contains__(self, pnr: object) -> bool:
        return pnr in self._index

    def person(self, pnr: str) -> Person | None:
        found = self._index.get(pnr)
        return found[0] if found else None

    @property
    def held(self) -> int:
        """Records in the cache now."""
        return self._held

    def cached(self) -> list[str]:
        """Whose entries are in the cache, least recently used first."""
        return list(self._cache)

    def get(self, pnr: str) -> Entry | None:
        """The patient's entry, or None for someone this simulator does not know."""
        hit = self._cache.get(pnr)
        if hit is not None:
            self._cache.move_to_end(pnr)
            return hit[0]
        found = self._index.get(pnr)
        if found is None:
            return None
        entry = self._make(*found)
        self.made += 1
        weight = self._size(entry)
        self._cache[pnr] = (entry, weight)
        self._held += weight
        while self._held > self.cached_records and len(self._cache) > 1:
            _, (_, dropped) = self._cache.popitem(last=False)
            self._held -= dropped
        return entry
