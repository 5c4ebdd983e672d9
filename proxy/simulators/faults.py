"""Fault injection shared by the three simulators.

Faults come from config (``simulators.<name>.faults`` in ``config/*.yaml``) and can be changed at run
time through a small control endpoint on each simulator::

    GET    /_sim/faults          the current settings
    PUT    /_sim/faults          replace them (JSON body, fields below; missing fields = defaults)
    PATCH  /_sim/faults          change some fields
    DELETE /_sim/faults          back to no faults

Fields: ``latency_ms`` (added before every answer), ``error_status`` (answer with this HTTP status),
``malformed`` (200 with a body cut in half), ``hang`` (never answer; bounded by ``hang_s``),
``drop`` (send the headers and part of the body, then close the connection), ``oversize_bytes``
(pad the answer with trailing whitespace to at least this size), ``rate`` (share of requests the
error/malformed/drop/hang faults hit, decided by a seeded generator so runs repeat),
``path_contains`` / ``path_endswith`` (only requests whose path contains / ends with this string
are affected) and ``error_body`` (with ``error_status``: this JSON body instead of the dialect's own
error, e.g. Cosmic's unknown-patient answer on an endpoint where it must not pass as "nothing").
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import asdict

from aiohttp import web

from proxy.faultspec import Faults as Faults  # the settings, a value the config reader checks too

CONTROL_PREFIX = "/_sim"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


FAULTS_KEY = web.AppKey("faults", dict)  # {"current": Faults, "rng": random.Random}


def install(app: web.Application, initial: Faults, error_body: Callable[[int], web.Response]) -> None:
    """Add the fault middleware and the control endpoint to a simulator app.

    ``error_body`` renders an error in the simulator's own dialect (JSON error / SOAP fault).
    """
    app[FAULTS_KEY] = {"current": initial, "rng": random.Random(0)}

    @web.middleware
    async def inject(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(CONTROL_PREFIX):
            return await handler(request)
        state = app[FAULTS_KEY]
        f: Faults = state["current"]
        if f.path_contains and f.path_contains not in request.path:
            return await handler(request)
        if f.path_endswith and not request.path.endswith(f.path_endswith):
            return await handler(request)
        if request.can_read_body:
            await request.read()  # before any delay: a client that gives up must not break the read
        if f.latency_ms:
            await asyncio.sleep(f.latency_ms / 1000)
        hit = f.rate >= 1.0 or state["rng"].random() < f.rate
        if hit and f.hang:
            await asyncio.sleep(f.hang_s)
        if hit and f.error_status is not None:
            if f.error_body is not None:
                return web.json_response(f.error_body, status=f.error_status)
            return error_body(f.error_status)
        if not (hit and (f.malformed or f.drop)) and not f.oversize_bytes:
            return await handler(request)
        response = await handler(request)
        if not isinstance(response, web.Response) or response.body is None:
            return response
        body = bytes(response.body)  # type: ignore[arg-type]
        if f.oversize_bytes and len(body) < f.oversize_bytes:
            body += b" " * (f.oversize_bytes - len(body))  # trailing whitespace: still valid JSON/XML
        if hit and f.drop:
            return await _drop_mid_body(request, response, body)
        if hit and f.malformed:
            body = body[: max(1, len(body) // 2)]
        return web.Response(body=body, status=response.status, content_type=response.content_type)

    app.middlewares.append(inject)

    async def get_faults(request: web.Request) -> web.Response:
        return web.json_response(asdict(app[FAULTS_KEY]["current"]))

    async def set_faults(request: web.Request) -> web.Response:
        try:
            data = await request.json()
            if not isinstance(data, dict):
                raise ValueError("faults must be a JSON object")
            base = app[FAULTS_KEY]["current"] if request.method == "PATCH" else Faults()
            app[FAULTS_KEY]["current"] = Faults.from_dict(data, base)
        except ValueError as exc:  # includes JSON decode errors
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(asdict(app[FAULTS_KEY]["current"]))

    async def clear_faults(request: web.Request) -> web.Response:
        app[FAULTS_KEY]["current"] = Faults()
        return web.json_response(asdict(Faults()))

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "up"})

    app.router.add_get(f"{CONTROL_PREFIX}/faults", get_faults)
    app.router.add_put(f"{CONTROL_PREFIX}/faults", set_faults)
    app.router.add_patch(f"{CONTROL_PREFIX}/faults", set_faults)
    app.router.add_delete(f"{CONTROL_PREFIX}/faults", clear_faults)
    app.router.add_get(f"{CONTROL_PREFIX}/health", health)


async def _drop_mid_body(request: web.Request, response: web.Response, body: bytes) -> web.StreamResponse:
    """Promise the whole body, send half of it, then cut the connection."""
    stream = web.StreamResponse(status=response.status)
    stream.content_type = response.content_type
    stream.content_length = len(body)
    await stream.prepare(request)
    await stream.write(body[: max(1, len(body) // 2)])
    if request.transport is not None:
        request.transport.abort()
    return stream
