"""A whole list cut off at the answer cap is asked again by period: a long history split where it can.

An answer past ``facade.max_answer_bytes`` is cut off there (``proxy.fanout.client``): what arrived
whole of it is kept and its source is named as partial. When the cut request is a whole list whose
backend can narrow it to a date range (``request.filters``, mappings/README.md "Filters at the
source"), the list is asked again as ``WINDOWS`` consecutive ranges — the recent years finely, the
old ones coarsely — concurrently, within what is left of the request's deadline; a window cut again
is halved for the next round, up to ``ROUNDS`` rounds and ``MAX_WINDOWS`` windows a list. (An answer
cut by its connection closing is a fault, not a length: it is not asked again.)

The windows overlap by the day the filters widen each side by, and a backend admits a record that
lasts into a window, or that it cannot date, in every window it touches: the windows' records are
joined by id, each once. Every window whole: the list is whole — its source answered, the list
cached as the whole list it is (the windows are never cached by themselves). A window still cut or
failed: the source stays partial, with everything that arrived whole of the list and of every window,
and its outcome says which periods may be missing (the windows' dates come from the clock, never from
the records).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime

from proxy.mapping.requests import RequestSpec
from proxy.mapping.run import MappedAnswer
from proxy.timeutil import SWEDEN
from proxy.types import MappedResource, SourceResult, SourceStatus

YEAR_S = 365.25 * 24 * 3600
DAY_S = 24 * 3600
# The first windows' bounds, in years before now: (-inf, 16 y ago), [16, 8), [8, 4), [4, 2), [2, 1),
# [1 y ago, +inf) — the recent years finely; a window still cut is halved (``halves``) for the next
# round, up to ``ROUNDS`` rounds in all and ``MAX_WINDOWS`` windows a list
SPLIT_YEARS = (16, 8, 4, 2, 1)
WINDOWS = len(SPLIT_YEARS) + 1
ROUNDS = 4
MAX_WINDOWS = 64
# a window this short is not halved: the filters widen each side by a day
MIN_DAYS = 4
# less than this left of the request's deadline (s): no more windows are asked
MIN_LEFT_S = 0.5

Window = tuple[float | None, float | None]  # [lo, hi) in epoch seconds; None: open


def windows(now: float) -> list[Window]:
    """The first windows a whole list is asked in, oldest first, covering all time."""
    cuts: list[float | None] = [None, *(now - years * YEAR_S for years in SPLIT_YEARS), None]
    return [(cuts[i], cuts[i + 1]) for i in range(len(cuts) - 1)]


def halves(window: Window, now: float) -> list[Window]:
    """A cut window split in two; none when it is too short to split. An open start: the older part
    reaches back as far again as the window's end lies before now (a year at least); an open end:
    halfway to now (a year on when the window starts after now)."""
    lo, hi = window
    if lo is None and hi is None:
        return []
    if lo is None:
        assert hi is not None
        mid = hi - max(YEAR_S, now - hi)
    elif hi is None:
        mid = lo + YEAR_S if lo >= now else lo + (now - lo) / 2
    else:
        if hi - lo < MIN_DAYS * DAY_S:
            return []
        mid = lo + (hi - lo) / 2
    return [(lo, mid), (mid, hi)]


def splittable(spec: RequestSpec) -> bool:
    """A whole list (not already narrowed, not a patient lookup) that its backend can narrow."""
    return spec.date_filter is not None and not spec.narrows and spec.unknown_patient is None


def over_the_cap(result: SourceResult) -> bool:
    """Whether a source's answer was cut at ``facade.max_answer_bytes`` — too long, which windows
    mend — rather than by its connection closing mid-way, a fault that asking more would repeat."""
    return result.partial and result.status is SourceStatus.INVALID


def cut_lists(
    result: SourceResult, specs: Sequence[RequestSpec], answers: dict[str, MappedAnswer]
) -> list[RequestSpec]:
    """A source's whole lists that came back cut at the answer cap (some of it arrived, not all)."""
    if not over_the_cap(result):
        return []
    return [s for s in specs if splittable(s) and s.key in answers and not answers[s.key].readable]


def periods(missing: list[Window]) -> list[str]:
    """Missing windows as the outcome names them, oldest first, adjacent ones joined."""
    joined: list[Window] = []
    for lo, hi in sorted(missing, key=lambda w: float("-inf") if w[0] is None else w[0]):
        if joined and joined[-1][1] is not None and joined[-1][1] == lo:
            joined[-1] = (joined[-1][0], hi)
        else:
            joined.append((lo, hi))
    return [period(w) for w in joined]


def period(window: Window) -> str:
    """A window as the outcome names it: local dates, an open side said as such."""
    lo, hi = window

    def day(t: float) -> str:
        return datetime.fromtimestamp(t, SWEDEN).date().isoformat()

    if lo is None:
        return f"before {day(hi)}" if hi is not None else "any date"
    return f"from {day(lo)}" if hi is None else f"{day(lo)} to {day(hi)}"


