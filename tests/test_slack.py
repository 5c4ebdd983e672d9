"""The event loop's low-priority lane: one job per loop turn, each job at most once."""

from __future__ import annotations

import asyncio

from proxy.slack import SlackQueue, Steps, lane


async def _turns(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_jobs_run_one_per_loop_turn_so_other_ready_work_goes_between_them() -> None:
    slack = SlackQueue()
    order: list[str] = []
    slack.defer(lambda: order.append("map 1"))
    slack.defer(lambda: order.append("map 2"))
    slack.defer(lambda: order.append("map 3"))
    loop = asyncio.get_running_loop()
    loop.call_soon(order.append, "ready 1")
    loop.call_soon(order.append, "ready 2")
    await _turns(10)
    # all three jobs in one go would have delayed both ready callbacks behind them (the queue takes
    # its turns in the lane: the first a turn after it is given work)
    assert order == ["ready 1", "ready 2", "map 1", "map 2", "map 3"]
    assert len(slack) == 0


async def test_a_job_its_owner_runs_first_does_not_run_again_and_a_dropped_one_never_runs() -> None:
    slack = SlackQueue()
    ran: list[str] = []
    first = slack.defer(lambda: ran.append("first"))
    second = slack.defer(lambda: ran.append("second"))
    third = slack.defer(lambda: ran.append("third"))
    assert second.run() is True  # needed now: run by its owner, ahead of the queue
    assert second.run() is False
    third.drop()
    await _turns(5)
    assert ran == ["second", "first"]
    assert first.run() is False
    assert len(slack) == 0


async def test_a_job_that_raises_does_not_stall_the_ones_behind_it() -> None:
    slack = SlackQueue()
    ran: list[str] = []
    errors: list[BaseException] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: errors.append(context["exception"]))
    try:

        def broken() -> None:
            raise RuntimeError("boom")

        slack.defer(broken)
        slack.defer(lambda: ran.append("after"))
        await _turns(5)
        assert ran == ["after"]
        assert [str(e) for e in errors] == ["boom"]
        # and the queue still takes work
        slack.defer(lambda: ran.append("later"))
        await _turns(3)
        assert ran == ["after", "later"]
    finally:
        loop.set_exception_handler(None)


def _sliced(name: str, slices: int, ran: list[str], closed: list[str] | None = None) -> Steps[None]:
    try:
        for i in range(slices):
            ran.append(f"{name} {i + 1}")
            if i < slices - 1:
                yield
    finally:
        if closed is not None:
            closed.append(name)


async def test_a_long_job_runs_a_slice_a_turn_and_lets_a_shorter_one_by() -> None:
    """A job given as steps (an answer mapped a slice of records at a time) runs one slice per turn
    and then goes to the back of the queue: ready work and a short job behind it do not wait for all
    of it."""
    slack = SlackQueue()
    ran: list[str] = []
    slack.defer(lambda: _sliced("long", 3, ran))
    slack.defer(lambda: _sliced("short", 1, ran))
    asyncio.get_running_loop().call_soon(ran.append, "ready")
    await _turns(12)
    assert ran == ["ready", "long 1", "short 1", "long 2", "long 3"]
    assert len(slack) == 0


async def test_the_owner_runs_what_is_left_of_a_long_job_and_a_dropped_one_is_closed() -> None:
    slack = SlackQueue()
    ran: list[str] = []
    closed: list[str] = []
    needed = slack.defer(lambda: _sliced("needed", 3, ran))
    dropped = slack.defer(lambda: _sliced("dropped", 3, ran, closed))
    await _turns(4)  # (a slice of each: the queue's turns come one in two when it is alone in the lane)
    assert ran == ["needed 1", "dropped 1"]
    assert needed.run() is True  # the rest of it, now
    assert ran == ["needed 1", "dropped 1", "needed 2", "needed 3"]
    assert needed.run() is False
    dropped.drop()
    assert closed == ["dropped"]
    await _turns(5)
    assert ran == ["needed 1", "dropped 1", "needed 2", "needed 3"]


async def test_what_is_left_of_a_long_job_its_owner_needs_runs_a_slice_a_turn() -> None:
    """The owner needs the result now, but not as one block: ready work still goes between slices."""
    slack = SlackQueue()
    ran: list[str] = []
    job = slack.defer(lambda: _sliced("long", 3, ran))
    asyncio.get_running_loop().call_soon(ran.append, "ready")
    await job.run_in_turns()
    # the owner ran slice 1, then the ready work went before the owner's next slices
    assert ran == ["long 1", "ready", "long 2", "long 3"]
    assert job.run() is False


async def test_the_lane_lets_one_long_job_on_per_turn_of_the_loop() -> None:
    """Three long jobs waiting between slices: each turn of the event loop runs one of their slices
    (first come, first served), not one of each — and a task that is merely ready runs every turn."""
    order: list[str] = []
    ticks = 0
    stop = False

    async def ticker() -> None:  # (ready every turn: a turn of the loop is one tick)
        nonlocal ticks
        while not stop:
            ticks += 1
            await asyncio.sleep(0)

    async def long_job(name: str) -> None:
        for _ in range(4):
            order.append(f"{name}@{ticks}")
            await lane().wait()

    tick = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)
    await asyncio.gather(long_job("a"), long_job("b"), long_job("c"))
    stop = True
    await tick
    at = [int(o.split("@")[1]) for o in order]
    assert len(at) == 12 and at == sorted(at)
    later = at[3:]  # after the first slice of each (they all start in one turn)
    assert len(set(later)) == len(later)  # never two slices of long work in one turn
    assert [o[0] for o in order[3:6]] == ["a", "b", "c"]  # first come, first served


async def test_the_slack_queue_takes_its_turns_in_the_lane_too() -> None:
    """A long answer being mapped in the slack and a long stage loop of another request: one slice
    of the two a turn, not one of each."""
    slices: list[tuple[str, int]] = []
    ticks = 0
    stop = False

    async def ticker() -> None:
        nonlocal ticks
        while not stop:
            ticks += 1
            await asyncio.sleep(0)

    def mapping() -> Steps[None]:
        for _ in range(5):
            slices.append(("slack", ticks))
            yield

    async def stage_loop() -> None:
        for _ in range(5):
            slices.append(("loop", ticks))
            await lane().wait()

    tick = asyncio.ensure_future(ticker())
    await asyncio.sleep(0)
    queue = SlackQueue()
    job = queue.defer(mapping)
    await stage_loop()
    await _turns(12)  # (what is left of the slack's job)
    stop = True
    await tick
    assert job.step() is None  # (all of it ran, in the queue's turns)
    assert sorted(name for name, _ in slices) == ["loop"] * 5 + ["slack"] * 5
    at = [t for _, t in slices[1:]]  # (after the loop's first slice, which runs before any wait)
    assert len(set(at)) == len(at), slices
