"""Work with slack, run between other events: the event loop's low-priority lane.

Mapping an answer that arrived while other answers of the same request are still out can wait: the
request cannot finish before its last answer anyway. Run at once, in the task that read it, it
delays whatever else became ready at the same moment — another request's last answer, whose
mapping and response are waited for. ``SlackQueue`` runs such jobs a slice at a time, in order,
taking its turns in the ``Lane``; whoever needs a job's result runs it at once (``SlackJob.run``): a
job runs once, whoever comes first. A long job — a stage's loop over a long history, a long answer
mapped as it arrives, a long Bundle written — waits between its slices in the same lane, which lets
one waiter on per turn of the event loop: ready work never waits behind more than one slice of
long work, and an idle loop runs them back to back.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Generator
from time import perf_counter
from typing import TypeVar, cast

T = TypeVar("T")


class SlackJob:
    """One job: ``work()`` does it all, or returns its steps (a generator yielding after each slice,
    ``Steps``) — then the queue runs one slice a turn, and whoever needs the result runs the rest."""

    __slots__ = ("_steps", "_work")

    def __init__(self, work: Callable[[], Steps[None] | None]) -> None:
        self._work: Callable[[], Steps[None] | None] | None = work
        self._steps: Steps[None] | None = None

    def step(self) -> bool | None:
        """One slice of the job: None if there was nothing left to do (it has run, or was dropped),
        True if more is left, False if it has just finished."""
        if self._steps is None:
            work, self._work = self._work, None
            if work is None:
                return None
            steps = work()
            if steps is None:
                return False
            self._steps = steps
        _slice_starts()
        try:
            next(self._steps)
        except StopIteration:
            self._steps = None
            return False
        return True

    def run(self) -> bool:
        """Run the job (what is left of it) now; True if any of it ran now."""
        ran = self.step()
        while ran:
            ran = self.step()
        return ran is not None

    async def run_in_turns(self) -> None:
        """Run what is left of the job now, with a turn of the event loop between its slices (the
        queue may run a slice meanwhile: a slice at a time, whoever comes first)."""
        while True:
            if not self.step():
                return
            await lane().wait()  # (a turn for others)

    def drop(self) -> None:
        """Never run it, or what is left of it (its result is no longer wanted)."""
        self._work = None
        if self._steps is not None:
            self._steps.close()
            self._steps = None


class SlackQueue:
    """Jobs (that must not raise) run a slice at a time, each slice a turn in the lane, first in,
    first out: a job with more slices left goes to the back of the queue, so a long one does not
    hold up the short."""

    __slots__ = ("_jobs", "_scheduled")

    def __init__(self) -> None:
        self._jobs: deque[SlackJob] = deque()
        self._scheduled = False

    def __len__(self) -> int:
        return len(self._jobs)

    def defer(self, work: Callable[[], Steps[None] | None]) -> SlackJob:
        job = SlackJob(work)
        self._jobs.append(job)
        if not self._scheduled:
            self._scheduled = True
            lane().call(self._turn)
        return job

    def _turn(self) -> None:
        jobs = self._jobs
        self._scheduled = False
        try:
            while jobs:
                job = jobs.popleft()
                more = job.step()
                if more is None:
                    continue  # (already run by whoever needed it, or dropped)
                if more:
                    jobs.append(job)
                break
        finally:  # (a job that raises must not stall the ones behind it)
            if jobs and not self._scheduled:
                self._scheduled = True
                lane().call(self._turn)


# ---- long loops in turns ------------------------------------------------------------------------
#
# A stage over a long history (20,000 records: pdl, merge, redaction, look-alikes, the filters) is a
# pure loop of a second or more; run as one block it holds every other request on the loop for as
# long (head-of-line). Such a loop is written once, as steps — a generator that yields after each
# ``SLICE`` records and returns its result — and driven either at once (``at_once``: the plain
# function) or with a turn of the event loop between the slices (``in_turns``: the walk's stages).
# One body, two drivers: the result is the same whichever drives it.

# A slice ends after SLICE records, or sooner once it has taken SLICE_S (the clock read every 32
# records): a record costs from 5 µs (a filter) to 50 µs (mapping a lab result), so a count alone
# made slices of 3 to 25 ms — and a small request that needs a dozen turns waited a dozen times for
# the slices of every long history in flight.
SLICE = 512  # (a power of two: ``slice_ends`` tests it, and the clock every 32 records, as masks)
SLICE_S = 0.002
# When the running slice is due to end (perf_counter). One event loop runs one slice at a time, and
# the driver that resumes a slice (``in_turns``, ``SlackJob.step``, ``turn``) sets it first; the first
# slice of a loop written inline (pdl, select: ``turn`` between slices), a slice run by ``at_once``,
# or one run from a thread (none is today) may read a stale one: it then ends at its 32nd record,
# which costs a turn (or a generator's resumption) and changes nothing else.
_due = 0.0

Steps = Generator[None, None, T]


def _slice_starts() -> None:
    global _due
    _due = perf_counter() + SLICE_S


def at_once(steps: Steps[T]) -> T:
    """The result of ``steps``, run to the end without letting anything else run."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return cast(T, done.value)


