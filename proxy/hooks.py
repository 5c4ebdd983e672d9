"""A small typed hook bus: what happened on the way through a request, for whoever listens.

Publishers (the HTTP edge, the pipeline, the breaker, the audit store) call ``hooks.emit(event)``
where the thing happens; subscribers (``proxy.metrics``, ``proxy.accesslog``, the bench) register
with ``hooks.subscribe(EventType, fn)`` at start-up. Every event is a frozen dataclass of bounded,
patient-free values: a backend's name, a route *template*, a status, a duration, a count — never a
personnummer, a patient id, a name, a path or a token, so any subscriber may log or count it.

Emitting with nobody listening costs one dict lookup (``emit`` returns at once); a publisher whose
event is costly to build asks ``hooks.wants(EventType)`` first. A subscriber runs synchronously in
the publisher's place, so it must be quick; one that raises is logged once (by name, with its
traceback) and never breaks the request — later failures of the same subscriber are counted, not
logged again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)

E = TypeVar("E")


@dataclass(frozen=True, slots=True)
class RequestFinished:
    """The HTTP edge answered a request."""

    request_id: str
    method: str  # GET, POST, ... ("OTHER" for anything else)
    route: str  # the route's template, e.g. /fhir/Patient/{id}/$everything ("unmatched": none)
    status: int
    duration_ms: float
    audience: str  # the token's audience, "none" when no token was verified
    sources: tuple[tuple[str, str], ...] = ()  # (backend, its SourceStatus value), in plan order


@dataclass(frozen=True, slots=True)
class RequestShed:
    """Admission control refused a request (503, ``proxy.edge.admission``) before reading it:
    ``reason`` is queue-full (every place and the queue taken) or waited-too-long."""

    reason: str


@dataclass(frozen=True, slots=True)
class StageFinished:
    """One stage of a request's walk (``proxy.pipeline.walk``) finished: its name, how long it took."""

    stage: str  # the stage function's name, e.g. fetch_and_map
    duration_ms: float


@dataclass(frozen=True, slots=True)
class SourceAnswered:
    """A backend answered every request of its share of a fan-out."""

    backend: str
    latency_ms: float


@dataclass(frozen=True, slots=True)
class SourceFailed:
    """A backend's share of a fan-out failed. ``kind``: timeout, http-error, connect-error,
    connection-closed, too-large, invalid, breaker-open, error, or facade-overloaded (not the
    backend's fault: the facade could not ask or hear it in time); ``detail`` is the answer's own
    short, fixed text (``SourceResult.detail``), never a body."""

    backend: str
    latency_ms: float
    kind: str
    detail: str = ""


@dataclass(frozen=True, slots=True)
class AnswerMapped:
    """A backend's answers to one request were mapped to FHIR: the resources they made, and the
    time mapping them took (all of it: answers are mapped one by one as they arrive)."""

    backend: str
    records: int
    duration_ms: float


@dataclass(frozen=True, slots=True)
class BreakerChanged:
    """A backend's circuit breaker moved (closed, open, half-open)."""

    backend: str
    old: str
    new: str


@dataclass(frozen=True, slots=True)
class CacheLookup:
    """The source cache was asked for one backend request's answer: hit (fresh), stale or miss."""

    backend: str
    result: str
    bytes: int | None = None  # what was read, where the store knows it (the shared store)


@dataclass(frozen=True, slots=True)
class AuditQueued:
    """An AuditEvent was queued for the next group commit; ``depth``: the queue after it."""

    depth: int


@dataclass(frozen=True, slots=True)
class AuditCommitted:
    """One group commit of AuditEvents ended (``ok`` False: the store failed it)."""

    events: int
    duration_ms: float
    ok: bool = True
    depth: int = 0  # what is queued for the next commit


class Hooks:
    """Subscribers by event type. Built once per app; publishers hold a reference to it."""

    __slots__ = ("_failed", "_subscribers")

    def __init__(self) -> None:
        self._subscribers: dict[type, tuple[Callable[[Any], None], ...]] = {}
        self._failed: dict[Callable[[Any], None], int] = {}

    def subscribe(self, kind: type[E], fn: Callable[[E], None]) -> None:
        """Call ``fn(event)`` for every event of exactly type ``kind`` emitted from now on."""
        self._subscribers[kind] = (*self._subscribers.get(kind, ()), fn)

    def wants(self, kind: type) -> bool:
        """Whether anybody listens to ``kind`` (to skip building a costly event)."""
        return kind in self._subscribers

    def emit(self, event: object) -> None:
        subscribers = self._subscribers.get(type(event))
        if subscribers is None:
            return
        for fn in subscribers:
            try:
                fn(event)
            except Exception:
                self._failure(fn, event)

    def failures(self, fn: Callable[[Any], None]) -> int:
        """How often ``fn`` has raised."""
        return self._failed.get(fn, 0)

    def _failure(self, fn: Callable[[Any], None], event: object) -> None:
        n = self._failed[fn] = self._failed.get(fn, 0) + 1
        if n == 1:  # once: a broken subscriber must not flood the log on every request
            name = getattr(fn, "__qualname__", type(fn).__name__)
            log.exception(
                "hook subscriber %s failed on %s (logged once; it stays subscribed; the request goes on)",
                name,
                type(event).__name__,
            )
