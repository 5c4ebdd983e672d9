"""Run the simulators (and the facade in front of them) in-process, on loopback.

Used by ``fhir-facade demo``, ``fhir-facade mappings check``, the tests and the benchmark.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from proxy.settings import Settings, SimulatorSettings
from proxy.simulators import factory
from proxy.simulators.faults import Faults
from proxy.simulators.history import History
from proxy.simulators.population import DEMO_PEOPLE, LONG_HISTORY_PEOPLE, Person, generated_people
from proxy.simulators.rendered import render_cache

LOOPBACK = "127.0.0.1"


@contextlib.asynccontextmanager
async def serving(
    app: web.Application,
    host: str = LOOPBACK,
    port: int = 0,
    *,
    reuse_port: bool = False,
    runner_class: type[web.AppRunner] = web.AppRunner,
    sock: socket.socket | None = None,
    backlog: int = 128,
    site_class: type[web.TCPSite] = web.TCPSite,
) -> AsyncIterator[str]:
    """Serve an app until the block ends; yields its base URL (port 0 = a free port).

    ``reuse_port`` lets several worker processes listen on one port (SO_REUSEPORT; the kernel
    spreads connections over them). ``sock``: a socket already bound (``listening``), for an app
    that must know its address before it is made. The facade is served with
    ``proxy.edge.server.FacadeRunner``. ``backlog``: the kernel's queue of connections not yet
    accepted (aiohttp's default, 128, unless given; capped by ``net.core.somaxconn``); ``site_class``:
    the site listening on ``host``:``port`` (``serve``: ``proxy.edge.server.AcceptingSite``)."""
    runner = runner_class(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site: web.BaseSite
        if sock is not None:
            site = web.SockSite(runner, sock, backlog=backlog)
        else:
            site = site_class(
                runner, host, port, reuse_address=True, reuse_port=reuse_port or None, backlog=backlog
            )
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        yield f"http://{bound_host}:{bound_port}"
    finally:
        await runner.cleanup()


def listening(host: str = LOOPBACK, port: int = 0) -> socket.socket:
    """A TCP socket bound to ``host``:``port`` (0 = a free port), for ``serving(sock=...)``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def people_for(
    settings: Settings, patients: int | None = None, seed: int | None = None, *, long_histories: bool = True
) -> list[Person]:
    """The simulators' population: the named demo patients, the named long histories (unless
    ``long_histories`` is false) and the generated patients."""
    sims = settings.simulators
    generated = generated_people(
        sims.patients if patients is None else patients, sims.seed if seed is None else seed
    )
    return [*DEMO_PEOPLE, *(LONG_HISTORY_PEOPLE if long_histories else ()), *generated]


def history_for(sims: SimulatorSettings) -> History:
    """The long-history knobs of the simulator settings."""
    return History(sims.records, sims.years)


def simulator_app(
    name: str, people: list[Person], sims: SimulatorSettings, faults: Faults
) -> web.Application:
    """One simulator's app, with the long-history knobs, the cache bound and the rendered answers'
    budget (``proxy.simulators.rendered``) of ``sims``."""
    app = factory(name)(people, faults, history=history_for(sims), cached_records=sims.cached_records)
    if sims.render_cache_bytes:
        app.middlewares.append(render_cache(sims.render_cache_bytes, reads_by_post=name == "npo"))
    return app


@dataclass(frozen=True, slots=True)
class Received:
    """A request a simulator received (the test hook of ``running_simulators``)."""

    backend: str
    method: str
    path: str
    headers: dict[
        str, str
    ]  # the tracing headers only: X-Request-ID, traceparent (and a write's Idempotency-Key)
    query: dict[str, str] = field(default_factory=dict)  # the query string's parameters
    body: bytes = b""  # what was posted (a SOAP envelope)


_TRACED = ("X-Request-ID", "traceparent", "Idempotency-Key")


def _recording(backend: str, received: list[Received]) -> Any:
    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        headers = {h: request.headers[h] for h in _TRACED if h in request.headers}
        body = await request.read() if request.can_read_body else b""  # (kept for the handler)
        received.append(Received(backend, request.method, request.path, headers, dict(request.query), body))
        return await handler(request)

    return record


@contextlib.asynccontextmanager
async def running_simulators(
    settings: Settings,
    people: list[Person],
    *,
    faults: Mapping[str, dict[str, Any]] | None = None,
    ports: Mapping[str, int] | None = None,
    received: list[Received] | None = None,
) -> AsyncIterator[dict[str, str]]:
    """Start the simulator of every backend that names one. Yields {backend: base URL}.

    ``received`` (tests): each simulator appends what it was sent (``Received``) to it."""
    configured = dict(settings.simulators.faults)
    configured.update(faults or {})
    urls: dict[str, str] = {}
    async with contextlib.AsyncExitStack() as stack:
        for b in settings.backends:
            if b.simulator is None:
                continue
            faulty = Faults.from_dict(configured.get(b.simulator))
            app = simulator_app(b.simulator, people, settings.simulators, faulty)
            if received is not None:  # (first: it sees every request, faulty or not)
                app.middlewares.insert(0, _recording(b.name, received))
            urls[b.name] = await stack.enter_async_context(serving(app, port=(ports or {}).get(b.name, 0)))
        yield urls
