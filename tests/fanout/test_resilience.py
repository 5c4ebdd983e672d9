"""Circuit breaker, the request deadline, and the one retry on a reset connection."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from typing import Any

import pytest

from proxy.fanout.breaker import CircuitBreaker
from proxy.fanout.client import BackendClient, fan_out
from proxy.mapping.requests import RequestSpec, UnknownPatient
from proxy.settings import load_settings
from proxy.simulators.population import TOLVAN
from proxy.types import SourceResult, SourceStatus
from tests.clock import FakeClock
from tests.conftest import BASE, pid
from tests.source_status import degraded, statuses

EVERYTHING = f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything"
BOMB = gzip.compress(b" " * 3_000_000)


def test_breaker_opens_after_consecutive_failures_and_probes_once() -> None:
    clock = FakeClock()
    b = CircuitBreaker(failures_to_open=3, open_s=10, clock=clock)
    for _ in range(2):
        assert b.allow()
        b.record(success=False)
    assert b.allow()
    b.record(success=True)  # a success resets the count
    for _ in range(3):
        assert b.allow()
        b.record(success=False)
    assert b.state == "open" and not b.allow()
    clock.advance(9.9)
    assert not b.allow()
    clock.advance(0.1)
    assert b.allow()  # the one probe
    assert not b.allow()  # nobody else while it is out
    b.record(success=False)
    assert b.state == "open" and not b.allow()
    clock.advance(10.0)
    assert b.allow()
    b.record(success=True)
    assert b.state == "closed" and b.allow() and b.allow()


async def test_an_open_circuit_fails_fast_and_is_reported(facade: Any) -> None:
    async with facade(breaker_failures=2, breaker_open_s=60) as f:
        await f.faults("npo", latency_ms=300, error_status=503)
        for _ in range(2):
            await f.get(EVERYTHING)
        started = time.perf_counter()
        status, bundle = await f.get(EVERYTHING)
        elapsed = time.perf_counter() - started
    assert status == 200
    assert statuses(bundle) == {"cosmic": "answered", "viva": "answered", "npo": "failed"}
    assert "was not asked" in degraded(bundle)["npo"]["details"]["text"]
    assert elapsed < 0.3  # npo's 300 ms were not waited for


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
OK_EMPTY = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"


def request(path: str = "/x", method: str = "GET") -> RequestSpec:
    return RequestSpec(method=method, path=path, query=(), body=None, headers=(), format="json")


@contextlib.asynccontextmanager
async def backend(handle: Handler, name: str = "cosmic", **tuning: Any) -> AsyncIterator[BackendClient]:
    """A raw loopback HTTP server answering with ``handle``, and a BackendClient for it; on exit
    both are closed, with every connection the server still holds."""
    writers: list[asyncio.StreamWriter] = []

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await handle(reader, writer)

    server = await asyncio.start_server(tracked, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = BackendClient.open(
        replace(load_settings().backend(name), base_url=f"http://127.0.0.1:{port}", **tuning), 1 << 20
    )
    try:
        yield client
    finally:
        await client.close()
        for writer in writers:
            writer.close()
            with contextlib.suppress(ConnectionError):  # (the client may have hung up first)
                await writer.wait_closed()
        server.close()
        await server.wait_closed()


def flaky(resets: int, seen: list[int]) -> Handler:
    """Closes the first ``resets`` connections after reading the request; then answers 200 {}."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        seen[0] += 1
        if seen[0] <= resets:
            writer.close()
            return
        writer.write(OK_EMPTY)
        await writer.drain()
        writer.close()

    return handle


async def _ask(resets: int, method: str) -> tuple[SourceStatus, int]:
    seen = [0]
    async with backend(flaky(resets, seen)) as client:
        result = await client.fetch([request(method=method)], {})
    return result.status, seen[0]


async def test_a_reset_connection_is_retried_once_for_get() -> None:
    assert await _ask(resets=1, method="GET") == (SourceStatus.OK, 2)
    assert await _ask(resets=2, method="GET") == (SourceStatus.ERROR, 2)  # once, not more
    assert await _ask(resets=1, method="POST") == (SourceStatus.ERROR, 1)  # never for POST


