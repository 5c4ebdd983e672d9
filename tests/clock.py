"""A clock the tests move on by hand (``proxy.clock.Clock``): no sleeping to wait for expiry."""

from __future__ import annotations

import time


class FakeClock:
    """Both readings start where the machine's are now (so real tokens' times make sense) and
    move only when ``advance`` moves them."""

    def __init__(self, epoch: float | None = None) -> None:
        self._epoch = time.time() if epoch is None else epoch
        self._monotonic = 1000.0

    def time(self) -> float:
        return self._epoch

    def monotonic(self) -> float:
        return self._monotonic

    def advance(self, seconds: float) -> None:
        self._epoch += seconds
        self._monotonic += seconds
