"""Fan-out's logic over the in-memory transport: budgets, the request deadline, partial answers,
the breaker and cancellation — without sockets or simulators. (The same behaviour over real HTTP
and the simulators: test_degraded.py, test_resilience.py, test_fault_matrix.py.)"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import pytest

from proxy.app import compile_mappings
from proxy.fanout.client import BackendClient, fan_out
from proxy.fanout.transport import CUT_OFF, Canned, MemoryTransport, TransportError
from proxy.fhir.ids import PatientIds
from proxy.mapping.requests import RequestSpec
from proxy.pipeline.facade import Facade
from proxy.pipeline.fetch import fetch_and_map, plan_requests
from proxy.redact.policy import compile_policy
from proxy.settings import DEMO_PATIENT_ID_KEY, Settings, load_settings
from proxy.slack import SlackJob, Steps
from proxy.types import SourceStatus
from tests import contract
from tests.clock import FakeClock
from tests.conftest import RESOURCE_IDS
from tests.fanout.test_slack_mapping import TOLVAN, _Stalled

NAMES = ("cosmic", "viva", "npo")
# an answer each backend's mappings read as "nothing here" (JSON for Cosmic and Viva, SOAP for NPÖ)
EMPTY = {name: contract.empty_answer(name) for name in ("cosmic", "viva", "npo")}


@functools.cache
def _settings() -> Settings:
    return load_settings()


def client(name: str, transport: MemoryTransport, *, clock: Any = None, **tuning: Any) -> BackendClient:
    """A BackendClient for ``name`` (its configured settings, tuned) over ``transport``; its base URL
    is ``http://<name>.test``."""
    settings = replace(_settings().backend(name), base_url=f"http://{name}.test", **tuning)
    return BackendClient.open(settings, 1 << 20, transport=transport, clock=clock or FakeClock())


def request(path: str = "/x", method: str = "GET", **kw: Any) -> RequestSpec:
    return RequestSpec(method=method, path=path, query=(), body=None, headers=(), format="json", **kw)


NEVER = asyncio.Event  # (an event nobody sets: an answer that never comes)


def broken(fault: str) -> Canned:
    return {
        "hang": Canned(until=NEVER()),
        "slow": Canned(b"{}", delay_s=2.0),
        "503": Canned(b"", status=503),
        "cut": Canned(exception=TransportError(SourceStatus.ERROR, CUT_OFF)),
        "oversized": Canned(b" " * ((1 << 20) + 1)),
    }[fault]


@pytest.mark.parametrize(
    ("fault", "status", "words"),
    [
        ("hang", SourceStatus.TIMEOUT, "no complete answer within 0.2 s"),
        ("slow", SourceStatus.TIMEOUT, "no complete answer within 0.2 s"),
        ("503", SourceStatus.ERROR, "answered HTTP 503"),
        ("cut", SourceStatus.ERROR, "connection closed before the answer was complete"),
        ("oversized", SourceStatus.INVALID, "answer larger than 1048576 bytes"),
    ],
    ids=["hang", "slow", "503", "cut", "oversized"],
)
@pytest.mark.parametrize("failing", NAMES)
async def test_one_broken_backend_gives_a_partial_answer(
    failing: str, fault: str, status: SourceStatus, words: str
) -> None:
    """(Converted from test_degraded.py's hang and slow cases for Cosmic and Viva, which waited on
    the simulators; NPÖ's stay there, end to end.) The broken backend is reported, within its
    budget, and every other backend's answer is handed on and counted."""
    transports = {name: MemoryTransport(default=Canned(b"{}")) for name in NAMES}
    transports[failing] = MemoryTransport(default=broken(fault))
    clients = {name: client(name, transports[name], total_timeout_s=0.2) for name in NAMES}
    seen: list[str] = []
    started = time.perf_counter()
    results = await fan_out(
        clients,
        {name: [request()] for name in NAMES},
        {name: {} for name in NAMES},
        deadline_s=1.0,
        on_answer=lambda source, spec, body: seen.append(source),
    )
    elapsed = time.perf_counter() - started
    by_source = {r.source: r for r in results}
    assert [r.source for r in results] == list(NAMES)  # plan order
    assert (by_source[failing].status, by_source[failing].detail) == (status, words)
    assert all(by_source[n].status is SourceStatus.OK for n in NAMES if n != failing)
    assert sorted(seen) == sorted(n for n in NAMES if n != failing)
    assert elapsed < 0.2 + 0.5  # its budget, not the 2 s delay or the hang
    assert clients[failing].breaker.state == "closed"  # one failure: not enough to open it
    for c in clients.values():
        await c.close()