class _Backend:
    """Answers (with nothing) after ``delay_s``: a stand-in for BackendClient in fan_out."""

    def __init__(
        self, name: str, delay_s: float, typical_ms: float = 0.0, log: list[str] | None = None
    ) -> None:
        self.name, self.delay_s, self.typical_ms, self.log = name, delay_s, typical_ms, log

    def start(
        self, specs: Any, ctx: Any, on_answer: Any = None, on_done: Any = None, open_sink: Any = None
    ) -> _Run:
        if self.log is not None:
            self.log.append(self.name)
        return _Run(self, specs, on_answer, on_done)


class _Run:
    def __init__(self, backend: _Backend, specs: Any, on_answer: Any, on_done: Any) -> None:
        self.own_s = 0.0  # (BackendRun's: the facade's own time on its answers; none here)
        self.name = backend.name
        self.result: SourceResult | None = None
        self.task = asyncio.ensure_future(self._answer(backend, specs, on_answer, on_done))

    async def _answer(self, backend: _Backend, specs: Any, on_answer: Any, on_done: Any) -> None:
        await asyncio.sleep(backend.delay_s)
        for spec in specs:
            if on_answer is not None:
                on_answer(backend.name, spec, b"")
        self.result = SourceResult(backend.name, SourceStatus.OK, backend.delay_s * 1000)
        on_done(self.result)

    def abandon(self, detail: str) -> None:
        if self.result is None:
            self.task.cancel()
            self.result = SourceResult(self.name, SourceStatus.TIMEOUT, 0.0, detail)

    def cut_off(self, deadline_s: float, at: float, stalled: bool) -> None:  # (BackendRun's, simplified)
        self.abandon(f"did not answer within the request deadline ({deadline_s:g} s)")


async def test_each_answer_is_handed_on_as_it_arrives_and_results_keep_plan_order() -> None:
    clients = {"slow": _Backend("slow", 0.15), "fast": _Backend("fast", 0.0), "dead": _Backend("dead", 5.0)}
    spec = request()
    seen: list[tuple[str, str]] = []
    results = await fan_out(
        clients,  # type: ignore[arg-type]
        {name: [spec] for name in clients},
        {name: {} for name in clients},
        deadline_s=0.4,
        on_answer=lambda source, spec, body: seen.append((source, spec.key)),
    )
    # the fast answer was handed on first, while the slow one was still out; the dead one never
    assert seen == [("fast", spec.key), ("slow", spec.key)]
    assert [(r.source, r.status) for r in results] == [
        ("slow", SourceStatus.OK),
        ("fast", SourceStatus.OK),
        ("dead", SourceStatus.TIMEOUT),
    ]


async def test_a_backend_hands_on_each_request_s_answer_before_its_slower_siblings_arrive() -> None:
    from aiohttp import web

    from proxy.simulators.harness import serving

    release = asyncio.Event()

    async def quick(request: web.Request) -> web.Response:
        return web.json_response({"q": 1})

    async def slow(request: web.Request) -> web.Response:
        await asyncio.wait_for(release.wait(), 5)
        return web.json_response({"s": 1})

    async def empty(request: web.Request) -> web.Response:  # the lookup's "unknown patient"
        return web.json_response({"errorCode": "PATIENT_NOT_FOUND"}, status=404)

    app = web.Application()
    app.router.add_get("/quick", quick)
    app.router.add_get("/slow", slow)
    app.router.add_get("/empty", empty)
    marker = UnknownPatient(404, ("errorCode",), "PATIENT_NOT_FOUND")
    lookup = replace(request("/empty"), unknown_patient=marker)
    specs = [request("/slow"), request("/quick"), lookup]
    seen: list[tuple[str, bytes | None]] = []

    def on_answer(backend: str, spec: RequestSpec, body: bytes | None) -> None:
        seen.append((spec.path, body))
        if len(seen) == 2:  # both quick answers are in while /slow is still held back
            release.set()

    async with serving(app) as base:
        client = BackendClient.open(replace(load_settings().backend("cosmic"), base_url=base), 1 << 20)
        try:
            result = await client.fetch(specs, {}, on_answer)
        finally:
            await client.close()
    assert result.status is SourceStatus.OK
    assert sorted(seen[:2], key=str) == [("/empty", None), ("/quick", b'{"q": 1}')]
    assert seen[2] == ("/slow", b'{"s": 1}')


