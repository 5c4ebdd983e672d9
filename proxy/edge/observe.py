"""The HTTP edge's window: ``GET /metrics``, and a ``RequestFinished`` event for every request.

``observed`` is the app's outermost middleware: it sees the status every request finally got —
errors included, as ``fhir_errors`` answered them — and publishes it on the hook bus with the route
*template* (``/fhir/Patient/{id}/$everything``; "unmatched" when no route matched: the path itself,
which may name a patient, is never published), the audience of the verified token ("none" without
one) and each asked source's status (the answer's, on the request's ``Exchange``).
``proxy.metrics`` counts these events, ``proxy.accesslog`` writes them as JSON lines.

``/metrics`` is answered here, before authentication and content negotiation: it is not FHIR and
has its own token (``proxy.metrics.scrape``).
"""

from __future__ import annotations

import asyncio
import time

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from proxy.edge.http import exchange
from proxy.hooks import Hooks, RequestFinished
from proxy.metrics import Metrics, scrape
from proxy.settings import MetricsSettings

METRICS_PATH = "/metrics"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


def observed(hooks: Hooks, metrics: Metrics | None, settings: MetricsSettings) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            if metrics is not None and request.path == METRICS_PATH:
                response: web.StreamResponse = scrape(metrics, settings, request)
            else:
                response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:  # the client went away before its answer (nginx's 499)
            status = 499
            raise
        finally:
            if hooks.wants(RequestFinished):
                hooks.emit(_finished(request, status, (time.perf_counter() - started) * 1000))

    return middleware


def _finished(request: web.Request, status: int, duration_ms: float) -> RequestFinished:
    x = exchange(request)
    audience = "none" if x.principal is None else x.principal.audience.name  # (a configured one's)
    # each asked source's outcome in this request's answer (the access log's "sources")
    outcomes = x.answer.outcomes if x.answer is not None else ()
    return RequestFinished(
        request_id=x.request_id,
        method=request.method if request.method in _METHODS else "OTHER",
        route=METRICS_PATH if request.path == METRICS_PATH else route_template(request),
        status=status,
        duration_ms=duration_ms,
        audience=audience,
        sources=tuple((o.source, o.status.value) for o in outcomes),
    )
