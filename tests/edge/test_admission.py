"""Admission control per worker (``proxy/edge/admission.py``): beyond ``max_in_flight`` requests at
once and ``max_queue`` waiting, 503 with ``Retry-After`` and an OperationOutcome ``throttled`` — the
same whoever the request is about, before any token or patient is read; counted, logged, never
audited. The probes, ``/metrics``, the capability documents and CORS preflights are never refused.

Functional, not timed: a request is held in flight by holding Cosmic's answer to it
(``_Held``), so which request finds the worker full is decided, not raced."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient

from proxy.accesslog import ACCESS_LOGGER
from proxy.app import create_app
from proxy.auth.demo import demo_issuer
from proxy.edge.admission import ADMISSION_KEY, QUEUE_FULL, WAITED_TOO_LONG, Gate
from proxy.edge.http import FACADE_KEY, STORE_KEY
from proxy.edge.server import AcceptingSite
from proxy.fanout.transport import Exchange, Transport
from proxy.settings import DEMO_PATIENT_ID_KEY, ConfigError, Settings, load_settings
from proxy.simulators.harness import running_simulators
from proxy.simulators.population import GRETA, TOLVAN, population
from tests.conftest import BASE, FacadeTestServer, Running, auth, consent_to, pid
from tests.source_status import statuses
from tests.test_settings import config_with
from tests.windows.test_access_log import access_lines
from tests.windows.test_metrics_endpoint import samples

EVERYTHING = f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything"
ORIGIN = "https://www.1177.se"


class _Held:
    """Cosmic's transport, its requests held until ``release`` is set; ``arrived`` once ``count``
    have come (then its requests go on to the simulator as usual)."""

    def __init__(self, inner: Transport, count: int = 1) -> None:
        self.inner = inner
        self.release = asyncio.Event()
        self.arrived = asyncio.Event()
        self.count = count
        self.seen = 0

    def slot(self) -> contextlib.AbstractAsyncContextManager[None]:
        return self.inner.slot()

    @contextlib.asynccontextmanager
    async def request(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None
    ) -> AsyncIterator[Exchange]:
        self.seen += 1
        if self.seen >= self.count:
            self.arrived.set()
        await self.release.wait()
        async with self.inner.request(method, url, headers=headers, body=body) as exchange:
            yield exchange

    async def close(self) -> None:
        await self.inner.close()


@pytest.fixture
def gated(
    settings: Settings, tmp_path: Path
) -> Callable[..., contextlib.AbstractAsyncContextManager[tuple[Running, _Held]]]:
    """``async with gated(admission={...}) as (f, held)``: simulators + facade with the admission
    settings given, ``/metrics`` open to loopback, CORS for one origin, Cosmic's requests held."""

    @contextlib.asynccontextmanager
    async def start(admission: dict[str, Any], held: int = 1) -> AsyncIterator[tuple[Running, _Held]]:
        people = population(0, settings.simulators.seed)
        async with running_simulators(settings, people) as urls:
            live = settings.with_backend_urls(urls)
            live = replace(live, cache=replace(live.cache, enabled=False))
            live = replace(live, engagement=replace(live.engagement, enabled=False))
            sqlite = tmp_path / f"facade-{uuid.uuid4().hex}.sqlite"
            live = replace(live, store=replace(live.store, kind="sqlite", sqlite_path=sqlite))
            live = replace(live, metrics=replace(live.metrics, allow_unauthenticated_loopback=True))
            live = replace(live, http=replace(live.http, cors_allow_origins=(ORIGIN,)))
            live = replace(live, admission=replace(live.admission, **admission))
            # (the held Cosmic requests wait for the test, on a busy machine for seconds: that wait
            # must not run out a backend's budget or the fan-out's deadline — these tests are about
            # admission, and a request partial by time-out is not what they look for)
            live = replace(
                live,
                backends=tuple(replace(b, total_timeout_s=30.0) for b in live.backends),
                facade=replace(live.facade, deadline_s=30.0),
            )
            app = create_app(live, patient_id_key=DEMO_PATIENT_ID_KEY, extra_issuer=demo_issuer())
            async with TestClient(FacadeTestServer(app), headers=auth("clinician")) as client:
                await consent_to(client.server.app[STORE_KEY], [p.pnr for p in people])
                cosmic = client.server.app[FACADE_KEY].clients["cosmic"]
                cosmic.transport = gate = _Held(cosmic.transport, held)
                try:
                    yield Running(client, urls), gate
                finally:
                    gate.release.set()

    return start