@dataclass(slots=True)
class _CutList:
    """One cut whole list: what its windows have given so far, and which are still to ask."""

    spec: RequestSpec
    pending: list[Window]
    arrived: list[MappedResource] = field(default_factory=list)  # the whole windows' records
    cut_off: list[MappedResource] = field(default_factory=list)  # what arrived of the cut ones
    missing: list[Window] = field(default_factory=list)  # failed, or cut past the rounds
    asked: int = 0  # windows asked so far


class Split:
    """The cut whole lists of one fetch, asked again by period a round at a time (module doc)."""

    __slots__ = ("_asking", "_latency", "_lists", "_now", "_round")

    def __init__(self, lists: dict[str, list[_CutList]], now: float) -> None:
        self._lists = lists
        self._now = now
        self._round = 0
        self._asking: dict[tuple[str, str], tuple[_CutList, Window]] = {}
        self._latency: dict[str, float] = {}

    def pending(self) -> bool:
        """Whether a next round is to be asked: windows are pending, and rounds are left (past the
        last round, the windows still pending are missing)."""
        cuts = [cut for cuts in self._lists.values() for cut in cuts]
        if self._round >= ROUNDS:
            self.unasked()
        return any(cut.pending for cut in cuts)

    def requests(self) -> dict[str, list[RequestSpec]]:
        """The next round's windows, per backend."""
        self._asking = {}
        self._round += 1
        plan: dict[str, list[RequestSpec]] = {}
        for source, cuts in self._lists.items():
            for cut in cuts:
                pending, cut.pending = cut.pending, []
                for window in pending:
                    spec = cut.spec.narrowed(*window)
                    self._asking[(source, spec.key)] = (cut, window)
                    plan.setdefault(source, []).append(spec)
                cut.asked += len(pending)
        return plan

    def take(self, results: list[SourceResult], answers: dict[str, dict[str, MappedAnswer]]) -> None:
        """A round's answers: a whole window's records kept; a cut one's kept and the window halved
        for the next round (while windows are left); a failed one missing."""
        capped = set()
        for result in results:
            self._latency[result.source] = self._latency.get(result.source, 0.0) + result.latency_ms
            if over_the_cap(result):
                capped.add(result.source)
        for (source, key), (cut, window) in self._asking.items():
            got = answers.get(source, {}).get(key)
            if got is not None and got.readable:
                cut.arrived += got.resources
                continue
            if got is not None:  # (shown only if the list stays cut: its halves bring it again)
                cut.cut_off += got.resources
            # cut at the cap: halved; failed, or cut by its connection: missing
            parts = halves(window, self._now) if got is not None and source in capped else []
            if parts and cut.asked + len(cut.pending) + len(parts) <= MAX_WINDOWS:
                cut.pending += parts
            else:
                cut.missing.append(window)
        self._asking = {}

    def unasked(self) -> None:
        """No time (or round) is left: the windows not asked are missing."""
        for cuts in self._lists.values():
            for cut in cuts:
                cut.missing += cut.pending
                cut.pending = []

    def join(
        self,
        asked: dict[str, list[RequestSpec]],
        results: list[SourceResult],
        answers: dict[str, dict[str, MappedAnswer]],
    ) -> list[SourceResult]:
        """``results`` after the windows: a cut list every window of which came back whole is
        replaced in ``answers`` by their records (each once), whole; else it keeps what arrived
        whole of it and of its windows, still cut. A source all of whose lists are whole answered;
        one still partial says which periods may be missing."""
        out = {r.source: r for r in results}
        for source, cuts in self._lists.items():
            missing: list[str] = []
            for cut in cuts:
                key = cut.spec.key
                if not cut.missing:
                    answers[source][key] = MappedAnswer(_once(cut.arrived), True)
                    continue
                before_cut = answers[source][key].resources
                kept = _once([*before_cut, *cut.arrived, *cut.cut_off])
                answers[source][key] = MappedAnswer(kept, False)
                missing += periods(cut.missing)
            before = out[source]
            latency = before.latency_ms + self._latency.get(source, 0.0)
            if all(s.key in answers[source] and answers[source][s.key].readable for s in asked[source]):
                ok = SourceStatus.OK
                out[source] = replace(before, status=ok, detail="", partial=False, latency_ms=latency)
            elif missing:
                where = "; ".join(dict.fromkeys(missing))
                detail = f"{before.detail}; asked again by period, still missing: {where}"
                out[source] = replace(before, detail=detail, latency_ms=latency)
        return [out[r.source] for r in results]


def split(
    results: list[SourceResult],
    asked: dict[str, list[RequestSpec]],
    answers: dict[str, dict[str, MappedAnswer]],
    now: float,
) -> Split | None:
    """The cut whole lists of a fetch to ask again by period, or None when there are none."""
    lists = {}
    for result in results:
        cut = cut_lists(result, asked.get(result.source, []), answers.get(result.source, {}))
        if cut:
            lists[result.source] = [_CutList(s, windows(now)) for s in cut]
    return Split(lists, now) if lists else None


def _once(resources: list[MappedResource]) -> list[MappedResource]:
    """Each resource once (by type and id), in the order first seen: the windows overlap."""
    seen: set[tuple[str, str]] = set()
    out = []
    for r in resources:
        key = (r.resource["resourceType"], r.resource["id"])
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out
