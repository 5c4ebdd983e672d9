"""Long histories on demand (proxy/simulators/history.py): the knobs — records per patient, a range
of them, years of history — honoured exactly, spread over the record kinds the mappings read, and
seeded by the patient; the named long-history patient in all three systems."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from proxy.pnr import is_valid_pnr
from proxy.simulators import cosmic, npo, viva
from proxy.simulators import population as pop
from proxy.simulators.history import KIND_WEIGHTS, History, apportion, plan
from proxy.simulators.population import INGEGERD, LONG_HISTORIES, REFERENCE_DAY

PEOPLE = pop.population(6)
GENERATED = [p for p in PEOPLE if p.generated]


def counted(backend: str, entry: dict[str, Any]) -> int:
    """Records in one patient's entry, each a resource to be (Viva's administrations counted)."""
    if backend == "cosmic":
        return sum(len(entry[k]) for k in (*cosmic.KINDS, "threats"))
    if backend == "viva":
        return viva.size(entry)
    return npo.size(entry)


def built(people: list[pop.Person], history: History | None) -> dict[str, dict[str, Any]]:
    return {
        "cosmic": cosmic.build_data(people, history),
        "viva": viva.build_data(people, history),
        "npo": npo.build_data(people, history),
    }


def records_of(data: dict[str, dict[str, Any]], pnr: str) -> dict[str, int]:
    return {b: counted(b, d[pnr]) for b, d in data.items() if pnr in d}


def test_apportion_adds_up_exactly_and_follows_the_weights() -> None:
    for total in (0, 1, 7, 50, 999, 20_000):
        parts = apportion(total, KIND_WEIGHTS["cosmic"])
        assert sum(parts.values()) == total
    parts = apportion(1000, {"a": 3, "b": 1})
    assert parts == {"a": 750, "b": 250}
    assert apportion(3, {"a": 1, "b": 1, "c": 1, "d": 1}) == {"a": 1, "b": 1, "c": 1, "d": 0}


@pytest.mark.parametrize("records", [50, 500])
def test_every_generated_patient_has_exactly_the_records_asked_for(records: int) -> None:
    data = built(PEOPLE, History((records, records), years=10))
    assert any(p.in_viva for p in GENERATED) and any(not p.in_viva for p in GENERATED)
    for person in GENERATED:
        per_system = records_of(data, person.pnr)
        assert sum(per_system.values()) == records, person.pnr
        assert set(per_system) == {"cosmic", "npo"} | ({"viva"} if person.in_viva else set())
        assert all(n > 0 for n in per_system.values()), per_system


def test_a_long_history_spreads_over_every_kind_the_mappings_read() -> None:
    person = next(p for p in GENERATED if p.in_viva)
    data = built([person], History((2000, 2000)))
    entries = {b: d[person.pnr] for b, d in data.items()}
    for kind in cosmic.KINDS:
        assert entries["cosmic"][kind], kind
    for kind in ("vardplaner", "funktionsbedomningar", "anteckningar", "lakemedelslista", "hembesok"):
        assert entries["viva"][kind], kind
    assert sum(len(o["administreringar"]) for o in entries["viva"]["lakemedelslista"]) > 0
    for kind in npo.RECORD_KINDS:
        assert entries["npo"][kind], kind
    # mostly lab results, as in a real record
    labs = len(entries["cosmic"]["labresults"]) + len(entries["npo"]["laboratoryOrderOutcome"])
    assert labs > 2000 * 0.3


def test_a_range_is_drawn_per_patient_inside_it_and_seeded() -> None:
    history = History((50, 5000))
    people = pop.generated_people(40)
    totals = [plan(p, history).total for p in people]  # type: ignore[union-attr]
    assert all(50 <= t <= 5000 for t in totals)
    assert len(set(totals)) > 20  # drawn, not one number for all
    assert sum(t < 500 for t in totals) > sum(t > 2500 for t in totals)  # log-uniform: most are short
    assert totals == [plan(p, history).total for p in people]  # type: ignore[union-attr]


def test_deterministic_for_a_seed_and_a_patient() -> None:
    history = History((300, 300), years=5)
    person = pop.generated_people(6)[3]
    once = built(PEOPLE, history)
    again = built(pop.population(6), history)
    assert once == again
    # the patient's records do not depend on who else is in the population
    alone = built([*pop.DEMO_PEOPLE, *pop.generated_people(4)], history)
    for backend in ("cosmic", "npo"):
        assert alone[backend][person.pnr] == once[backend][person.pnr], backend
    # another seed: other patients, other records
    other = pop.generated_people(6, seed=pop.DEFAULT_SEED + 1)[3]
    assert other.pnr != person.pnr
    theirs = cosmic.build_data([other], history)[other.pnr]["labresults"]
    mine = once["cosmic"][person.pnr]["labresults"]
    assert [r["sampledAt"] for r in theirs] != [r["sampledAt"] for r in mine]


def _dates(value: Any, pnr: str) -> list[datetime]:
    """Every date or time in a record, in any of the three dialects' formats (not the personnummer)."""
    found: list[datetime] = []
    if isinstance(value, dict):
        for v in value.values():
            found += _dates(v, pnr)
    elif isinstance(value, list):
        for v in value:
            found += _dates(v, pnr)
    elif isinstance(value, str) and value != pnr:
        digits = value.replace("-", "").replace(" ", "").replace(":", "")
        for fmt, n in (("%Y%m%d%H%M%S", 14), ("%Y%m%d%H%M", 12), ("%Y%m%d", 8)):
            if len(digits) == n and digits.isdigit() and digits[:2] in ("19", "20"):
                try:
                    found.append(datetime.strptime(digits, fmt))
                except ValueError:
                    pass
                break
    return found