async def test_the_request_deadline_answers_with_what_has_arrived() -> None:
    """(Converted from test_resilience.py, which waited on a slow simulator.) The pipeline under the
    configured request deadline: a backend inside its own budget but past the deadline is
    abandoned and reported as such; the others have answered."""
    transports = {name: MemoryTransport(default=Canned(EMPTY[name])) for name in NAMES}
    transports["viva"] = MemoryTransport(default=Canned(b"{}", delay_s=2.0))
    live = memory_facade(transports, deadline_s=0.2, total_timeout_s=5)
    started = time.perf_counter()
    _, outcomes = await fetch_and_map(live, live.ids.patient(TOLVAN), live.mappings.resource_types)
    elapsed = time.perf_counter() - started
    by_source = {o.source: o for o in outcomes}
    assert list(by_source) == list(NAMES)
    assert by_source["viva"].status is SourceStatus.TIMEOUT
    assert "did not answer within the request deadline (0.2 s)" in by_source["viva"].detail
    assert by_source["cosmic"].status is by_source["npo"].status is SourceStatus.OK  # in time
    assert 0.2 <= elapsed < 1.0
    assert live.clients["viva"].typical_ms >= 150  # counted as slow: asked first next time
    for c in live.clients.values():
        await c.close()


async def test_an_open_circuit_is_not_asked_and_probes_once_its_time_is_up() -> None:
    """The breaker over the in-memory transport and a fake clock: no sleeping. While open, the
    backend is not asked at all (nothing is sent) and the result says when it will be."""
    clock = FakeClock()
    transport = MemoryTransport(default=Canned(status=503))
    npo = client("npo", transport, clock=clock, breaker_failures=2, breaker_open_s=60)
    for _ in range(2):
        result = await npo.fetch([request()], {})
        assert (result.status, result.detail) == (SourceStatus.ERROR, "answered HTTP 503")
    assert npo.breaker.state == "open" and len(transport.sent) == 2
    clock.advance(30)
    result = await npo.fetch([request()], {})
    assert result.status is SourceStatus.UNAVAILABLE
    assert result.detail == "was not asked: it failed repeatedly (asked again in 30 s)"
    assert len(transport.sent) == 2  # not asked
    clock.advance(30)
    transport.default = Canned(b"{}")
    assert (await npo.fetch([request()], {})).status is SourceStatus.OK  # the probe
    assert npo.breaker.state == "closed" and len(transport.sent) == 3


async def test_the_request_s_headers_and_body_reach_the_transport_as_rendered() -> None:
    transport = MemoryTransport()
    spec = RequestSpec(
        method="POST",
        path="/p/{@pnr}",
        query=(("q", "{@pnr}"),),
        body="<id>{@pnr}</id>",
        headers=(("SOAPAction", "urn:x"), ("X-Patient", "{@pnr}")),
        format="xml",
    )
    transport.answers["http://npo.test/p/191212121212?q=191212121212"] = b"<ok/>"
    npo = client("npo", transport)
    bodies: list[bytes | None] = []
    result = await npo.fetch([spec], {"pnr": "191212121212"}, lambda s, spec, body: bodies.append(body))
    assert result.status is SourceStatus.OK and bodies == [b"<ok/>"]
    (sent,) = transport.sent
    assert sent.method == "POST" and sent.body == b"<id>191212121212</id>"
    assert sent.headers == {"SOAPAction": "urn:x", "X-Patient": "191212121212"}


async def test_an_unexpected_transport_failure_is_a_failed_source_logged_without_detail(
    caplog: pytest.LogCaptureFixture,
) -> None:
    transport = MemoryTransport(default=Canned(exception=RuntimeError("191212121212 secret")))
    cosmic = client("cosmic", transport)
    with caplog.at_level(logging.ERROR):
        result = await cosmic.fetch([request()], {})
    assert (result.status, result.detail) == (SourceStatus.ERROR, "failed unexpectedly")
    assert "191212121212" not in caplog.messages[0]  # where, not what (the traceback is the log's)


