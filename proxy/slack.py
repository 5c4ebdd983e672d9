"""Work with slack, run between other events: the event loop's low-priority lane.

Mapping an answer that arrived while other answers of the same request are still out can wait: the
request cannot finish before its last answer anyway. Run at once, in the task that read it, it
delays whatever else became ready at the same moment — another request's last answer, whose
mapping and response are waited for. ``SlackQueue`` runs such jobs one per turn of the event loop,
in order, so ready work never waits behind more than one of them; an idle loop runs them back to
back. Whoever needs a job's result runs it at once (``SlackJob.run``): a job runs once, whoever
comes first.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Generator
from typing import TypeVar, cast

T = TypeVar("T")


class SlackJob:
    __slots__ = ("_work",)

    def __init__(self, work: Callable[[], None]) -> None:
        self._work: Callable[[], None] | None = work

    def run(self) -> bool:
        """Run the job now unless it has run (or been dropped); True if it ran now."""
        work, self._work = self._work, None
        if work is None:
            return False
        work()
        return True

    def drop(self) -> None:
        """Never run it (its result is no longer wanted)."""
        self._work = None


class SlackQueue:
    """Jobs (that must not raise) run one per event-loop turn, first in, first out."""

    __slots__ = ("_jobs", "_scheduled")

    def __init__(self) -> None:
        self._jobs: deque[SlackJob] = deque()
        self._scheduled = False

    def __len__(self) -> int:
        return len(self._jobs)

    def defer(self, work: Callable[[], None]) -> SlackJob:
        job = SlackJob(work)
        self._jobs.append(job)
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._turn)
        return job

    def _turn(self) -> None:
        jobs = self._jobs
        self._scheduled = False
        try:
            while jobs and not jobs.popleft().run():
                pass  # (already run by whoever needed it, or dropped)
        finally:  # (a job that raises must not stall the ones behind it)
            if jobs and not self._scheduled:
                self._scheduled = True
                asyncio.get_running_loop().call_soon(self._turn)


# ---- long loops in turns ------------------------------------------------------------------------
#
# A stage over a long history (20,000 records: pdl, merge, redaction, look-alikes, the filters) is a
# pure loop of a second or more; run as one block it holds every other request on the loop for as
# long (head-of-line). Such a loop is written once, as steps — a generator that yields after each
# ``SLICE`` records and returns its result — and driven either at once (``at_once``: the plain
# function) or with a turn of the event loop between the slices (``in_turns``: the walk's stages).
# One body, two drivers: the result is the same whichever drives it.

SLICE = 500  # records between turns: a few ms of work a slice (the look-alikes: ~20 µs a record)

Steps = Generator[None, None, T]


def at_once(steps: Steps[T]) -> T:
    """The result of ``steps``, run to the end without letting anything else run."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return cast(T, done.value)


async def in_turns(steps: Steps[T]) -> T:
    """The result of ``steps``, with a turn of the event loop after each slice."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return cast(T, done.value)
        await asyncio.sleep(0)


def slice_ends(n: int) -> bool:
    """Whether the ``n``-th item (from 0) ends a slice: yield after it."""
    return n % SLICE == SLICE - 1
