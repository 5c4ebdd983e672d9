"""The event loop every long-running command runs on.

uvloop (libuv) when it is installed — a dependency on Linux and macOS — else asyncio's own loop.
The facade spends much of its CPU in the loop and in aiohttp's transports (22 backend calls per
``$everything``): on uvloop one aiohttp client call costs about 80 µs of CPU instead of 115 µs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def new_loop() -> asyncio.AbstractEventLoop:
    """A new event loop: uvloop's where it is available."""
    try:
        import uvloop
    except ImportError:  # Windows, or a deployment that left it out
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on ``new_loop()``."""
    with asyncio.Runner(loop_factory=new_loop) as runner:
        return runner.run(main)
