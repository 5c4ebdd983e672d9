"""Build the facade's aiohttp application.

Mappings are compiled here, before the app exists, so a broken mapping stops start-up with its
file and key named. Backend sessions are opened and closed together in one ``cleanup_ctx``.

Hook subscribers from outside the product (the bench's phases, a deployment's own probe) are named
in ``FHIR_FACADE_HOOK_SUBSCRIBERS``: ``module:function`` entries, separated by commas or spaces,
each imported and called once with the app's ``Hooks`` (``proxy.hooks``) to subscribe what it
wants — no monkeypatching. One that cannot be imported or called stops start-up, named.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import os
import socket
import uuid
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from proxy import accesslog
from proxy.auth.config import TrustedIssuer
from proxy.auth.verify import Authenticator
from proxy.cache import MemoryCache, RedisCache, SourceCache, redis_prefix
from proxy.clock import SYSTEM_CLOCK, Clock
from proxy.edge.admission import ADMISSION_KEY, Gate, admission
from proxy.edge.compression import compression
from proxy.edge.cors import cors
from proxy.edge.health import health
from proxy.edge.http import AUTH_KEY, FACADE_KEY, STORE_KEY
from proxy.edge.observe import observed
from proxy.edge.request_id import request_ids
from proxy.edge.routes import FhirRoutes, audited, fhir_errors
from proxy.fanout.client import BackendClient
from proxy.fanout.engagement import EngagementIndex
from proxy.fhir.ids import PatientIds, ResourceIds
from proxy.hooks import BreakerChanged, Hooks
from proxy.mapping.pool import MapPool
from proxy.mapping.registry import MappingSet, load_mappings
from proxy.mapping.validate import MappingError
from proxy.mapping.write import WriteMappings, compile_write_mappings
from proxy.metrics import Metrics
from proxy.paging import LAYOUT as PAGES_LAYOUT
from proxy.paging import RedisSnapshots, SnapshotStore
from proxy.pipeline.delivery import Delivery
from proxy.pipeline.facade import Facade
from proxy.pipeline.record_dates import RecordDates
from proxy.redact.policy import compile_policy
from proxy.settings import CacheSettings, Settings
from proxy.store.base import Store, open_store

# the worker's mapping processes (facade.map_workers), while the app runs
POOL_KEY = web.AppKey("map_pool", MapPool)


def compile_mappings(settings: Settings, ids: ResourceIds) -> MappingSet:
    """The deployment's mappings; ``ids`` (from its patient-id key) makes their resource ids."""
    priority = {name: i for i, name in enumerate(settings.source_priority)}
    return load_mappings(
        settings.mappings_dir,
        {b.name: (b.mappings, frozenset(k for k, _ in b.vars)) for b in settings.backends},
        without_care_documentation=settings.without_care_documentation,
        ids=ids,
        # what else the mapped answers depend on: part of their cache keys
        inputs={
            b.name: repr((sorted(b.vars), b.source_uri, priority.get(b.name))) for b in settings.backends
        },
    )


def pool_mappings(settings: Settings, patient_id_key: bytes) -> MappingSet:
    """``compile_mappings`` as a mapping process compiles them (proxy.mapping.pool)."""
    return compile_mappings(settings, ResourceIds(patient_id_key))


def compile_writes(settings: Settings) -> WriteMappings:
    """The deployment's write mappings (``<folder>/write/*.yaml`` of each backend), checked against
    ``writes.policy``: every target the policy names for a type has a mapping writing that type."""
    writes = compile_write_mappings(
        settings.mappings_dir,
        [(b.name, b.mappings) for b in settings.backends],
        variables={b.name: [k for k, _ in b.vars] for b in settings.backends},
    )
    for audience, types in settings.writes.policy:
        for rtype, targets in types:
            missing = [t for t in targets if t not in writes.for_type(rtype)]
            if missing:
                raise MappingError(
                    f"writes.policy.{audience}.{rtype}: no write mapping for {rtype} in {', '.join(missing)}"
                    " (mappings/<backend>/write/)"
                )
    return writes


