"""Admission control, per worker: load is shed at the door, never silently degraded inside.

At most ``max_in_flight`` requests are worked on at once; up to ``max_queue`` more wait, first come
first served, each at most ``max_wait_s``. Beyond that a request is refused at once — 503 with
``Retry-After`` and an OperationOutcome (``throttled``) — instead of being let in to wait for the
event loop and the backends' connections, where its time would run into its deadline and the
backends' budgets and every answer would come back partial. (``proxy.fanout.client`` keeps what
waiting is left from being charged to a backend; this keeps the waiting short.)

A request is admitted or refused before anything of it is read but its method and path: before
its token is verified, before any patient is looked at. So a refusal depends only on how busy the
worker is — never on whom the request is about ("hidden is absent") — names no patient, and leaves
no AuditEvent (there is nothing to audit: no patient was named, nothing was disclosed); the access
log has its line (status 503) and ``/metrics`` counts it (``fhir_facade_requests_shed_total``).

Never refused: the probes (``/healthz``, ``/readyz``), ``/metrics``, the capability documents
(``metadata``, ``.well-known/smart-configuration``) and CORS preflights (any OPTIONS): they are
cheap, and a load balancer, a scraper or a browser must reach them most of all when the worker is
busy. (Most are answered by middlewares outside this one already; they are named here too so that
the order of the middlewares is not what keeps them open.)
"""

from __future__ import annotations

import asyncio
from collections import deque

from aiohttp import web
from aiohttp.typedefs import Middleware

from proxy.edge.http import error_response
from proxy.edge.routes import Handler
from proxy.hooks import Hooks, RequestShed
from proxy.settings import AdmissionSettings

QUEUE_FULL = "queue-full"  # in-flight and queue full: refused at once
WAITED_TOO_LONG = "waited-too-long"  # queued, and no place came free within max_wait_s
THROTTLED_TEXT = "The server is busy; please retry after the time given in Retry-After"


class Gate:
    """The worker's places: ``in_flight`` taken (at most ``max_in_flight``), and who waits for one.

    A place that comes free passes straight to the first waiter, so nobody arriving later overtakes
    the queue."""

    __slots__ = ("in_flight", "max_in_flight", "max_queue", "max_wait_s", "waiting")

    def __init__(self, max_in_flight: int, max_queue: int, max_wait_s: float) -> None:
        self.max_in_flight = max_in_flight
        self.max_queue = max_queue
        self.max_wait_s = max_wait_s
        self.in_flight = 0
        self.waiting: deque[asyncio.Future[bool]] = deque()

    async def enter(self) -> str | None:
        """Take a place (None), or say why not (``QUEUE_FULL``, ``WAITED_TOO_LONG``)."""
        if self.in_flight < self.max_in_flight:
            self.in_flight += 1
            return None
        if len(self.waiting) >= self.max_queue:
            return QUEUE_FULL
        loop = asyncio.get_running_loop()
        place: asyncio.Future[bool] = loop.create_future()
        self.waiting.append(place)
        timer = loop.call_later(self.max_wait_s, self._give_up, place)
        try:
            admitted = await place
        except asyncio.CancelledError:  # the client left while it waited
            if place.done() and not place.cancelled() and place.result():
                self.leave()  # (a place had just passed to it: pass it on)
            else:
                self._drop(place)
            raise
        finally:
            timer.cancel()
        return None if admitted else WAITED_TOO_LONG

    def leave(self) -> None:
        """Give a place back: to the first waiter, else free."""
        while self.waiting:
            place = self.waiting.popleft()
            if not place.done():
                place.set_result(True)  # (in_flight stays: the place is the waiter's now)
                return
        self.in_flight -= 1

    def _give_up(self, place: asyncio.Future[bool]) -> None:
        if not place.done():
            self._drop(place)
            place.set_result(False)

    def _drop(self, place: asyncio.Future[bool]) -> None:
        try:
            self.waiting.remove(place)  # (the queue is short: max_queue)
        except ValueError:
            pass


ADMISSION_KEY = web.AppKey("admission", Gate)


def never_refused(base_path: str) -> frozenset[str]:
    """The paths admission never refuses (besides any OPTIONS)."""
    return frozenset(
        {
            "/healthz",
            "/readyz",
            "/metrics",
            f"{base_path}/metadata",
            f"{base_path}/.well-known/smart-configuration",
        }
    )


def throttled(retry_after_s: int) -> web.Response:
    """The refusal: the same for every request it refuses (nothing of the request in it)."""
    resp = error_response(503, "throttled", THROTTLED_TEXT)
    resp.headers["Retry-After"] = str(retry_after_s)
    return resp


def admission(settings: AdmissionSettings, base_path: str, gate: Gate, hooks: Hooks) -> Middleware:
    """The middleware: inside the access log's (``observed``), outside authentication and audit."""
    free = never_refused(base_path)
    retry_after_s = settings.retry_after_s

    @web.middleware
    async def admitted(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "OPTIONS" or request.path in free:
            return await handler(request)
        refused = await gate.enter()
        if refused is not None:
            hooks.emit(RequestShed(refused))
            return throttled(retry_after_s)
        try:
            return await handler(request)
        finally:
            gate.leave()

    return admitted
