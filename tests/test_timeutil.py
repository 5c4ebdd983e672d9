"""``fhir_range``: the instant range a FHIR date value denotes, including its fast path."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.timeutil import fhir_range

OFFSETS = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))


@given(st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1)), OFFSETS)
def test_a_datetime_with_seconds_and_a_zone_is_that_second(moment: datetime, zone: timezone) -> None:
    aware = moment.replace(microsecond=0, tzinfo=zone)
    text = aware.isoformat()  # e.g. 2024-05-15T10:00:00+02:00 (the fast path)
    expected = aware.astimezone(UTC).timestamp()
    assert fhir_range(text) == (expected, expected + 1.0)
    if zone.utcoffset(None) == timedelta(0):
        assert fhir_range(text.replace("+00:00", "Z")) == (expected, expected + 1.0)


@pytest.mark.parametrize(
    ("value", "lo", "width"),
    [
        ("2024-05-15T10:00:00.5+02:00", datetime(2024, 5, 15, 8, 0, 0, 500000, tzinfo=UTC), 0.1),
        ("2024-05-15T10:00+02:00", datetime(2024, 5, 15, 8, 0, tzinfo=UTC), 60.0),
        ("2024-05-15T10:00:00", datetime(2024, 5, 15, 8, 0, tzinfo=UTC), 1.0),  # no zone: Swedish time
        ("2024-05-15", datetime(2024, 5, 14, 22, 0, tzinfo=UTC), 24 * 3600.0),  # a Swedish day
        ("2024-03-31", datetime(2024, 3, 30, 23, 0, tzinfo=UTC), 23 * 3600.0),  # clocks forward
        ("2024-10-27", datetime(2024, 10, 26, 22, 0, tzinfo=UTC), 25 * 3600.0),  # clocks back
        ("2024-12", datetime(2024, 11, 30, 23, 0, tzinfo=UTC), 31 * 24 * 3600.0),
        ("2024", datetime(2023, 12, 31, 23, 0, tzinfo=UTC), 366 * 24 * 3600.0),
    ],
)
def test_the_other_precisions_keep_their_widths(value: str, lo: datetime, width: float) -> None:
    start, end = fhir_range(value)
    assert start == lo.timestamp()
    assert end - start == pytest.approx(width)


@pytest.mark.parametrize(
    "value",
    [
        "9999-12-31T23:59:59-01:00",
        "9999-12-31",  # legacy "until further notice": its day's end is beyond what can be represented
        "9999",
        "2024-02-30",
        "2024-13",
        "0001-01-01T00:00:00+01:00",
        "2024-02-30T10:00:00+01:00",
        "2024-05-15 10:00",
        "2024-05-15T10:00:00+15:00",  # no zone is that far from UTC
        "2024-05-15T10:00:0\u0661+01:00",  # a digit, but not an ASCII one
        "2024-05-15T24:00:00+02:00",  # hour 24 (newer Pythons would read it as midnight)
    ],
)
def test_values_beyond_what_can_be_represented_or_malformed_are_errors(value: str) -> None:
    with pytest.raises(ValueError):
        fhir_range(value)