# ---- the lane: one long job's slice a turn ---------------------------------------------------------
#
# A long job yields between its slices so that others get the loop. With ``asyncio.sleep(0)`` each
# long job in flight runs its next slice in the very next turn: three long histories, each with a
# stage loop and a few long answers being mapped as they arrive, made turns of 20-40 ms — and a small
# request needs a dozen turns. Instead a long job waits in the lane between its slices, and the lane
# lets one waiter on per turn of the event loop (first come, first served): a turn holds at most one
# slice of long work (~2 ms) beside whatever else is ready, however many long jobs are in flight —
# the slack queue's turns included (a long history's shorter answers, mapped in the slack). A job
# alone on an idle loop still runs its slices back to back (a turn costs microseconds).


class Lane:
    """The waiters for a turn, one let on per turn of one event loop."""

    __slots__ = ("_loop", "_scheduled", "_waiting")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        # one future a waiter (a task's ``wait``, or a callback's: ``call``), let on in order
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._scheduled = False

    async def wait(self) -> None:
        """Until this waiter's turn: the waiters before it have had theirs, one a turn."""
        future = self._loop.create_future()
        self._queue(future)
        await future  # (cancelled: its place is skipped)

    def call(self, callback: Callable[[], None]) -> None:
        """``callback()`` at its turn (a slice of work that is not a task: the slack queue's)."""
        future = self._loop.create_future()
        future.add_done_callback(lambda _: callback())
        self._queue(future)

    def _queue(self, future: asyncio.Future[None]) -> None:
        self._waiting.append(future)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._let_one_on)

    def _let_one_on(self) -> None:
        # The waiter let on runs in the loop's next turn — and so does the next call of this: the
        # turn after, the next waiter. One waiter a turn.
        waiting = self._waiting
        self._scheduled = False
        while waiting:
            future = waiting.popleft()
            if not future.done():
                future.set_result(None)
                break
        if waiting:
            self._scheduled = True
            self._loop.call_soon(self._let_one_on)


_lane: Lane | None = None


def lane() -> Lane:
    """The running event loop's lane."""
    global _lane
    loop = asyncio.get_running_loop()
    if _lane is None or _lane._loop is not loop:  # (one loop at a time per process; tests make many)
        _lane = Lane(loop)
    return _lane


async def in_turns(steps: Steps[T]) -> T:
    """The result of ``steps``, with a turn in the lane after each slice."""
    while True:
        _slice_starts()
        try:
            next(steps)
        except StopIteration as done:
            return cast(T, done.value)
        await lane().wait()


async def turn() -> None:
    """A turn in the lane, in a loop written inline (not as steps); a slice starts."""
    await lane().wait()
    _slice_starts()


def timed(steps: Steps[T]) -> Steps[tuple[T, float]]:
    """``steps``, and the seconds spent in them (not in what ran between their slices)."""
    spent = 0.0
    while True:
        started = perf_counter()
        try:
            next(steps)
        except StopIteration as done:
            return cast(T, done.value), spent + perf_counter() - started
        spent += perf_counter() - started
        yield


def slice_ends(n: int) -> bool:
    """Whether the ``n``-th item (from 0) of a loop ends a slice: yield after it. (Called for every
    record of every loop over a history: 31 of 32 calls are one mask.)"""
    return n & 31 == 31 and (n & 511 == 511 or perf_counter() >= _due)


assert SLICE == 512  # (the mask above: 511)
