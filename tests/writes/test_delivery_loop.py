"""The delivery loop stops when its app stops — also when cancelled the moment it is woken."""

from __future__ import annotations

import asyncio
from typing import Any, cast

from proxy.clock import SYSTEM_CLOCK
from proxy.pipeline.delivery import Delivery
from proxy.settings import OutboxSettings
from proxy.store.base import Store


class _Idle:
    """A store with nothing due."""

    async def claim(self, *args: Any) -> list[Any]:
        return []


async def test_the_loop_stops_when_cancelled_as_it_is_woken() -> None:
    """Python 3.11's ``asyncio.wait_for`` swallows a cancellation that arrives as the awaited event
    is set: the loop then waited for its next wake for ever, and the app's shutdown with it (seen as
    a hung test run). Cancelled in the same turn as a nudge, the loop ends."""
    for _ in range(20):  # (every time, not by luck)
        delivery = Delivery(cast(Store, _Idle()), {}, OutboxSettings(poll_s=5.0), SYSTEM_CLOCK, "w")
        running = asyncio.create_task(delivery.run())
        await asyncio.sleep(0.01)  # (it waits for a wake now)
        delivery.nudge()
        running.cancel()
        done, _ = await asyncio.wait({running}, timeout=2)
        assert running in done and running.cancelled()
