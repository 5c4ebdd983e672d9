"""``GET /metrics``: the facade's Prometheus metrics (prometheus-client), fed by the hook bus.

Every label is bounded and patient-free: route *templates* (``/fhir/Patient/{id}/$everything``,
never a path), status codes, audiences, backend names, outcome kinds. Nothing here ever sees a
personnummer, a patient id or a name: the events (``proxy.hooks``) do not carry them.

    fhir_facade_requests_total{route,status,audience}            counter
    fhir_facade_request_duration_seconds{route,audience}         histogram
    fhir_facade_requests_shed_total{reason}                      counter: refused by admission
                                                                 control (503): queue-full,
                                                                 waited-too-long
    fhir_facade_backend_calls_total{backend,outcome}             counter (answered, timeout,
                                                                 http-error, breaker-open,
                                                                 facade-overloaded, ...)
    fhir_facade_backend_call_duration_seconds{backend}           histogram (a backend's whole share)
    fhir_facade_mapped_records_total{backend}                    counter
    fhir_facade_mapping_duration_seconds{backend}                histogram (one answer)
    fhir_facade_breaker_state{backend}                           gauge: 0 closed, 1 half-open, 2 open
                                                                 (several workers: the worst)
    fhir_facade_breaker_transitions_total{backend,state}         counter (the state moved to)
    fhir_facade_cache_lookups_total{backend,result}              counter: hit, stale, miss
    fhir_facade_cache_read_bytes_total{backend}                  counter (the shared store's entries,
                                                                 compressed: the bytes Redis sent)
    fhir_facade_audit_queue_depth                                gauge (several workers: summed)
    fhir_facade_audit_commit_duration_seconds                    histogram (one group commit)
    fhir_facade_audit_commits_total{result}                      counter: ok, failed

Under ``serve --workers N`` every worker writes its values to files in ``PROMETHEUS_MULTIPROC_DIR``
(the command makes that directory and removes it when it stops), and a scrape of any worker
sums them (prometheus-client's multiprocess mode). Otherwise each app keeps its own registry.

Who may scrape (``metrics`` in the config): a client sending ``Authorization: Bearer <token>`` with
the token of ``FHIR_FACADE_METRICS_TOKEN`` (never a FHIR token); without one configured, nobody —
unless ``allow_unauthenticated_loopback`` lets a peer on 127.0.0.0/8 or ::1 in (never behind a
reverse proxy on the same host: every client would then come from loopback).
"""

from __future__ import annotations

import hmac
import ipaddress
import os
from typing import Any

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from proxy.hooks import (
    AnswerMapped,
    AuditCommitted,
    AuditQueued,
    BreakerChanged,
    CacheLookup,
    Hooks,
    RequestFinished,
    RequestShed,
    SourceAnswered,
    SourceFailed,
)
from proxy.settings import MetricsSettings

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
BREAKER_STATES = {"closed": 0, "half-open": 1, "open": 2}
# request latency (s): the facade answers in milliseconds to seconds (deadline 5 s by default)
_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_MAPPING_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)


def multiprocess() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


