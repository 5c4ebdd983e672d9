"""A circuit breaker per backend: stop waiting on a backend that keeps failing.

closed ──N consecutive failures──▶ open ──open_s passed──▶ half-open (one probe request)
  ▲                                  ▲                              │
  └────────── probe succeeds ────────┼──────── probe fails ─────────┘

While open (and while the probe is out) the backend is not asked: the answer reports it as
unavailable at once instead of spending the request's time budget on it. The state is per worker
process; it is an optimisation, nothing correctness depends on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from proxy.clock import SYSTEM_CLOCK, Clock


@dataclass(slots=True)
class CircuitBreaker:
    failures_to_open: int = 5
    open_s: float = 10.0
    clock: Clock = SYSTEM_CLOCK  # (its monotonic reading)
    _failures: int = 0
    _opened_at: float | None = None
    _probing: bool = False
    _state: str = field(default="closed")
    # called with (old, new) when the state moves (the app publishes it: proxy.hooks.BreakerChanged)
    on_change: Callable[[str, str], None] | None = None

    @property
    def state(self) -> str:
        return self._state

    def allow(self) -> bool:
        """May a request go out now? (In half-open, only the one probe may.)"""
        if self._state == "closed":
            return True
        if self._state == "open":
            assert self._opened_at is not None
            if self.clock.monotonic() - self._opened_at < self.open_s:
                return False
            self._move("half-open")
            self._probing = False
        if self._probing:
            return False
        self._probing = True
        return True

    def record(self, success: bool) -> None:
        if success:
            self._failures = 0
            self._move("closed")
            self._probing = False
            return
        self._failures += 1
        if self._state == "half-open" or self._failures >= self.failures_to_open:
            self._move("open")
            self._opened_at = self.clock.monotonic()
            self._probing = False

    def _move(self, state: str) -> None:
        old, self._state = self._state, state
        if old != state and self.on_change is not None:
            self.on_change(old, state)

    def no_verdict(self) -> None:
        """The request ended without saying anything about the backend (its caller went away): in
        half-open, the next request may probe instead."""
        self._probing = False

    def retry_after_s(self) -> float:
        if self._opened_at is None:
            return 0.0
        return max(0.0, self.open_s - (self.clock.monotonic() - self._opened_at))
