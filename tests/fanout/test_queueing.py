"""Time a request spends queued inside the facade — waiting for one of a backend's connection slots
(``limit_per_host``), or for the event loop behind other requests' work — is never charged to that
backend: its budget starts when its request is sent, and a share cut off by the facade's own waiting
is the facade's condition (``SourceStatus.OVERLOADED``), never a failure its breaker counts or its
timing learns from. Functional, not timed: the assertions are on statuses and breakers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any

from proxy.edge.http import FACADE_KEY
from proxy.fanout.client import BackendClient, fan_out
from proxy.fanout.transport import Canned, Exchange, MemoryTransport
from proxy.fhir.bundle import source_outcome
from proxy.settings import load_settings
from proxy.types import SourceOutcome, SourceStatus
from tests.fanout.test_memory_transport import client, request
from tests.fanout.test_resilience import EVERYTHING, OK_EMPTY, Handler
from tests.source_status import statuses

NOT_ASKED = "was not asked in time: the facade was overloaded"
ASKED_TOO_LATE = "was asked too late to answer in time: the facade was overloaded"


class _Noting(MemoryTransport):
    """A MemoryTransport that says when a URL has been sent (``asked[url]``)."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.asked: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)

    def request(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None
    ) -> contextlib.AbstractAsyncContextManager[Exchange]:
        self.asked[url].set()  # (called inside the slot, as the request leaves)
        return super().request(method, url, headers=headers, body=body)


async def _sent(transport: _Noting, url: str) -> None:
    await asyncio.wait_for(transport.asked[url].wait(), 5)


async def test_requests_waiting_for_a_connection_slot_are_not_charged_for_the_wait() -> None:
    """One connection (``limit_per_host: 1``), twenty fetches at once, each answered in 20 ms and
    each within a 200 ms budget: one at a time they take 400 ms, so counted from when the facade
    decided to ask, the later half would "time out". Counted from when each is sent, none does."""
    transport = MemoryTransport(default=Canned(b"{}", delay_s=0.02), limit=1)
    cosmic = client("cosmic", transport, total_timeout_s=0.2, breaker_failures=1)
    results = await asyncio.gather(*(cosmic.fetch([request(f"/r{i}")], {}) for i in range(20)))
    assert [r.status for r in results] == [SourceStatus.OK] * 20
    assert transport.peak == 1  # one request with the backend at a time: the others waited here
    assert cosmic.breaker.state == "closed"  # (one counted failure would have opened it)


async def test_a_backend_not_asked_before_the_deadline_is_the_facade_s_condition_never_its_failure() -> None:
    """Its one connection is busy with another request until after the deadline: the backend was
    never asked. That is said (the source is named, its data missing) — not as a timeout, not
    counted by its breaker, not learned as slowness; and the slot is not lost."""
    hold = asyncio.Event()
    transport = _Noting(
        {"http://cosmic.test/busy": Canned(b"{}", until=hold)}, default=Canned(b"{}"), limit=1
    )
    cosmic = client("cosmic", transport, total_timeout_s=5.0, breaker_failures=1)
    busy = asyncio.ensure_future(cosmic.fetch([request("/busy")], {}))
    await _sent(transport, "http://cosmic.test/busy")
    for _ in range(3):
        (result,) = await fan_out(
            {"cosmic": cosmic}, {"cosmic": [request("/x")]}, {"cosmic": {}}, deadline_s=0.05
        )
        assert (result.status, result.detail) == (SourceStatus.OVERLOADED, NOT_ASKED)
    assert [s.url for s in transport.sent] == ["http://cosmic.test/busy"]  # /x never left
    assert cosmic.breaker.state == "closed" and cosmic.typical_ms == 0.0
    hold.set()
    assert (await busy).status is SourceStatus.OK
    assert (await cosmic.fetch([request("/x")], {})).status is SourceStatus.OK  # the slot is free again