@pytest.mark.parametrize("years", [2, 15])
def test_the_history_reaches_back_the_years_asked_for_and_no_further(years: int) -> None:
    person = GENERATED[0]
    data = built([person], History((1500, 1500), years=years))
    reference = datetime.combine(REFERENCE_DAY, datetime.min.time())
    dates = [
        d
        for backend, d in data.items()
        for kind, records in d[person.pnr].items()
        if kind not in ("patient", "brukare")
        for d in _dates(records, person.pnr)
    ]
    assert dates
    oldest, newest = min(dates), max(dates)
    assert oldest >= reference - timedelta(days=years * 365 + 1)
    assert newest <= reference + timedelta(days=1)
    assert oldest < reference - timedelta(days=years * 365 * 0.6)  # spread over the years, not bunched


def test_without_the_knob_generated_patients_keep_their_small_histories() -> None:
    assert built(PEOPLE, History()) == built(PEOPLE, None)
    small = built(PEOPLE, None)
    for person in GENERATED:
        assert 3 <= sum(records_of(small, person.pnr).values()) <= 60


def test_the_knobs_refuse_nonsense() -> None:
    for records, years in (((-1, 5), 10), ((5, 4), 10), ((0, 5), 10), ((5, 5), 0), ((5, 5), 101)):
        with pytest.raises(ValueError):
            History(records, years)


def test_the_named_long_history_patient_is_in_all_three_with_its_records() -> None:
    assert is_valid_pnr(INGEGERD.pnr) and INGEGERD.pnr[8:11] == "982"  # a test number: serial 98x
    assert INGEGERD not in pop.DEMO_PEOPLE and INGEGERD in pop.NAMED_PEOPLE
    records, _ = LONG_HISTORIES[INGEGERD.pnr]
    assert records >= 5000
    assert INGEGERD.in_cosmic and INGEGERD.in_viva and INGEGERD.in_npo
    data = built([*pop.DEMO_PEOPLE, INGEGERD], None)  # whatever the knobs: its own size
    per_system = records_of(data, INGEGERD.pnr)
    assert sum(per_system.values()) == records
    assert set(per_system) == {"cosmic", "viva", "npo"}
    assert min(per_system.values()) >= 1000
    assert built([INGEGERD], History((50, 50))) == built([INGEGERD], None)
    # not among the generated, whatever the population's size
    assert INGEGERD.pnr not in {p.pnr for p in pop.generated_people(2000)}