async def _in_flight(f: Running, held: _Held, path: str = EVERYTHING) -> asyncio.Task[ClientResponse]:
    """A request sent, and held in flight (Cosmic has it)."""
    task = asyncio.ensure_future(f.client.get(path))
    await asyncio.wait_for(held.arrived.wait(), 10)
    return task


async def _queued(f: Running, path: str = EVERYTHING) -> asyncio.Task[ClientResponse]:
    """A request sent and waiting in the worker's queue."""
    gate = f.client.server.app[ADMISSION_KEY]
    task = asyncio.ensure_future(f.client.get(path))
    for _ in range(500):  # (bounded: the request needs a few turns of the loop to arrive)
        if gate.waiting:
            return task
        await asyncio.sleep(0.01)
    raise AssertionError("the request was never queued")


async def _whole(task: asyncio.Task[ClientResponse]) -> dict[str, Any]:
    resp = await task
    assert resp.status == 200, await resp.text()
    bundle: dict[str, Any] = await resp.json(content_type=None)
    assert set(statuses(bundle).values()) == {"answered"}
    return bundle


def _refusal(resp: ClientResponse, body: bytes) -> tuple[int, bytes, dict[str, str]]:
    """What a refusal says: status, body, headers but the request's own id and the date."""
    headers = {k: v for k, v in resp.headers.items() if k not in ("X-Request-ID", "Date")}
    return resp.status, body, headers