async def test_a_request_sent_late_by_the_facade_s_queue_and_cut_off_at_the_deadline_is_not_blamed() -> None:
    """It waited 300 ms for a connection, then was with the backend 100 ms when the 400 ms deadline
    came: most of the wait was the facade's own, so the backend is not blamed for it."""
    hold = asyncio.Event()
    never = asyncio.Event()
    transport = _Noting(
        {"http://cosmic.test/busy": Canned(b"{}", until=hold), "http://cosmic.test/x": Canned(until=never)},
        limit=1,
    )
    cosmic = client("cosmic", transport, total_timeout_s=5.0, breaker_failures=1)
    busy = asyncio.ensure_future(cosmic.fetch([request("/busy")], {}))
    await _sent(transport, "http://cosmic.test/busy")
    asyncio.get_running_loop().call_later(0.3, hold.set)
    (result,) = await fan_out({"cosmic": cosmic}, {"cosmic": [request("/x")]}, {"cosmic": {}}, deadline_s=0.4)
    assert "http://cosmic.test/x" in [s.url for s in transport.sent]  # it was sent, late
    assert (result.status, result.detail) == (SourceStatus.OVERLOADED, ASKED_TOO_LATE)
    assert cosmic.breaker.state == "closed"  # (one counted failure would have opened it)
    assert (await busy).status is SourceStatus.OK


async def test_a_backend_asked_at_once_and_silent_past_the_deadline_is_still_to_blame() -> None:
    """The other side of the rule: sent at once, no queue, no answer by the deadline — its fault."""
    transport = MemoryTransport(default=Canned(until=asyncio.Event()), limit=1)
    cosmic = client("cosmic", transport, total_timeout_s=5.0, breaker_failures=1)
    (result,) = await fan_out({"cosmic": cosmic}, {"cosmic": [request("/x")]}, {"cosmic": {}}, deadline_s=0.1)
    assert result.status is SourceStatus.TIMEOUT
    assert result.detail == "did not answer within the request deadline (0.1 s)"
    assert cosmic.breaker.state == "open"


async def test_an_answer_that_came_in_while_the_facade_s_loop_was_stalled_is_not_a_timeout() -> None:
    """The backend answers in 50 ms, within its 200 ms budget, but the event loop is blocked (another
    request's CPU work) from 20 ms to 620 ms: when the loop runs again the budget's timer and the
    answer are due together. The stall was the facade's, so the answer is read, not timed out."""
    transport = MemoryTransport(default=Canned(b"{}", delay_s=0.05))
    cosmic = client("cosmic", transport, total_timeout_s=0.2, breaker_failures=1)
    asyncio.get_running_loop().call_later(0.02, time.sleep, 0.6)  # (blocks the loop, as CPU work does)
    result = await cosmic.fetch([request()], {})
    assert result.status is SourceStatus.OK, result
    assert cosmic.breaker.state == "closed"


async def test_a_slow_backend_still_times_out_on_its_own_budget_while_others_wait_for_slots() -> None:
    """Queueing is excluded, nothing else: a backend that holds a sent request past its budget is
    timed out at its budget, as ever."""
    transport = MemoryTransport(default=Canned(until=asyncio.Event()), limit=1)
    cosmic = client("cosmic", transport, total_timeout_s=0.1, breaker_failures=2)
    results = await asyncio.gather(*(cosmic.fetch([request(f"/r{i}")], {}) for i in range(2)))
    assert [r.status for r in results] == [SourceStatus.TIMEOUT] * 2
    assert all(r.detail == "no complete answer within 0.1 s" for r in results)
    assert cosmic.breaker.state == "open"


