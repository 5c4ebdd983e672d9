"""FHIR search semantics on single resources: token forms and date prefixes over ranges."""

from __future__ import annotations

import math
from datetime import UTC
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.fhir.errors import FhirError
from proxy.fhir.params import _date, _token
from proxy.fhir.searchparams import _CLINICAL, BY_TYPE, _date_ranges, clinical_date, matches, sort_time
from proxy.types import SearchFilter

OBS = {
    "resourceType": "Observation",
    "id": "o1",
    "status": "final",
    "code": {"coding": [{"system": "urn:oid:1.2.752.108.1", "code": "NPU03429"}]},
    "category": [
        {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}
            ]
        }
    ],
    "effectiveDateTime": "2024-05-15T08:05:00+02:00",
}
FLAG = {"resourceType": "Flag", "id": "f1", "period": {"start": "2024-01-01T00:00:00+01:00"}}


def token(name: str, *raw: str) -> SearchFilter:
    return SearchFilter(name, "token", tuple(_token(r, name) for r in raw))


def date(name: str, *raw: str) -> SearchFilter:
    return SearchFilter(name, "date", tuple(_date(r, name) for r in raw))


@pytest.mark.parametrize(
    ("raw", "hit"),
    [
        ("NPU03429", True),
        ("urn:oid:1.2.752.108.1|NPU03429", True),
        ("urn:oid:1.2.752.108.1|", True),
        ("|NPU03429", False),  # explicitly no system; this coding has one
        ("http://loinc.org|NPU03429", False),
        ("NPU00000", False),
    ],
)
def test_token_forms(raw: str, hit: bool) -> None:
    assert matches(OBS, [token("code", raw)]) is hit


def test_token_or_within_and_across() -> None:
    assert matches(OBS, [token("code", "X", "NPU03429")])
    assert matches(
        OBS, [token("code", "NPU03429"), token("category", "laboratory"), token("status", "final")]
    )
    assert not matches(OBS, [token("code", "NPU03429"), token("status", "preliminary")])


@pytest.mark.parametrize(
    ("raw", "hit"),
    [
        ("2024", True),
        ("2024-05", True),
        ("2024-05-15", True),
        ("2024-05-16", False),
        ("ne2024-05-15", False),
        ("ge2024-05-15", True),
        ("gt2024-05-15", False),  # the target lies inside the day, not above it
        ("gt2024-05-14", True),
        ("le2024-05-15", True),
        ("lt2024-05-15", False),
        ("lt2024-05-16", True),
        ("sa2024-05-14", True),
        ("eb2024-05-16", True),
        ("eb2024-05-15", False),
        ("ge2024-05-15T08:00:00+02:00", True),
        ("ge2024-05-15T06:10:00Z", False),  # 08:10 Swedish summer time, after the sample
    ],
)
def test_date_prefixes(raw: str, hit: bool) -> None:
    assert matches(OBS, [date("date", raw)]) is hit


def test_open_period_extends_forever() -> None:
    assert matches(FLAG, [date("date", "ge2030-01-01")])
    assert not matches(FLAG, [date("date", "lt2023-12-31")])
    assert not matches(FLAG, [date("date", "eq2024")])  # an open period is not within one year


@pytest.mark.parametrize(
    "raw", ["2024-13", "2024-02-30", "yesterday", "ap2024", "xx2024", "2024-05-15T25:00"]
)
def test_bad_dates_are_rejected(raw: str) -> None:
    with pytest.raises(FhirError) as exc:
        _date(raw, "date")
    assert exc.value.status == 400


# ---- the clinical time merge orders by -----------------------------------------------------------

_DATE_TEXT = st.one_of(
    st.sampled_from(
        [
            "2024",
            "2024-05",
            "2024-05-15",
            "2024-02-30",  # no such day
            "9999-12-31",  # beyond what can be represented
            "2024-05-15T08:05:00+02:00",
            "2024-05-15T08:05:00Z",
            "2024-05-15T08:05:00.25-03:30",
            "2024-05-15T08:05+01:00",
            "2024-05-15T08:05:00",  # no zone: read as Swedish time
            "not a date",
            "",
        ]
    ),
    st.datetimes(timezones=st.just(UTC)).map(lambda d: d.isoformat(timespec="seconds")),
)
_DATE_VALUE = st.one_of(
    st.none(),
    st.integers(),
    _DATE_TEXT,
    st.fixed_dictionaries({}, optional={"start": st.one_of(_DATE_TEXT, st.integers()), "end": _DATE_TEXT}),
)


@given(
    rtype=st.sampled_from(sorted({*BY_TYPE, "Patient", "Basic"})),
    values=st.dictionaries(
        st.sampled_from(sorted({path for p in _CLINICAL.values() if p for path in p.paths} | {"status"})),
        st.one_of(_DATE_VALUE, st.lists(_DATE_VALUE, max_size=3)),
        max_size=3,
    ),
)
def test_sort_time_is_the_latest_start_of_the_clinical_date(rtype: str, values: dict[str, Any]) -> None:
    """``sort_time`` reads the clinical date's elements directly; it must agree with the ranges
    date search compares: the latest start that is bounded, None when there is none."""
    resource = {"resourceType": rtype, **values}
    p = clinical_date(rtype)
    starts = [lo for lo, _ in _date_ranges(resource, p) if not math.isinf(lo)] if p else []
    assert sort_time(resource) == (max(starts) if starts else None)


def test_clinical_dates_are_top_level_elements() -> None:
    """(``sort_time`` reads each path as one key of the resource)"""
    assert all("." not in path for p in _CLINICAL.values() if p for path in p.paths)
