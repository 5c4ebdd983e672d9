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


async def test_the_app_publishes_on_the_hooks_it_is_given_and_a_broken_subscriber_breaks_nothing(
    settings: Any, tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """What the bench (or any other subscriber) sees of one $everything with a failing backend."""
    from dataclasses import asdict, replace

    from aiohttp.test_utils import TestClient

    from proxy.app import create_app
    from proxy.auth.demo import demo_issuer
    from proxy.hooks import AuditCommitted, AuditQueued, SourceAnswered
    from proxy.settings import DEMO_PATIENT_ID_KEY
    from proxy.simulators.harness import running_simulators
    from proxy.simulators.population import DEMO_PEOPLE, TOLVAN, population
    from tests.conftest import BASE, FacadeTestServer, auth, pid

    hooks = Hooks()
    seen: list[Any] = []
    for kind in (RequestFinished, SourceAnswered, SourceFailed, AnswerMapped, AuditQueued, AuditCommitted):
        hooks.subscribe(kind, seen.append)

    def broken(event: Any) -> None:
        raise RuntimeError("subscriber bug")

    hooks.subscribe(SourceFailed, broken)
    hooks.subscribe(RequestFinished, broken)
    people = population(0, settings.simulators.seed)
    async with running_simulators(settings, people, faults={"npo": {"error_status": 503}}) as urls:
        live = settings.with_backend_urls(urls)
        live = replace(live, store=replace(live.store, sqlite_path=tmp_path / "facade.sqlite"))
        app = create_app(live, patient_id_key=DEMO_PATIENT_ID_KEY, extra_issuer=demo_issuer(), hooks=hooks)
        async with TestClient(FacadeTestServer(app), headers=auth("patient", pnr=TOLVAN.pnr)) as client:
            resp = await client.get(f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything")
            assert resp.status == 200  # the broken subscriber broke nothing
    (done,) = [e for e in seen if isinstance(e, RequestFinished)]
    assert done.status == 200 and done.audience == "patient"
    assert dict(done.sources) == {"cosmic": "ok", "viva": "ok", "npo": "error"}
    assert {e.backend for e in seen if isinstance(e, SourceAnswered)} == {"cosmic", "viva"}
    (failed,) = [e for e in seen if isinstance(e, SourceFailed)]
    assert (failed.backend, failed.kind) == ("npo", "http-error")
    assert sum(e.records for e in seen if isinstance(e, AnswerMapped)) > 0
    assert any(isinstance(e, AuditQueued) for e in seen) and any(isinstance(e, AuditCommitted) for e in seen)
    assert hooks.failures(broken) == 2
    assert len([r for r in caplog.records if r.name == "proxy.hooks"]) == 1  # logged once
    text = repr([asdict(e) for e in seen])  # nothing about the patient in any event
    for p in DEMO_PEOPLE:
        assert p.pnr not in text and pid(p.pnr) not in text and p.family not in text