def open_cache(c: CacheSettings, *, namespace: str, clock: Clock = SYSTEM_CLOCK) -> SourceCache | None:
    """The source cache. Its entries hold resource ids, which depend on the deployment's key: the
    shared store files them under ``namespace`` (the key's fingerprint), so an entry made under
    another key — or under an older key layout (prefixes v1, v2) — is never served. (The memory
    store lives and dies with one app, and so with one key.) Which mappings made an entry is in
    each entry's cache key (``MappingSet.cache_key``)."""
    if not c.enabled:
        return None
    if c.store == "redis":
        import redis.asyncio as aioredis

        return RedisCache(
            aioredis.from_url(c.redis_url),
            ttl_s=c.ttl_s,
            max_stale_s=c.max_stale_s,
            prefix=redis_prefix(namespace),
            clock=clock,
        )
    return MemoryCache(
        ttl_s=c.ttl_s,
        max_stale_s=c.max_stale_s,
        max_entries=c.max_entries,
        max_bytes=c.max_bytes,
        clock=clock,
    )


def open_pages(
    settings: Settings, store: Store, *, namespace: str
) -> tuple[SnapshotStore, RedisSnapshots | None]:
    """Where page snapshots live (``proxy.paging``): the Redis the cache is configured with, shared
    by every worker and host — filed under ``namespace`` (the key's fingerprint: the snapshots hold
    resource ids made under it) — else the facade's store (a table in SQLite or PostgreSQL). The
    second value is the Redis client's owner, to close (None: the store is closed as itself)."""
    if settings.cache.store == "redis":
        import redis.asyncio as aioredis

        redis = RedisSnapshots(
            aioredis.from_url(settings.cache.redis_url), prefix=f"{PAGES_LAYOUT}:{namespace}"
        )
        return redis, redis
    return store, None


def edge(settings: Settings) -> list[Middleware]:
    """The HTTP edge's middlewares, outermost first (proxy/edge/__init__.py): CORS only for
    configured origins, gzip only when enabled."""
    h = settings.http
    return [
        request_ids,
        *([cors(h.cors_allow_origins, h.cors_max_age_s)] if h.cors_allow_origins else []),
        *([compression(h.gzip_min_bytes)] if h.gzip else []),
        health,
    ]


