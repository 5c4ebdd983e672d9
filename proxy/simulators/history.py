"""Long histories on demand: how many records a patient has, in which system, of which kinds, and when.

The knobs (``simulators`` in ``config/facade.yaml``, ``fhir-facade simulate --records N --years Y``):

* ``records`` — records per generated patient across the three systems: a number, or a range
  ``[min, max]`` drawn per patient (log-uniform: a population where most histories are short and a
  few are very long); 0, the default, keeps each dialect's small histories (3–58 records);
* ``years`` — how far back a long history reaches from the simulators' reference day.

A named long-history patient (``long_histories`` in ``data/people.yaml``) has a history of its own
size whatever the knobs say.

Everything is seeded by the patient (``Person.rng_seed``, for a named one the personnummer): the three
simulators run in separate processes, and each must arrive at the same split without asking the
others. A patient's records are split over the systems it is known to (``SOURCE_WEIGHTS``), then over
each system's record kinds (``KIND_WEIGHTS``: mostly lab results, then notes and visits, a few
diagnoses and medications), by largest remainder so the counts add up to exactly ``records``. Each
generated record maps to one FHIR resource: long histories hold nothing a mapping leaves out (no
social-care notes or home-help visits, nothing nullified, no diagnosis copied between systems), so
"a patient with 5,000 records" is an ``$everything`` of 5,000 resources besides the Patient.
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from proxy.simulators.population import LONG_HISTORIES, Person, at

# How a long history is split over the systems a patient is known to (relative weights).
SOURCE_WEIGHTS = {"cosmic": 5.0, "npo": 3.0, "viva": 2.0}

# How each system's share is split over its record kinds (relative weights), in the order generated.
KIND_WEIGHTS: dict[str, dict[str, float]] = {
    "cosmic": {
        "labresults": 50,
        "notes": 15,
        "carecontacts": 13,
        "medications": 6,
        "diagnoses": 5,
        "procedures": 5,
        "vaccinations": 4,
        "alerts": 2,
    },
    "viva": {
        "administreringar": 30,  # signed doses, nested in the ordinations of lakemedelslista
        "hembesok": 28,
        "anteckningar": 22,
        "funktionsbedomningar": 12,
        "lakemedelslista": 4,  # the ordinations
        "vardplaner": 4,
    },
    "npo": {
        "laboratoryOrderOutcome": 45,
        "careDocumentation": 18,
        "careContact": 15,
        "medicationMedicalRecord": 8,
        "diagnosis": 7,
        "functionalStatusAssessment": 4,
        "alertInformation": 3,
    },
}


def apportion(total: int, weights: Mapping[str, float]) -> dict[str, int]:
    """``total`` split in proportion to ``weights``, the parts adding up to exactly ``total``
    (largest remainder; ties go to the first named)."""
    whole = sum(weights.values())
    if total <= 0 or whole <= 0:
        return dict.fromkeys(weights, 0)
    exact = {k: total * w / whole for k, w in weights.items()}
    parts = {k: math.floor(v) for k, v in exact.items()}
    order = sorted(weights, key=lambda k: (-(exact[k] - parts[k]), list(weights).index(k)))
    for k in order[: total - sum(parts.values())]:
        parts[k] += 1
    return parts


@dataclass(frozen=True, slots=True)
class History:
    """The long-history knobs: records per generated patient (``(n, n)`` a fixed number, ``(lo, hi)``
    a log-uniform range; ``(0, 0)`` the small default histories) and years of history."""

    records: tuple[int, int] = (0, 0)
    years: int = 10

    def __post_init__(self) -> None:
        lo, hi = self.records
        if not (0 <= lo <= hi) or (lo == 0 < hi):
            raise ValueError("records: a number ≥ 0, or a range [min, max] with 1 ≤ min ≤ max")
        if not 1 <= self.years <= 100:
            raise ValueError("years: 1 to 100")

    @property
    def enabled(self) -> bool:
        return self.records[1] > 0

    def total(self, key: str) -> int:
        """The number of records of the patient seeded ``key``."""
        lo, hi = self.records
        if lo == hi:
            return lo
        rng = random.Random(f"{key}:history:records")
        return min(hi, max(lo, round(math.exp(rng.uniform(math.log(lo), math.log(hi))))))


def seed_of(person: Person) -> str:
    """What a patient's records are seeded by: a generated patient's seed, a named one's personnummer."""
    return person.rng_seed or person.pnr


@dataclass(frozen=True, slots=True)
class Plan:
    """One patient's long history: how many records of each kind each system holds, over how many years."""

    key: str  # the seed
    years: int
    counts: Mapping[str, Mapping[str, int]]  # backend → record kind → records

    @property
    def total(self) -> int:
        return sum(sum(kinds.values()) for kinds in self.counts.values())

    def rng(self, backend: str) -> random.Random:
        return random.Random(f"{self.key}:{backend}:history")

    def days_ago(self, rng: random.Random, *, newest: int = 1) -> int:
        """A day of the history, weighted towards the recent years (a chronic illness is followed
        more closely as it advances), at least ``newest`` days back."""
        span = self.years * 365
        return newest + int((span - newest) * rng.random() ** 1.4)

    def moment(self, rng: random.Random, first: int = 8, last: int = 16, *, newest: int = 1) -> datetime:
        """A time of a working day in the history, at least ``newest`` days back."""
        days = self.days_ago(rng, newest=newest)
        return at(days, rng.randint(first, last), rng.choice((0, 10, 15, 20, 30, 40, 45, 50)))


def plan(person: Person, history: History | None) -> Plan | None:
    """The long history of ``person`` — a named long-history patient's, or a generated patient's under
    the knobs — or None: the dialect's small history (or, for a named demo patient, its data file)."""
    key = seed_of(person)
    if person.pnr in LONG_HISTORIES:
        total, years = LONG_HISTORIES[person.pnr]
    elif person.generated and history is not None and history.enabled:
        total, years = history.total(key), history.years
    else:
        return None
    known = {"cosmic": person.in_cosmic, "npo": person.in_npo, "viva": person.in_viva}
    shares = apportion(total, {b: w for b, w in SOURCE_WEIGHTS.items() if known[b]})
    counts = {b: apportion(n, KIND_WEIGHTS[b]) for b, n in shares.items()}
    return Plan(key, years, counts)