def test_an_overloaded_source_is_named_as_missing_and_throttled_in_the_answer() -> None:
    """Completeness: a source the facade could not ask in time is in the answer's source status as
    ``failed`` (its data is missing), with the issue code ``throttled`` — the facade's own load,
    not the source's fault."""
    issue = source_outcome(SourceOutcome("npo", SourceStatus.OVERLOADED, NOT_ASKED), "NPÖ")["issue"][0]
    assert issue["severity"] == "warning" and issue["code"] == "throttled"
    codes = {c["system"]: c["code"] for c in issue["details"]["coding"]}
    assert codes["urn:fhir-facade:source-status"] == "failed"
    assert issue["details"]["text"] == (
        "Source 'npo' (NPÖ) was not asked in time: the facade was overloaded; "
        "its data is missing from this answer."
    )


# -- over real HTTP: the aiohttp transport's own connection slots ---------------------------------


@contextlib.asynccontextmanager
async def _held_backend(
    **tuning: Any,
) -> AsyncIterator[tuple[BackendClient, asyncio.Event, asyncio.Event, list[str]]]:
    """A loopback backend answering ``GET /hold`` only once ``release`` is set (``arrived``: it
    came), anything else at once; and a client for it."""
    release, arrived = asyncio.Event(), asyncio.Event()
    seen: list[str] = []
    writers: list[asyncio.StreamWriter] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].decode()
                seen.append(path)
                if path == "/hold":
                    arrived.set()
                    await release.wait()
                writer.write(OK_EMPTY)
                await writer.drain()

    handler: Handler = handle
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = replace(load_settings().backend("cosmic"), base_url=f"http://127.0.0.1:{port}", **tuning)
    backend = BackendClient.open(settings, 1 << 20)
    try:
        yield backend, release, arrived, seen
    finally:
        release.set()
        await backend.close()
        for writer in writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
        server.close()
        await server.wait_closed()


async def test_over_http_a_request_waiting_for_the_one_connection_is_not_the_backend_s_failure() -> None:
    tuning = {"limit_per_host": 1, "breaker_failures": 1, "total_timeout_s": 5.0}
    async with _held_backend(**tuning) as (cosmic, release, arrived, seen):
        held = asyncio.ensure_future(cosmic.fetch([request("/hold")], {}))
        await asyncio.wait_for(arrived.wait(), 5)
        (result,) = await fan_out(
            {"cosmic": cosmic}, {"cosmic": [request("/x")]}, {"cosmic": {}}, deadline_s=0.1
        )
        assert (result.status, result.detail) == (SourceStatus.OVERLOADED, NOT_ASKED)
        assert seen == ["/hold"] and cosmic.breaker.state == "closed"
        release.set()
        assert (await held).status is SourceStatus.OK
        many = await asyncio.gather(*(cosmic.fetch([request(f"/r{i}")], {}) for i in range(10)))
        assert {r.status for r in many} == {SourceStatus.OK}


# -- the whole facade over the simulators ---------------------------------------------------------


async def test_a_facade_with_one_connection_per_backend_answers_a_burst_whole(facade: Any) -> None:
    """Eight ``$everything`` at once through one connection per backend: each backend's calls queue
    in the facade, one at a time, together more than twice the 1.2 s budget (Cosmic: 8 × 12 calls of
    30 ms each, some 3 s), while each call is answered in about 30 ms — a margin a busy test
    machine's loop cannot eat, the queue well past the budget and still inside the request's 5 s
    deadline (which the queue does count against). Every answer is whole, and no breaker opens."""
    latency = {"latency_ms": 30}
    async with facade(
        faults={"cosmic": latency, "viva": latency, "npo": latency},
        limit_per_host=1,
        total_timeout_s=1.2,
        breaker_failures=1,
    ) as f:
        answers = await asyncio.gather(*(f.get(EVERYTHING) for _ in range(8)))
        clients = f.client.server.app[FACADE_KEY].clients
        assert {name: c.breaker.state for name, c in clients.items()} == dict.fromkeys(clients, "closed")
    for status, bundle in answers:
        assert status == 200
        assert statuses(bundle) == {"cosmic": "answered", "viva": "answered", "npo": "answered"}
