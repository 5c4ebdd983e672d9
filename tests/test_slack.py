"""The event loop's low-priority lane: one job per loop turn, each job at most once."""

from __future__ import annotations

import asyncio

from proxy.slack import SlackQueue


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
    await _turns(5)
    # all three jobs in one go would have delayed both ready callbacks behind them
    assert order == ["map 1", "ready 1", "ready 2", "map 2", "map 3"]
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
