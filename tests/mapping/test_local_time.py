"""Local Swedish times the clocks made ambiguous or skipped: one documented rule, and a flag.

The backends write Europe/Stockholm wall-clock times without a zone. Twice a year a wall-clock time
is not one instant: 2026-03-29 02:30 does not exist (the clocks jump 02:00 → 03:00) and
2026-10-25 02:30 happens twice (03:00 → 02:00). The rule (mappings/README.md, "Local times"),
RFC 5545's and PEP 495's ``fold=0``:

* an ambiguous time is the EARLIER instant (the first 02:30, summer time +02:00);
* a time in the gap is read with the offset before the gap, i.e. moved forward by the gap
  (02:30 → 03:30+02:00, the same instant as 01:30Z);

and the element carries an extension saying so (``urn:fhir-facade:local-time-ambiguous`` /
``urn:fhir-facade:local-time-nonexistent``, valueString = the source's own text), so that a reader
knows the time was resolved rather than read. Conditions on local times (``before_now``) use the
same rule and compare instants, not wall-clock readings.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from proxy.mapping import validate as validate_module
from proxy.mapping.engine import map_records
from proxy.simulators import population as pop
from proxy.timeutil import SWEDEN, fhir_range, iso_local_to_fhir, local_to_fhir
from tests.mapping import test_compiler as tc
from tests.mapping import test_cosmic_mappings as cm

AMBIGUOUS = "urn:fhir-facade:local-time-ambiguous"
NONEXISTENT = "urn:fhir-facade:local-time-nonexistent"


def instant(value: str) -> datetime:
    """The instant a FHIR dateTime with seconds and a zone denotes, in UTC."""
    return datetime.fromtimestamp(fhir_range(value)[0], UTC)


# ---- the rule, in timeutil ----------------------------------------------------------------------


def test_a_time_in_the_spring_gap_moves_forward_by_the_gap() -> None:
    value = local_to_fhir("2026-03-29 02:30", "%Y-%m-%d %H:%M", "dateTime")
    assert value == "2026-03-29T03:30:00+02:00"  # a wall-clock time that exists, with its offset
    assert instant(value) == datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
    # the first and last minutes of the gap, and the first minute after it
    assert local_to_fhir("202603290200", "%Y%m%d%H%M", "dateTime") == "2026-03-29T03:00:00+02:00"
    assert local_to_fhir("202603290259", "%Y%m%d%H%M", "dateTime") == "2026-03-29T03:59:00+02:00"
    assert local_to_fhir("202603290300", "%Y%m%d%H%M", "dateTime") == "2026-03-29T03:00:00+02:00"


def test_an_ambiguous_autumn_time_is_the_earlier_instant() -> None:
    value = local_to_fhir("2026-10-25 02:30", "%Y-%m-%d %H:%M", "dateTime")
    assert value == "2026-10-25T02:30:00+02:00"
    assert instant(value) == datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    assert iso_local_to_fhir("2026-10-25T02:30:00") == "2026-10-25T02:30:00+02:00"
    assert iso_local_to_fhir("2026-03-29T02:30:00") == "2026-03-29T03:30:00+02:00"


# ---- the flag, through the mapping language ------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "text", "url", "value"),
    [
        ("%Y-%m-%d %H:%M", "2026-03-29 02:30", NONEXISTENT, "2026-03-29T03:30:00+02:00"),
        ("%Y%m%d%H%M%S", "20260329023000", NONEXISTENT, "2026-03-29T03:30:00+02:00"),
        ("%Y-%m-%d %H:%M", "2026-10-25 02:30", AMBIGUOUS, "2026-10-25T02:30:00+02:00"),
        ("%Y%m%d%H%M", "202610250230", AMBIGUOUS, "2026-10-25T02:30:00+02:00"),
        ("iso", "2026-10-25T02:30:00", AMBIGUOUS, "2026-10-25T02:30:00+02:00"),
        ("iso", "2026-03-29T02:30", NONEXISTENT, "2026-03-29T03:30:00+02:00"),
    ],
)
def test_a_resolved_local_time_is_flagged_on_its_element(fmt: str, text: str, url: str, value: str) -> None:
    fields = {
        "onsetDateTime": {"$path": "t", "$date": fmt},
        "period": {"start": {"$path": "t", "$date": fmt}},
    }
    mark = {"extension": [{"url": url, "valueString": text}]}
    assert tc.build(fields, {"t": text}) == {
        "onsetDateTime": value,
        "_onsetDateTime": mark,
        "period": {"start": value, "_start": mark},
    }


@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        ("%Y-%m-%d %H:%M", "2026-10-25 01:59"),  # the minute before the repeated hour
        ("%Y-%m-%d %H:%M", "2026-10-25 03:00"),  # the first minute after it
        ("%Y-%m-%d %H:%M", "2026-03-29 03:00"),  # the first minute of summer time
        ("%Y-%m-%d %H:%M", "2026-03-29 01:59"),
        ("%Y-%m-%d", "2026-03-29"),  # a date has no time to resolve
        ("iso", "2026-10-25T02:30:00+01:00"),  # the source gave the zone: nothing to resolve
        ("iso", "2026-03-29T02:30:00Z"),
    ],
)
def test_an_unambiguous_time_carries_no_flag(fmt: str, text: str) -> None:
    built = tc.build({"onsetDateTime": {"$path": "t", "$date": fmt}}, {"t": text})
    assert set(built) == {"onsetDateTime"}
    assert type(built["onsetDateTime"]) is str


def test_a_flagged_time_is_plain_json_and_valid_fhir() -> None:
    """The element keeps a plain string (the extension is beside it, as FHIR JSON has it)."""
    fields = {
        "status": "final",
        "code": {"text": "x"},
        "effectiveDateTime": {"$path": "t", "$date": "%Y%m%d%H%M"},
        "issued": {"$path": "t", "$date": "%Y%m%d%H%M"},
    }
    built = tc.build(fields, {"t": "202603290230"})
    assert type(built["effectiveDateTime"]) is str
    get_fhir_model_class("Observation").model_validate({"resourceType": "Observation", **built})


def test_before_now_compares_instants_by_the_same_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    fields = {"ended": {"$const": True, "$when": {"path": "end", "before_now": "%Y%m%d%H%M"}, "$else": False}}
    # 01:15Z: the second 02:15 of the autumn night (winter time). An end at 02:30 is the first
    # 02:30 (00:30Z) by the rule: it has passed, though a wall-clock reading says 02:30 > 02:15.
    monkeypatch.setattr(
        validate_module, "now", lambda: datetime(2026, 10, 25, 1, 15, tzinfo=UTC).astimezone(SWEDEN)
    )
    assert tc.build(fields, {"end": "202610250230"}) == {"ended": True}
    # 01:15Z in spring is 03:15 summer time. An end at 02:30, in the gap, is 03:30 (01:30Z): not yet.
    monkeypatch.setattr(
        validate_module, "now", lambda: datetime(2026, 3, 29, 1, 15, tzinfo=UTC).astimezone(SWEDEN)
    )
    assert tc.build(fields, {"end": "202603290230"}) == {"ended": False}


# ---- a real mapping over a Cosmic record ---------------------------------------------------------


def _map_lab(sampled: str, result: str) -> dict[str, Any]:
    record = {
        "resultId": "L-DST-1",
        "npuCode": "NPU02319",
        "analysisName": "B-Hemoglobin",
        "resultValue": "138",
        "unit": "g/L",
        "referenceLow": "134",
        "referenceHigh": "170",
        "abnormal": False,
        "sampledAt": sampled,
        "resultAt": result,
        "state": "FINAL",
        "careUnit": {"hsaId": pop.UNITS["vc-norr"][0], "name": "Vc", "providerHsaId": pop.REGION_PROVIDER},
    }
    ctx = cm.context(pop.TOLVAN)
    mapped, skipped = map_records(
        cm.BY_NAME["labresults"], {"items": [record]}, ctx, source_uri="urn:x", priority=1
    )
    assert skipped == 0 and len(mapped) == 1
    return mapped[0].resource


def test_a_cosmic_lab_result_sampled_in_the_gap_and_issued_in_the_repeated_hour() -> None:
    obs = _map_lab("2026-03-29 02:30", "2026-10-25 02:30")
    assert obs["effectiveDateTime"] == "2026-03-29T03:30:00+02:00"
    assert obs["_effectiveDateTime"] == {
        "extension": [{"url": NONEXISTENT, "valueString": "2026-03-29 02:30"}]
    }
    assert obs["issued"] == "2026-10-25T02:30:00+02:00"
    assert obs["_issued"] == {"extension": [{"url": AMBIGUOUS, "valueString": "2026-10-25 02:30"}]}
    cm.validate(obs)
    plain = _map_lab("2026-03-29 08:05", "2026-03-29 14:30")
    assert "_effectiveDateTime" not in plain and "_issued" not in plain