async def test_beyond_the_places_and_the_queue_a_request_is_refused_503_throttled_with_retry_after(
    gated: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    async with gated({"max_in_flight": 1, "max_queue": 0, "retry_after_s": 7}) as (f, held):
        first = await _in_flight(f, held)
        resp = await f.client.get(EVERYTHING, headers={"X-Request-ID": "shed-me-1"})
        body = await resp.read()
        held.release.set()
        await _whole(first)  # the one let in answers whole
        logged = await f.client.server.app[STORE_KEY].all_audit_events()
        text = await (await f.client.get("/metrics")).text()
    assert resp.status == 503
    assert resp.headers["Retry-After"] == "7"
    assert resp.headers["X-Request-ID"] == "shed-me-1"
    assert resp.headers["Content-Type"].startswith("application/fhir+json")
    assert resp.headers["Cache-Control"] == "no-store"
    outcome = orjson.loads(body)
    assert outcome["resourceType"] == "OperationOutcome"
    ((issue),) = outcome["issue"]
    assert (issue["severity"], issue["code"]) == ("error", "throttled")
    assert "Retry-After" in issue["diagnostics"]
    # refused before any patient was looked at: nothing to audit (the one let in is audited)
    assert "shed-me-1" not in orjson.dumps(logged).decode()
    assert len(logged) == 1
    # one access-log line, status 503, and counted
    (line,) = [d for d in map(orjson.loads, access_lines(caplog)) if d["request_id"] == "shed-me-1"]
    assert line["status"] == 503 and line["audience"] == "none" and line["sources"] == {}
    got = samples(text)
    assert got[("fhir_facade_requests_shed_total", (("reason", QUEUE_FULL),))] == 1
    route = f"{BASE}/Patient/{{id}}/$everything"
    assert (
        got[("fhir_facade_requests_total", (("audience", "none"), ("route", route), ("status", "503")))] == 1
    )


async def test_a_refusal_is_the_same_whoever_the_request_is_about(gated: Any) -> None:
    """Hidden is absent: while the worker is full, a request about a known patient, an unknown one,
    a patient whose records are withheld from the asker, another asker's, one without a token or
    with a bad one, and one for no endpoint at all get the very same answer."""
    unknown = pid("199001019802")
    async with gated({"max_in_flight": 1, "max_queue": 0}) as (f, held):
        first = await _in_flight(f, held)
        asks: list[tuple[str, dict[str, str]]] = [
            (EVERYTHING, {}),
            (f"{BASE}/Patient/{unknown}/$everything", {}),
            (f"{BASE}/Patient/{pid(GRETA.pnr)}/$everything", auth("homecare")),
            (f"{BASE}/Condition?patient={pid(TOLVAN.pnr)}", auth("patient", pnr=GRETA.pnr)),
            (f"{BASE}/Observation/{unknown}-npo-0", {}),
            (EVERYTHING, {"Authorization": ""}),
            (EVERYTHING, {"Authorization": "Bearer not-a-token"}),
            (f"{BASE}/no/such/thing/{TOLVAN.pnr}", {}),
        ]
        refusals = []
        for path, headers in asks:
            resp = await f.client.get(path, headers=headers)
            refusals.append(_refusal(resp, await resp.read()))
        held.release.set()
        await _whole(first)
    assert refusals[0][0] == 503
    assert all(r == refusals[0] for r in refusals), refusals


async def test_a_queued_request_is_let_in_when_a_place_comes_free(gated: Any) -> None:
    async with gated({"max_in_flight": 1, "max_queue": 1, "max_wait_s": 30}) as (f, held):
        first = await _in_flight(f, held)
        second = await _queued(f)
        third = await f.client.get(EVERYTHING)  # places and queue taken
        assert third.status == 503 and third.headers["Retry-After"] == "1"
        assert not second.done()
        held.release.set()
        await _whole(first)
        await _whole(second)  # let in when the first left, and answered whole
        gate = f.client.server.app[ADMISSION_KEY]
        assert (gate.in_flight, len(gate.waiting)) == (0, 0)
        got = samples(await (await f.client.get("/metrics")).text())
    assert got[("fhir_facade_requests_shed_total", (("reason", QUEUE_FULL),))] == 1


async def test_a_request_that_waits_longer_than_max_wait_is_refused(gated: Any) -> None:
    async with gated({"max_in_flight": 1, "max_queue": 4, "max_wait_s": 0.05}) as (f, held):
        first = await _in_flight(f, held)
        resp = await f.client.get(EVERYTHING)  # queued, and nothing comes free
        assert resp.status == 503 and resp.headers["Retry-After"] == "1"
        assert orjson.loads(await resp.read())["issue"][0]["code"] == "throttled"
        held.release.set()
        await _whole(first)
        gate = f.client.server.app[ADMISSION_KEY]
        assert (gate.in_flight, len(gate.waiting)) == (0, 0)
        got = samples(await (await f.client.get("/metrics")).text())
    assert got[("fhir_facade_requests_shed_total", (("reason", WAITED_TOO_LONG),))] == 1


async def test_probes_metrics_capability_documents_and_preflights_are_never_refused(gated: Any) -> None:
    async with gated({"max_in_flight": 1, "max_queue": 0}) as (f, held):
        first = await _in_flight(f, held)
        refused = await f.client.get(f"{BASE}/Condition?patient={pid(GRETA.pnr)}")
        assert refused.status == 503  # the worker is full
        never = {
            path: (await f.client.get(path, headers={})).status
            for path in (
                "/healthz",
                "/readyz",
                "/metrics",
                f"{BASE}/metadata",
                f"{BASE}/.well-known/smart-configuration",
            )
        }
        preflight = await f.client.options(
            EVERYTHING, headers={"Origin": ORIGIN, "Access-Control-Request-Method": "GET"}
        )
        head = await f.client.head("/healthz")
        held.release.set()
        await _whole(first)
    assert never == dict.fromkeys(never, 200)
    assert preflight.status == 204 and head.status == 200


async def test_with_admission_off_every_request_is_let_in(gated: Any) -> None:
    async with gated({"enabled": False, "max_in_flight": 1, "max_queue": 0}, held=2) as (f, held):
        assert ADMISSION_KEY not in f.client.server.app
        both = [asyncio.ensure_future(f.client.get(EVERYTHING)) for _ in range(2)]
        await asyncio.wait_for(held.arrived.wait(), 10)  # both in flight at once
        held.release.set()
        for task in both:
            await _whole(task)


async def test_the_gate_passes_a_place_first_come_first_served_and_loses_none() -> None:
    gate = Gate(max_in_flight=1, max_queue=3, max_wait_s=30)
    assert await gate.enter() is None
    waiters = [asyncio.ensure_future(gate.enter()) for _ in range(3)]
    await asyncio.sleep(0)
    assert len(gate.waiting) == 3 and gate.in_flight == 1
    assert await gate.enter() == QUEUE_FULL
    waiters[0].cancel()  # the client left while it waited
    with contextlib.suppress(asyncio.CancelledError):
        await waiters[0]
    gate.leave()  # the place passes to the next in line
    assert await waiters[1] is None and not waiters[2].done()
    gate.leave()
    waiters[2].cancel()  # its place had just passed to it when its client left: passed on, not lost
    with contextlib.suppress(asyncio.CancelledError):
        await waiters[2]
    assert (gate.in_flight, len(gate.waiting)) == (0, 0)
    assert await gate.enter() is None and gate.in_flight == 1


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"admission.max_in_flight": 0}, "admission.max_in_flight"),
        ({"admission.max_queue": -1}, "admission.max_queue"),
        ({"admission.max_wait_s": 0}, "admission.max_wait_s"),
        ({"admission.retry_after_s": 1.5}, "admission.retry_after_s"),
        ({"admission.enabled": "yes"}, "admission.enabled"),
        ({"admission.queue": 5}, "admission"),
    ],
)
def test_bad_admission_settings_name_file_and_key(tmp_path: Path, change: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(config_with(tmp_path, change))
    assert str(exc.value).startswith(f"facade.yaml: {key}")


def test_the_shipped_admission_settings() -> None:
    a = load_settings().admission
    assert (a.enabled, a.max_in_flight, a.max_queue, a.max_wait_s, a.retry_after_s) == (True, 64, 64, 1.0, 1)


# -- the door in front of the gate: the kernel's listen queue -------------------------------------


def _connects(port: int, n: int) -> int:
    """How many of ``n`` connections to ``port`` the kernel completes within a second (from a
    thread: the server's loop is blocked meanwhile, accepting none of them)."""
    import socket

    done = 0
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.settimeout(1.0)
        try:
            s.connect(("127.0.0.1", port))
            done += 1
        except OSError:
            pass
        socks.append(s)
    for s in socks:
        s.close()
    return done


async def test_serve_queues_a_burst_of_connections_for_the_gate_rather_than_dropping_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While the worker's loop is busy, new connections wait in the kernel's listen queue; once it
    is full, the kernel drops them and each client waits for its SYN to be sent again (1 s, 3 s, …)
    — a silent delay no admission control can see or answer. ``serve`` listens with a queue that
    takes a burst (here 300 at once) so that they reach the gate, to be let in or refused."""
    import threading

    from aiohttp import web

    from proxy import cli
    from proxy.simulators.harness import serving

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get("/", ok)
    used: dict[str, Any] = {}
    real_serving = cli.serving

    def recording(*args: Any, **kw: Any) -> Any:
        used.update(kw)
        return real_serving(*args, **kw)

    monkeypatch.setattr(cli, "serving", recording)

    async def at_once() -> None:
        return None

    monkeypatch.setattr(cli, "_until_interrupted", at_once)
    monkeypatch.setattr(cli, "settle_heap", lambda: None)  # (the test process's collector stays as it is)
    monkeypatch.setattr(cli, "create_app", lambda *a, **kw: app)
    await cli._serve(load_settings(), "127.0.0.1", 0, DEMO_PATIENT_ID_KEY)
    assert used["backlog"] == cli.LISTEN_BACKLOG >= 1024
    assert used["site_class"] is AcceptingSite

    async with serving(app, backlog=cli.LISTEN_BACKLOG) as url:
        port = int(url.rsplit(":", 1)[1])
        got: list[int] = []
        burst = threading.Thread(target=lambda: got.append(_connects(port, 300)))
        burst.start()
        burst.join()  # (blocking the loop: nothing is accepted while the burst comes in)
    assert got == [300]


def test_a_busy_worker_accepts_every_waiting_connection_at_each_turn_of_its_loop() -> None:
    """uvloop (libuv) accepts one waiting connection per turn of the event loop; a worker whose
    turns take 100 ms under load then takes in ten new connections a second, however many wait in
    the listen queue — a queue in front of admission control that it cannot see. ``serve``'s site
    (``AcceptingSite``) accepts every waiting connection at each turn, so that each request reaches
    the gate at once, to be let in or refused. On uvloop, as ``serve`` runs."""
    import threading

    import uvloop
    from aiohttp import web

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def accepted_after_a_few_turns(site_class: type[web.TCPSite]) -> int:
        app = web.Application()
        app.router.add_get("/", ok)
        runner = web.AppRunner(app)
        await runner.setup()
        site = site_class(runner, "127.0.0.1", 0, backlog=1024)
        await site.start()
        assert runner.server is not None
        socks: list[Any] = []
        try:
            burst = threading.Thread(target=lambda: socks.extend(_open(site.port, 100)))
            burst.start()
            burst.join()  # (blocking the loop, as a busy worker's turn does, while the burst comes in)
            for _ in range(10):  # ten turns of the loop
                await asyncio.sleep(0)
            return len(runner.server.connections)
        finally:
            for sock in socks:
                sock.close()
            await runner.cleanup()

    loop = uvloop.new_event_loop()
    try:
        assert loop.run_until_complete(accepted_after_a_few_turns(web.TCPSite)) < 100  # (the trap)
        assert loop.run_until_complete(accepted_after_a_few_turns(AcceptingSite)) == 100
    finally:
        loop.close()


def _open(port: int, n: int) -> list[Any]:
    """``n`` connections to ``port``, each completed by the kernel (left open)."""
    import socket

    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]