async def test_the_backend_that_has_been_slowest_is_asked_first() -> None:
    asked: list[str] = []
    clients = {
        name: _Backend(name, 0.0, typical_ms=ms, log=asked)
        for name, ms in (("cosmic", 12.0), ("viva", 0.0), ("npo", 30.0))
    }
    spec = request()
    results = await fan_out(
        clients,  # type: ignore[arg-type]
        {name: [spec] for name in clients},
        {name: {} for name in clients},
        deadline_s=1.0,
    )
    assert asked == ["npo", "cosmic", "viva"]
    assert [r.source for r in results] == ["cosmic", "viva", "npo"]  # the answer keeps plan order


async def test_a_backend_client_learns_how_long_its_backend_takes() -> None:
    async with backend(flaky(0, [0])) as client:
        assert client.typical_ms == 0.0
        await client.fetch([request()], {})
        first = client.typical_ms
        assert first > 0.0
        await client.fetch([request()], {})
        assert client.typical_ms > 0.0 and client.typical_ms != first


async def test_a_backend_s_costliest_answers_are_asked_for_first_and_each_keeps_its_place() -> None:
    from aiohttp import web

    from proxy.simulators.harness import serving

    arrived: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        arrived.append(request.path)
        return web.Response(body=request.path.encode())

    app = web.Application()
    app.router.add_get("/{name}", answer)
    specs = [request(f"/{name}") for name in ("a", "b", "c")]
    seen: dict[str, bytes | None] = {}

    def on_answer(backend: str, spec: RequestSpec, body: bytes | None) -> None:
        seen[spec.path] = body

    async with serving(app) as base:
        # one connection: the requests reach the backend one by one, in the order they were sent
        settings = replace(load_settings().backend("cosmic"), base_url=base, limit_per_host=1)
        client = BackendClient.open(settings, 1 << 20)
        try:
            await client.fetch(specs, {})
            assert arrived == ["/a", "/b", "/c"]  # nothing learnt yet: plan order
            client.handled(specs[2].key, 5.0)
            client.handled(specs[1].key, 0.5)  # (/a: never handled, so as cheap as can be)
            arrived.clear()
            result = await client.fetch(specs, {}, on_answer)
        finally:
            await client.close()
    assert arrived == ["/c", "/b", "/a"]
    assert result.status is SourceStatus.OK
    assert seen == {"/a": b"/a", "/b": b"/b", "/c": b"/c"}  # each answer handed on with its own request


async def test_a_backend_client_learns_how_long_each_answer_takes_to_handle() -> None:
    client = BackendClient.open(load_settings().backend("cosmic"), 1 << 20)  # (nothing is sent)
    try:
        client.handled("x", 10.0)
        assert client.handling_ms == {"x": 10.0}
        client.handled("x", 0.0)
        client.handled("y", 1.0)
        assert client.handling_ms == {"x": 8.0, "y": 1.0}  # weighted: one answer moves it by a fifth
    finally:
        await client.close()


async def test_a_backend_asked_for_nothing_answers_at_once() -> None:
    client = BackendClient.open(load_settings().backend("cosmic"), 1 << 20)  # (nothing is sent)
    try:
        result = await asyncio.wait_for(client.fetch([], {}), timeout=1.0)
    finally:
        await client.close()
    assert result.status is SourceStatus.OK