class _Waiting(_Stalled):
    """A stalled slack that says when ``expected`` answers have been handed to it."""

    def __init__(self, expected: int) -> None:
        super().__init__()
        self.expected = expected
        self.all_in = asyncio.Event()

    def defer(self, work: Callable[[], Steps[None] | None]) -> SlackJob:
        job = super().defer(work)
        if len(self.deferred) >= self.expected:
            self.all_in.set()
        return job


def memory_facade(
    transports: Mapping[str, MemoryTransport], *, deadline_s: float | None = None, **tuning: Any
) -> Facade:
    """The facade's pipeline over in-memory backends (no app, no simulators, no store); ``tuning``
    tunes every backend's settings."""
    settings = _settings()
    if deadline_s is not None:
        settings = replace(settings, facade=replace(settings.facade, deadline_s=deadline_s))
    ids = PatientIds(DEMO_PATIENT_ID_KEY)
    return Facade(
        settings=settings,
        mappings=compile_mappings(settings, RESOURCE_IDS),
        clients={name: client(name, transports[name], **tuning) for name in NAMES},
        ids=ids,
        policy=compile_policy(settings.policy),
    )


async def test_a_cancelled_request_drops_the_mapping_it_no_longer_needs() -> None:
    """(Converted from test_slack_mapping.py, which waited on a hanging simulator.) Cosmic and Viva
    answer, NPÖ never does; the request is cancelled: what the slack had not mapped is dropped."""
    transports = {name: MemoryTransport(default=Canned(b"{}")) for name in NAMES}
    transports["npo"] = MemoryTransport(default=Canned(until=NEVER()))
    live = memory_facade(transports)
    types = live.mappings.resource_types
    answering = plan_requests(live.mappings, ("cosmic", "viva"), types)
    stalled = _Waiting(sum(len(specs) for specs in answering.values()))
    live = replace(live, slack=stalled)
    task = asyncio.ensure_future(fetch_and_map(live, live.ids.patient(TOLVAN), types))
    await asyncio.wait_for(stalled.all_in.wait(), 5)  # every Cosmic and Viva answer is in
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stalled.ran == 0
    assert stalled.deferred and not any(job.run() for job in stalled.deferred)  # dropped: never run
    assert transports["npo"].sent  # NPÖ was asked, and cut off
    for c in live.clients.values():
        await c.close()


async def test_every_request_of_a_run_is_sent_the_slowest_backend_first() -> None:
    """The order calls leave in, as the transport saw them: the backend that has been slowest
    first, within it the costliest answers first (``handled``, per learning key)."""
    shared = MemoryTransport(default=Canned(b"{}"))  # (one table for the three hosts: one order)
    clients = {name: client(name, shared) for name in NAMES}
    clients["npo"].took(30.0)
    clients["cosmic"].took(12.0)
    specs = [request("/a"), request("/b")]
    clients["npo"].handled(specs[1].learning_key, 5.0)
    results = await fan_out(clients, {n: specs for n in NAMES}, {n: {} for n in NAMES}, deadline_s=1.0)
    assert [r.source for r in results if r.status is SourceStatus.OK] == list(NAMES)
    assert [sent.url for sent in shared.sent] == [
        "http://npo.test/b",
        "http://npo.test/a",
        "http://cosmic.test/a",
        "http://cosmic.test/b",
        "http://viva.test/a",
        "http://viva.test/b",
    ]


@pytest.mark.parametrize("body", [b"", b"  \n"], ids=["empty", "blank"])
@pytest.mark.parametrize("failing", NAMES)
async def test_a_success_with_an_empty_body_is_unreadable_never_nothing(failing: str, body: bytes) -> None:
    """A 200 whose body is empty is no answer in any of the three dialects (JSON wants at least
    ``{}`` or ``[]``, a RIVTA answer an envelope): a cut-off or broken answer, never "this patient
    has nothing here". The source is reported as unreadable; the others answer as usual."""
    transports = {name: MemoryTransport(default=Canned(EMPTY[name])) for name in NAMES}
    transports[failing] = MemoryTransport(default=Canned(body))
    live = memory_facade(transports)
    _, outcomes = await fetch_and_map(live, live.ids.patient(TOLVAN), live.mappings.resource_types)
    by_source = {o.source: o for o in outcomes}
    assert by_source[failing].status is SourceStatus.INVALID, by_source[failing]
    assert all(by_source[n].status is SourceStatus.OK for n in NAMES if n != failing)
    for c in live.clients.values():
        await c.close()
