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
from collections.abc import Callable


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
