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

Anyone can call them, so a flood of ``/readyz`` must not become a flood of store queries: probes
that arrive together share one ping, and its result stands for ``READY_MEMO_S``.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any

import orjson
from aiohttp import web

from proxy.edge.http import FACADE_KEY, STORE_KEY
from proxy.edge.routes import Handler
from proxy.store.base import Store

log = logging.getLogger(__name__)
READY_TIMEOUT_S = 2.0
READY_MEMO_S = 1.0  # how long one store ping's result answers /readyz
_METHODS = ("GET", "HEAD")


class _StoreProbe:
    """One store ping at a time, its result reused for READY_MEMO_S (per app)."""

    def __init__(self) -> None:
        self._pending: asyncio.Future[bool] | None = None
        self._at = float("-inf")

    async def reachable(self, store: Store) -> bool:
        loop = asyncio.get_running_loop()
        if self._pending is None or (self._pending.done() and loop.time() - self._at > READY_MEMO_S):
            self._at = loop.time()
            self._pending = asyncio.ensure_future(self._ping(store))
        return await asyncio.shield(self._pending)  # (a client that leaves does not cancel the others')

    @staticmethod
    async def _ping(store: Store) -> bool:
        try:
            await asyncio.wait_for(store.ping(), READY_TIMEOUT_S)
            return True
        except Exception as exc:  # (any failure: not ready; the kind is logged, never the DSN)
            log.warning("readiness: the store is unreachable (%s)", type(exc).__name__)
            return False


_PROBES: weakref.WeakKeyDictionary[Store, _StoreProbe] = weakref.WeakKeyDictionary()  # (one per store)


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
        probe = _PROBES.get(store)
        if probe is None:
            _PROBES[store] = probe = _StoreProbe()
        if await probe.reachable(store):
            checks["store"] = "ok"
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
