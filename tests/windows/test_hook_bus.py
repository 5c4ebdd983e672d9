"""The hook bus: typed events, isolated subscribers, and nothing to pay when nobody listens."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from proxy.hooks import AnswerMapped, Hooks, RequestFinished, SourceFailed


def finished(**kw: Any) -> RequestFinished:
    return RequestFinished(
        **{
            "request_id": "r1",
            "method": "GET",
            "route": "/fhir/{type}",
            "status": 200,
            "duration_ms": 1.0,
            "audience": "clinician",
            **kw,
        }
    )


def test_a_subscriber_that_raises_is_logged_once_and_breaks_nothing(caplog: pytest.LogCaptureFixture) -> None:
    hooks = Hooks()
    seen: list[RequestFinished] = []

    def broken(event: RequestFinished) -> None:
        raise RuntimeError("subscriber bug")

    hooks.subscribe(RequestFinished, broken)
    hooks.subscribe(RequestFinished, seen.append)
    with caplog.at_level(logging.ERROR, logger="proxy.hooks"):
        for i in range(3):
            hooks.emit(finished(request_id=f"r{i}"))  # never raises
    assert [e.request_id for e in seen] == ["r0", "r1", "r2"]  # the next subscriber still ran, each time
    errors = [r for r in caplog.records if r.name == "proxy.hooks"]
    assert len(errors) == 1 and "broken" in errors[0].getMessage() and errors[0].exc_info is not None
    assert hooks.failures(broken) == 3


def test_events_reach_only_the_subscribers_of_their_type() -> None:
    hooks = Hooks()
    failed: list[SourceFailed] = []
    hooks.subscribe(SourceFailed, failed.append)
    hooks.emit(AnswerMapped("npo", 3, 1.5))
    hooks.emit(SourceFailed("npo", 12.0, "timeout"))
    assert failed == [SourceFailed("npo", 12.0, "timeout")]
    assert hooks.wants(SourceFailed) and not hooks.wants(AnswerMapped)


def test_with_no_subscribers_emit_does_not_look_at_the_event() -> None:
    """The no-subscriber path is one dict lookup: the event is not read, copied or formatted."""

    class Untouchable:
        def __getattribute__(self, name: str) -> Any:
            raise AssertionError(f"read {name}")

    hooks = Hooks()
    assert not hooks.wants(RequestFinished)
    hooks.emit(Untouchable())


def test_events_are_frozen() -> None:
    event = finished()
    with pytest.raises(AttributeError):
        event.status = 500  # type: ignore[misc]