def _quick_only(release: asyncio.Event) -> Handler:
    """A backend that answers ``GET /quick`` at once and nothing else until ``release`` is set."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        if not head.startswith(b"GET /quick "):
            await release.wait()  # never answers while the test runs
        writer.write(OK_EMPTY)

    return handle


async def test_a_backend_cut_off_at_the_deadline_counts_as_slow() -> None:
    release = asyncio.Event()
    seen: list[str] = []
    async with backend(_quick_only(release), "npo") as client:
        try:
            results = await fan_out(
                {"npo": client},
                {"npo": [request("/x"), request("/quick")]},
                {"npo": {}},
                deadline_s=0.2,
                on_answer=lambda backend, spec, body: seen.append(spec.path),
            )
        finally:
            release.set()
    assert results[0].status is SourceStatus.TIMEOUT
    assert seen == ["/quick"]  # what arrived before the deadline was handed on; nothing after it
    assert client.typical_ms >= 150  # so the next request asks it first
    assert client.breaker.state == "closed"  # one failure counted, not enough to open it


async def test_a_backend_out_of_its_own_budget_settles_at_once_with_what_it_answered() -> None:
    release = asyncio.Event()
    seen: list[str] = []
    async with backend(_quick_only(release), "viva", total_timeout_s=0.2) as client:
        try:
            started = time.perf_counter()
            result = await asyncio.wait_for(
                client.fetch(
                    [request("/x"), request("/quick")], {}, lambda b, spec, body: seen.append(spec.path)
                ),
                timeout=2.0,
            )
            took = time.perf_counter() - started
        finally:
            release.set()
    assert result.status is SourceStatus.TIMEOUT
    assert result.detail == "no complete answer within 0.2 s"
    assert 0.2 <= took < 1.0  # its budget, not the request's deadline
    assert seen == ["/quick"]  # what it answered in time was handed on
    assert client.typical_ms >= 150 and client.breaker.state == "closed"  # counted: slow, one failure


async def test_an_answer_that_cannot_be_handed_on_still_counts() -> None:
    def broken(backend: str, spec: RequestSpec, body: bytes | None) -> None:
        raise RuntimeError("a bug downstream")

    async with backend(flaky(0, [0])) as client:
        result = await asyncio.wait_for(client.fetch([request()], {}, broken), timeout=2.0)
    assert result.status is SourceStatus.OK  # settled at once, not left to the deadline
    assert client.breaker.state == "closed"


async def test_a_request_whose_client_left_does_not_count_against_the_backends() -> None:
    release = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await release.wait()

    async with backend(silent, "npo") as client:
        client.breaker = CircuitBreaker(failures_to_open=1, open_s=0.0)
        client.breaker.record(success=False)  # open; with open_s 0 the next request is the half-open probe
        try:
            asking = asyncio.ensure_future(
                fan_out({"npo": client}, {"npo": [request()]}, {"npo": {}}, deadline_s=5.0)
            )
            await asyncio.sleep(0.1)
            asking.cancel()  # the facade's own client went away
            with contextlib.suppress(asyncio.CancelledError):
                await asking
        finally:
            release.set()
    assert client.typical_ms == 0.0  # not learnt as slow
    assert client.breaker.state == "half-open"  # not re-opened by the cancelled probe …
    assert client.breaker.allow()  # … and the next request may probe again


def answering(head: bytes, body: bytes) -> Handler:
    """Answers every request with ``head`` (status line and headers) and ``body`` as given."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(head + b"\r\n" + body)
                await writer.drain()

    return handle


def chunked(data: bytes, size: int = 100_000) -> bytes:
    parts = [data[i : i + size] for i in range(0, len(data), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


@pytest.mark.parametrize(
    ("head", "body", "whole"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 900000\r\n", b"[" + b" " * 899_998 + b"]", True),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 1100000\r\n", b"[" + b" " * 1_099_998 + b"]", False),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n", chunked(b"x" * 900_000), True),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n", chunked(b"x" * 1_100_000), False),
        # small on the wire, over the cap once decompressed
        (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n" % len(BOMB), BOMB, False),
    ],
    ids=["length-under", "length-over", "chunked-under", "chunked-over", "gzip-over"],
)
async def test_an_answer_is_read_whole_up_to_the_cap_however_it_is_framed(
    head: bytes, body: bytes, whole: bool
) -> None:
    bodies: list[bytes | None] = []
    async with backend(answering(head, body)) as client:  # the cap: 1 MiB
        result = await client.fetch([request()], {}, lambda source, spec, raw: bodies.append(raw))
    if whole:
        assert result.status is SourceStatus.OK and len(bodies) == 1 and len(bodies[0] or b"") == 900_000
    else:
        assert result.status is SourceStatus.INVALID and "larger than" in result.detail and not bodies
