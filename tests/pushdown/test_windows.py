"""The periods a cut whole list is asked again in (``proxy.pipeline.windows``): they cover all time,
a cut one halves until it is too short, and the outcome names what is missing in few words."""

from __future__ import annotations

from datetime import datetime
from itertools import pairwise

from proxy.pipeline.windows import DAY_S, MIN_DAYS, WINDOWS, YEAR_S, halves, periods, windows
from proxy.timeutil import SWEDEN

NOW = datetime(2026, 12, 4, 12, tzinfo=SWEDEN).timestamp()


def test_the_first_windows_cover_all_time_one_after_the_other() -> None:
    ws = windows(NOW)
    assert len(ws) == WINDOWS
    assert ws[0][0] is None and ws[-1][1] is None
    assert all(a[1] == b[0] for a, b in pairwise(ws))  # no gap, no overlap
    assert ws[-1][0] is not None and NOW - ws[-1][0] == YEAR_S  # the last year on its own


def test_a_cut_window_halves_into_two_that_cover_it() -> None:
    lo, hi = NOW - 4 * YEAR_S, NOW - 2 * YEAR_S
    (a, m), (m2, b) = halves((lo, hi), NOW)
    assert (a, b) == (lo, hi) and m == m2 == lo + YEAR_S
    # open sides: still open, and split at a point between
    (a, m), (m2, b) = halves((None, NOW - 16 * YEAR_S), NOW)
    assert a is None and m == m2 == NOW - 32 * YEAR_S and b == NOW - 16 * YEAR_S
    (a, m), (m2, b) = halves((NOW - YEAR_S, None), NOW)
    assert a == NOW - YEAR_S and m == m2 == NOW - YEAR_S / 2 and b is None
    (a, m), (m2, b) = halves((NOW + DAY_S, None), NOW)  # (records dated ahead: a year on)
    assert m == m2 == NOW + DAY_S + YEAR_S and b is None


def test_a_short_window_is_not_halved() -> None:
    assert halves((NOW, NOW + (MIN_DAYS - 1) * DAY_S), NOW) == []
    assert len(halves((NOW, NOW + MIN_DAYS * DAY_S), NOW)) == 2
    assert halves((None, None), NOW) == []


def test_missing_periods_are_named_oldest_first_adjacent_ones_joined() -> None:
    ws = windows(NOW)
    assert periods([ws[3], ws[1], ws[2]]) == ["2010-12-04 to 2024-12-04"]
    assert periods([ws[-1], ws[0]]) == ["before 2010-12-04", "from 2025-12-04"]
    assert periods(ws) == ["any date"]
