"""``/healthz`` and ``/readyz``: for a load balancer and an orchestrator, not for FHIR clients.

At the server root, outside the FHIR base path (``GET /healthz``, ``GET /readyz``; HEAD too), and
answered by this middleware before the FHIR ones: no token, no content negotiation, no audit.
Patient-free: no personnummer, no ids, no backend URLs or DSNs — only check names, backend names
and breaker states.

    /healthz  200 {"status": "alive"} whenever the process serves requests.
    /readyz   200 when the facade can answer: its store is reachable (the audit writer runs and a
              trivial query answers within READY_TIMEOUT_S — without the access log nothing may be
              disclosed) and its mappings are loaded; else 503, naming the check that failed.
              Each backend's circuit-breaker state is reported, never failing readiness: a backend
              that is down makes answers partial (and says so), not the facade unready — taking
              every worker out of the load balancer because a backend is down would turn a partial
              answer into none.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from aiohttp import web

from proxy.edge.http import FACADE_KEY, STORE_KEY
from proxy.edge.routes import Handler

log = logging.getLogger(__name__)
READY_TIMEOUT_S = 2.0
_METHODS = ("GET", "HEAD")


def _json(data: dict[str, Any], status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data),
        status=status,
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def healthz(request: web.Request) -> web.Response:
    return _json({"status": "alive"})


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    facade = app.get(FACADE_KEY)
    store = app.get(STORE_KEY)
    checks = {"store": "unreachable", "mappings": "not loaded"}
    if store is not None:
        try:
            await asyncio.wait_for(store.ping(), READY_TIMEOUT_S)
            checks["store"] = "ok"
        except Exception as exc:  # (any failure: not ready; the kind is logged, never the DSN)
            log.warning("readiness: the store is unreachable (%s)", type(exc).__name__)
    if facade is not None and any(facade.mappings.by_backend.values()):
        checks["mappings"] = "ok"
    backends = {}
    if facade is not None:
        backends = {name: {"breaker": client.breaker.state} for name, client in facade.clients.items()}
    ready = all(v == "ok" for v in checks.values())
    body = {"status": "ready" if ready else "not ready", "checks": checks, "backends": backends}
    return _json(body, 200 if ready else 503)


_ENDPOINTS = {"/healthz": healthz, "/readyz": readyz}


@web.middleware
async def health(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer the two endpoints here; everything else goes on to the FHIR middlewares."""
    endpoint = _ENDPOINTS.get(request.path)
    if endpoint is not None and request.method in _METHODS:
        return await endpoint(request)
    return await handler(request)
