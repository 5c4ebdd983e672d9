"""The periods a cut whole list is asked again in (``proxy.pipeline.windows``): they cover all time,
a cut one halves until it is too short, and the outcome names what is missing in few words."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from itertools import pairwise

from proxy.app import compile_mappings
from proxy.mapping.requests import RequestSpec
from proxy.mapping.run import MappedAnswer
from proxy.pipeline.windows import (
    DAY_S,
    MIN_DAYS,
    ROUNDS,
    WINDOWS,
    YEAR_S,
    halves,
    periods,
    split,
    windows,
)
from proxy.settings import load_settings
from proxy.timeutil import SWEDEN
from proxy.types import MappedResource, SourceResult, SourceStatus
from tests.conftest import RESOURCE_IDS

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


# ---- rounds: what is asked, and what comes of it ---------------------------------------------------


def lab_list() -> RequestSpec:
    mappings = compile_mappings(load_settings(), RESOURCE_IDS)
    return next(m.request for m in mappings.by_backend["cosmic"] if m.name == "cosmic/labresults")


def lab(n: int) -> MappedResource:
    return MappedResource(
        {"resourceType": "Observation", "id": f"o{n}"}, "cosmic", "cosmic/labresults", "x", 0, ()
    )


CUT = SourceResult(
    "cosmic",
    SourceStatus.INVALID,
    40.0,
    "part of its answer is missing: it is larger than 9 bytes",
    partial=True,
)


def cut_list() -> tuple[RequestSpec, dict[str, list[RequestSpec]], dict[str, dict[str, MappedAnswer]]]:
    spec = lab_list()
    return spec, {"cosmic": [spec]}, {"cosmic": {spec.key: MappedAnswer([lab(0)], readable=False)}}


def test_a_list_cut_by_its_connection_is_not_asked_again() -> None:
    _, asked, answers = cut_list()
    closed = replace(
        CUT, status=SourceStatus.ERROR, detail="connection closed before the answer was complete"
    )
    assert split([closed], asked, answers, NOW) is None
    assert split([replace(CUT, partial=False)], asked, answers, NOW) is None


def test_every_window_whole_makes_the_list_whole_each_record_once() -> None:
    spec, asked, answers = cut_list()
    again = split([CUT], asked, answers, NOW)
    assert again is not None and again.pending()
    windows_asked = again.requests()["cosmic"]
    assert len(windows_asked) == WINDOWS and all(w.narrows == spec.key for w in windows_asked)
    # (a record lasting across a boundary comes in two windows: once in the answer)
    got = {w.key: MappedAnswer([lab(i), lab(i + 1)], readable=True) for i, w in enumerate(windows_asked)}
    again.take([SourceResult("cosmic", SourceStatus.OK, 30.0)], {"cosmic": got})
    assert not again.pending()
    (result,) = again.join(asked, [CUT], answers)
    assert result.status is SourceStatus.OK and not result.partial and result.detail == ""
    assert result.latency_ms == 70.0
    whole = answers["cosmic"][spec.key]
    assert whole.readable and [r.resource["id"] for r in whole.resources] == [
        f"o{i}" for i in range(WINDOWS + 1)
    ]


def test_a_window_cut_again_is_halved_and_its_halves_asked_next() -> None:
    spec, asked, answers = cut_list()
    again = split([CUT], asked, answers, NOW)
    assert again is not None
    first = again.requests()["cosmic"]
    got = {w.key: MappedAnswer([lab(i)], readable=i != 3) for i, w in enumerate(first)}  # [4 y, 2 y) cut
    again.take([CUT], {"cosmic": got})
    assert again.pending()
    second = again.requests()["cosmic"]
    assert len(second) == 2
    again.take(
        [SourceResult("cosmic", SourceStatus.OK)],
        {"cosmic": {w.key: MappedAnswer([lab(9)], True) for w in second}},
    )
    (result,) = again.join(asked, [CUT], answers)
    assert result.status is SourceStatus.OK
    assert sorted(r.resource["id"] for r in answers["cosmic"][spec.key].resources) == [
        "o0",
        "o1",
        "o2",
        "o4",
        "o5",
        "o9",
    ]


def test_no_time_left_leaves_the_list_cut_and_names_every_period_not_asked() -> None:
    """(Before the windows are asked, the request's deadline has come: nothing is taken for whole.)"""
    spec, asked, answers = cut_list()
    again = split([CUT], asked, answers, NOW)
    assert again is not None and again.pending()
    again.unasked()
    assert not again.pending()
    (result,) = again.join(asked, [CUT], answers)
    assert result.status is SourceStatus.INVALID and result.partial
    assert result.detail.endswith("asked again by period, still missing: any date")
    kept = answers["cosmic"][spec.key]
    assert not kept.readable and [r.resource["id"] for r in kept.resources] == ["o0"]


def test_a_window_still_cut_after_the_last_round_is_missing_with_what_arrived_of_it() -> None:
    spec, asked, answers = cut_list()
    again = split([CUT], asked, answers, NOW)
    assert again is not None
    rounds = 0
    while again.pending():
        rounds += 1
        ws = again.requests()["cosmic"]
        # the most recent window is always cut; the others whole
        got = {w.key: MappedAnswer([lab(100 + rounds)], readable=w is not ws[-1]) for w in ws}
        again.take([CUT], {"cosmic": got})
    assert rounds == ROUNDS
    (result,) = again.join(asked, [CUT], answers)
    assert result.partial and "still missing: from 2026-" in result.detail
    ids = {r.resource["id"] for r in answers["cosmic"][spec.key].resources}
    assert {"o0", "o101", "o104"} <= ids  # before the cut, a whole window, the last cut one's part


def test_a_window_that_fails_is_missing_never_nothing_and_not_halved() -> None:
    """A window with no answer (timed out, refused) is not "no records then": the list stays cut,
    that period is named, and a failure is not asked again in halves."""
    spec, asked, answers = cut_list()
    again = split([CUT], asked, answers, NOW)
    assert again is not None
    first = again.requests()["cosmic"]
    got = {w.key: MappedAnswer([lab(i)], readable=True) for i, w in enumerate(first) if i != 2}
    timed_out = SourceResult("cosmic", SourceStatus.TIMEOUT, 0.0, "did not answer within 3 s")
    again.take([timed_out], {"cosmic": got})
    assert not again.pending()
    (result,) = again.join(asked, [CUT], answers)
    assert result.partial and result.status.degraded
    assert result.detail.endswith("still missing: 2018-12-04 to 2022-12-04")
    assert not answers["cosmic"][spec.key].readable