def create_app(
    settings: Settings,
    *,
    patient_id_key: bytes,
    extra_issuer: TrustedIssuer | None = None,
    clock: Clock = SYSTEM_CLOCK,
    hooks: Hooks | None = None,
) -> web.Application:
    """The facade app. ``patient_id_key`` must be shared by every worker behind one base URL (the
    Patient ids are encrypted under it, the other resource ids keyed with a key derived from it);
    ``extra_issuer`` is for the demo and the tests (the dev-only demo issuer), never for ``serve``;
    ``clock`` (``proxy.clock``) times tokens, the cache, the breakers and the engagement index.
    ``hooks``: the hook bus (``proxy.hooks``) for further subscribers (the bench, tests); the
    metrics, the access log and the fault log subscribe to it here."""
    # the models that validate POSTed Consents and written resources (proxy.fhir.transaction), imported
    # once, here: building them on first use takes ~0.15 s, which would fall on a request
    import fhir.resources.R4B.consent
    import fhir.resources.R4B.documentreference
    import fhir.resources.R4B.encounter
    import fhir.resources.R4B.medicationadministration
    import fhir.resources.R4B.observation  # noqa: F401  (imported for its models)

    ids, resource_ids = PatientIds(patient_id_key), ResourceIds(patient_id_key)
    mappings = compile_mappings(settings, resource_ids)
    writes = compile_writes(settings)
    authenticator = Authenticator.from_settings(
        settings, extra_issuer=extra_issuer, patient_ids=ids, clock=clock
    )
    policy = compile_policy(settings.policy, settings.audiences.names)
    hooks = Hooks() if hooks is None else hooks
    metrics = Metrics([b.name for b in settings.backends]) if settings.metrics.enabled else None
    if metrics is not None:
        metrics.subscribe(hooks)
    accesslog.subscribe(hooks, access=settings.metrics.access_log)
    load_subscribers(hooks, os.environ.get(SUBSCRIBERS_ENV, ""))
    a = settings.admission
    gate = Gate(a.max_in_flight, a.max_queue, a.max_wait_s) if a.enabled else None
    # admission inside ``observed`` (a refused request has its access-log line and is counted),
    # outside authentication and audit (refused before any token or patient is read)
    door = [admission(a, settings.facade.base_path, gate, hooks)] if gate is not None else []
    app = web.Application(
        middlewares=[
            *edge(settings),
            observed(hooks, metrics, settings.metrics),
            *door,
            fhir_errors,
            audited,
        ],
        client_max_size=64 * 1024,
    )
    if gate is not None:
        app[ADMISSION_KEY] = gate

    async def backends(app: web.Application) -> AsyncIterator[None]:
        store = open_store(settings.store)
        store.hooks = hooks
        await store.open()
        app[STORE_KEY] = store
        clients = {
            b.name: BackendClient.open(
                b,
                settings.facade.max_body_bytes,
                max_answer_bytes=settings.facade.max_answer_bytes,
                clock=clock,
            )
            for b in settings.backends
        }
        for name, client in clients.items():
            client.breaker.on_change = _publisher(hooks, name)
        cache = open_cache(settings.cache, namespace=resource_ids.fingerprint, clock=clock)
        pages, redis_pages = open_pages(settings, store, namespace=resource_ids.fingerprint)
        e = settings.engagement
        worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        delivery = Delivery(store, clients, settings.outbox, clock, worker)
        app[FACADE_KEY] = Facade(
            settings=settings,
            mappings=mappings,
            clients=clients,
            ids=ids,
            policy=policy,
            store=store,
            cache=cache,
            engagement=EngagementIndex(ttl_s=e.ttl_s, clock=clock) if e.enabled else None,
            hooks=hooks,
            pages=pages if settings.paging.snapshots else None,
            clock=clock,
            write_mappings=writes,
            delivery=delivery,
            resource_ids=resource_ids,
            record_dates=RecordDates(
                m.resource_type for ms in mappings.by_backend.values() for m in ms if m.request.date_filter
            ),
            map_pool=app.get(POOL_KEY),
        )
        # this worker's outbox delivery (any worker delivers any write: the store leases the parts)
        delivering = asyncio.create_task(delivery.run(), name="outbox delivery")
        try:
            yield
        finally:
            delivering.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await delivering
            for client in clients.values():
                await client.close()
            if cache is not None:
                await cache.close()
            if redis_pages is not None:
                await redis_pages.close()
            await store.close()

    async def mapping_processes(app: web.Application) -> AsyncIterator[None]:
        # (before the backends, and stopped after them — also when a later start-up step fails)
        f = settings.facade
        pool = MapPool(pool_mappings, (settings, patient_id_key), f.map_workers, f.map_from_bytes)
        try:
            await pool.start()
            app[POOL_KEY] = pool
            yield
        finally:
            await pool.close()

    app[AUTH_KEY] = authenticator
    if settings.facade.map_workers:
        app.cleanup_ctx.append(mapping_processes)
    app.cleanup_ctx.append(backends)
    FhirRoutes(settings.facade.base_path).add_to(app)
    return app


SUBSCRIBERS_ENV = "FHIR_FACADE_HOOK_SUBSCRIBERS"


def load_subscribers(hooks: Hooks, spec: str) -> None:
    """Import each ``module:function`` of ``spec`` (commas or spaces between) and call it with
    ``hooks``; a name that does not resolve stops start-up (a subscriber asked for is not dropped)."""
    for entry in spec.replace(",", " ").split():
        module, _, name = entry.partition(":")
        try:
            subscribe = getattr(importlib.import_module(module), name) if name else None
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"{SUBSCRIBERS_ENV}: cannot load {entry!r}: {exc}") from exc
        if not callable(subscribe):
            raise ValueError(f"{SUBSCRIBERS_ENV}: {entry!r} is not module:function")
        subscribe(hooks)


def _publisher(hooks: Hooks, backend: str) -> Callable[[str, str], None]:
    def changed(old: str, new: str) -> None:
        hooks.emit(BreakerChanged(backend, old, new))

    return changed
