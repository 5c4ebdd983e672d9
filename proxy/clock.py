"""The one clock the facade reads time from where timing decides behaviour — injectable.

Token expiry (``proxy.auth``: ``exp``/``nbf``/``iat`` and the verified-token cache), the source
cache's freshness (``proxy.cache``: TTL and staleness, in epoch seconds, since a shared Redis
entry is read by other hosts), the circuit breaker's open and half-open timing
(``proxy.fanout.breaker``) and the engagement index (``proxy.fanout.engagement``) all take a
``Clock``; the app gets ``SYSTEM_CLOCK`` unless a test passes another (``create_app(clock=...)``),
so tests move time on instead of sleeping. Latency measurements (``time.perf_counter``) and
asyncio's own timers (the deadlines) are not read through it: they measure, they decide nothing
a test needs to wind on.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (for intervals within one process)."""
        ...

    def time(self) -> float:
        """Seconds since the epoch (for instants other processes and hosts read too)."""
        ...


class SystemClock:
    """The machine's clocks."""

    __slots__ = ()

    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)


SYSTEM_CLOCK: Clock = SystemClock()