class Metrics:
    """The facade's metrics, subscribed to one app's hooks."""

    def __init__(self, backends: list[str]) -> None:
        # multiprocess: the values go to this process's files, a scrape reads every process's
        self.registry = None if multiprocess() else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "fhir_facade_requests", "Requests answered", ["route", "status", "audience"], registry=r
        )
        self.request_seconds = Histogram(
            "fhir_facade_request_duration_seconds",
            "Time to answer a request",
            ["route", "audience"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.shed = Counter(
            "fhir_facade_requests_shed",
            "Requests refused by admission control (503 with Retry-After)",
            ["reason"],
            registry=r,
        )
        self.calls = Counter(
            "fhir_facade_backend_calls",
            "Backend shares of a fan-out, by outcome",
            ["backend", "outcome"],
            registry=r,
        )
        self.call_seconds = Histogram(
            "fhir_facade_backend_call_duration_seconds",
            "Time a backend took to answer its share of a fan-out",
            ["backend"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        self.mapped = Counter(
            "fhir_facade_mapped_records", "Resources mapped from backend answers", ["backend"], registry=r
        )
        self.mapping_seconds = Histogram(
            "fhir_facade_mapping_duration_seconds",
            "Time to map a backend's answers to one request",
            ["backend"],
            buckets=_MAPPING_BUCKETS,
            registry=r,
        )
        self.breaker = Gauge(
            "fhir_facade_breaker_state",
            "Circuit breaker per backend: 0 closed, 1 half-open, 2 open",
            ["backend"],
            multiprocess_mode="max",
            registry=r,
        )
        self.breaker_moves = Counter(
            "fhir_facade_breaker_transitions",
            "Circuit breaker transitions, by the state moved to",
            ["backend", "state"],
            registry=r,
        )
        self.cache = Counter(
            "fhir_facade_cache_lookups", "Source cache lookups", ["backend", "result"], registry=r
        )
        self.cache_bytes = Counter(
            "fhir_facade_cache_read_bytes", "Bytes read from the shared source cache", ["backend"], registry=r
        )
        self.audit_depth = Gauge(
            "fhir_facade_audit_queue_depth",
            "AuditEvents waiting for the next group commit",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.audit_seconds = Histogram(
            "fhir_facade_audit_commit_duration_seconds",
            "Time of one group commit of AuditEvents",
            buckets=(*_MAPPING_BUCKETS, 2.5, 5.0),
            registry=r,
        )
        self.audit_commits = Counter(
            "fhir_facade_audit_commits", "Group commits of AuditEvents", ["result"], registry=r
        )
        # each label set's child, made once: ``labels()`` checks and locks on every call
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        for b in backends:
            self.breaker.labels(b).set(0)

    def _of(self, metric: Any, *values: str) -> Any:
        key = (id(metric), values)
        child = self._children.get(key)
        if child is None:  # (bounded: every label's values are)
            child = self._children[key] = metric.labels(*values)
        return child

    def subscribe(self, hooks: Hooks) -> None:
        hooks.subscribe(RequestFinished, self.request_finished)
        hooks.subscribe(RequestShed, self.request_shed)
        hooks.subscribe(SourceAnswered, self.source_answered)
        hooks.subscribe(SourceFailed, self.source_failed)
        hooks.subscribe(AnswerMapped, self.answer_mapped)
        hooks.subscribe(BreakerChanged, self.breaker_changed)
        hooks.subscribe(CacheLookup, self.cache_lookup)
        hooks.subscribe(AuditQueued, self.audit_queued)
        hooks.subscribe(AuditCommitted, self.audit_committed)

    def request_finished(self, e: RequestFinished) -> None:
        self._of(self.requests, e.route, str(e.status), e.audience).inc()
        self._of(self.request_seconds, e.route, e.audience).observe(e.duration_ms / 1000)

    def request_shed(self, e: RequestShed) -> None:
        self._of(self.shed, e.reason).inc()

    def source_answered(self, e: SourceAnswered) -> None:
        self._of(self.calls, e.backend, "answered").inc()
        self._of(self.call_seconds, e.backend).observe(e.latency_ms / 1000)

    def source_failed(self, e: SourceFailed) -> None:
        self._of(self.calls, e.backend, e.kind).inc()
        if e.kind not in ("breaker-open", "facade-overloaded"):  # (not asked, or not the backend's time)
            self._of(self.call_seconds, e.backend).observe(e.latency_ms / 1000)

    def answer_mapped(self, e: AnswerMapped) -> None:
        self._of(self.mapped, e.backend).inc(e.records)
        self._of(self.mapping_seconds, e.backend).observe(e.duration_ms / 1000)

    def breaker_changed(self, e: BreakerChanged) -> None:
        self._of(self.breaker, e.backend).set(BREAKER_STATES.get(e.new, 2))
        self._of(self.breaker_moves, e.backend, e.new).inc()

    def cache_lookup(self, e: CacheLookup) -> None:
        self._of(self.cache, e.backend, e.result).inc()
        if e.bytes:
            self._of(self.cache_bytes, e.backend).inc(e.bytes)

    def audit_queued(self, e: AuditQueued) -> None:
        self.audit_depth.set(e.depth)

    def audit_committed(self, e: AuditCommitted) -> None:
        self.audit_depth.set(e.depth)
        self.audit_seconds.observe(e.duration_ms / 1000)
        self._of(self.audit_commits, "ok" if e.ok else "failed").inc()

    def exposition(self) -> bytes:
        """The scrape: this app's registry, or every worker's files (multiprocess)."""
        if self.registry is not None:
            return generate_latest(self.registry)
        from prometheus_client import multiprocess as mp

        registry = CollectorRegistry()
        mp.MultiProcessCollector(registry)
        return generate_latest(registry)


def may_scrape(settings: MetricsSettings, remote: str | None, authorization: str | None) -> bool:
    """The configured token (compared in constant time), else a loopback peer if that is allowed."""
    if settings.token is not None:
        scheme, _, given = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            given.strip().encode(), settings.token.encode()
        )
    if not settings.allow_unauthenticated_loopback or not remote:
        return False
    try:
        return ipaddress.ip_address(remote).is_loopback
    except ValueError:
        return False


def scrape(metrics: Metrics, settings: MetricsSettings, request: web.BaseRequest) -> web.Response:
    """The answer to ``GET /metrics``: plain text, never an OperationOutcome (it is not FHIR)."""
    if request.method not in ("GET", "HEAD"):
        return web.Response(status=405, text="GET only\n", headers={"Allow": "GET, HEAD"})
    if not may_scrape(settings, request.remote, request.headers.get("Authorization")):
        return web.Response(
            status=401,
            text="metrics need the metrics token (FHIR_FACADE_METRICS_TOKEN) as a bearer token\n",
            headers={"WWW-Authenticate": 'Bearer realm="metrics"', "Cache-Control": "no-store"},
        )
    return web.Response(
        body=metrics.exposition(),
        headers={"Content-Type": CONTENT_TYPE_LATEST, "Cache-Control": "no-store"},
    )
