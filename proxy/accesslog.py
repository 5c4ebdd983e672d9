"""The access log and the fault log: hook subscribers that write what an operator reads.

``fhir_facade.access`` (INFO): one JSON line per request — request id, method, route *template*,
status, duration, audience, and each source's status::

    {"ts": "2026-01-01T12:00:00.123Z", "level": "INFO", "logger": "fhir_facade.access",
     "message": "request", "request_id": "3f2a...", "method": "GET",
     "route": "/fhir/Patient/{id}/$everything", "status": 200, "duration_ms": 41.7,
     "audience": "clinician", "sources": {"cosmic": "ok", "viva": "ok", "npo": "timeout"}}

Never a path, a query, a header's value but the request id, a personnummer, a patient id or a name:
the event (``proxy.hooks.RequestFinished``) does not carry them. (Who read which patient is the
audit log's job, in the store, not this file's.)

``fhir_facade.backends`` (WARNING): each backend fault — "backend npo failed: http-error (answered
HTTP 503)" — and each breaker change; a backend skipped because its breaker is open is INFO (the
breaker's opening was the warning), and so is one the facade could not ask or hear in time because
it was overloaded itself (no fault of the backend's; counted in the metrics).

``JsonFormatter`` renders any record as one JSON line, with the ``fields`` a record carries.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

import orjson

from proxy.hooks import BreakerChanged, Hooks, RequestFinished, SourceFailed

ACCESS_LOGGER = "fhir_facade.access"
BACKENDS_LOGGER = "fhir_facade.backends"
access_log = logging.getLogger(ACCESS_LOGGER)
backends_log = logging.getLogger(BACKENDS_LOGGER)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message, and the record's ``fields``."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "fields", {}),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


class LineFormatter(logging.Formatter):
    """The CLI's log format: a record with ``fields`` (the access log) as its JSON line, any other
    as text."""

    def __init__(self, fmt: str) -> None:
        super().__init__(fmt)
        self._json = JsonFormatter()

    def format(self, record: logging.LogRecord) -> str:
        if hasattr(record, "fields"):
            return self._json.format(record)
        return super().format(record)


def request_finished(e: RequestFinished) -> None:
    if not access_log.isEnabledFor(logging.INFO):
        return
    fields = {
        "request_id": e.request_id,
        "method": e.method,
        "route": e.route,
        "status": e.status,
        "duration_ms": round(e.duration_ms, 3),
        "audience": e.audience,
        "sources": dict(e.sources),
    }
    access_log.info("request", extra={"fields": fields})


def source_failed(e: SourceFailed) -> None:
    if e.kind == "facade-overloaded":  # the facade's own condition, not a fault of the backend: INFO
        backends_log.info("backend %s: %s", e.backend, e.detail or "the facade was overloaded")  # (metrics)
        return
    level = logging.INFO if e.kind == "breaker-open" else logging.WARNING
    backends_log.log(level, "backend %s failed: %s (%s)", e.backend, e.kind, e.detail or "no detail")


def breaker_changed(e: BreakerChanged) -> None:
    backends_log.warning("backend %s: circuit breaker %s -> %s", e.backend, e.old, e.new)


def subscribe(hooks: Hooks, *, access: bool = True) -> None:
    """The fault log always; the access log when ``access`` (``metrics.access_log``)."""
    hooks.subscribe(SourceFailed, source_failed)
    hooks.subscribe(BreakerChanged, breaker_changed)
    if access:
        hooks.subscribe(RequestFinished, request_finished)
