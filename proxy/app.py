"""Build the facade's aiohttp application.

Mappings are compiled here, before the app exists, so a broken mapping stops start-up with its
file and key named. Backend sessions are opened and closed together in one ``cleanup_ctx``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Middleware

from proxy.auth import Authenticator, TrustedIssuer
from proxy.cache import MemoryCache, RedisCache, SourceCache
from proxy.edge.compression import compression
from proxy.edge.cors import cors
from proxy.edge.health import health
from proxy.edge.request_id import request_ids
from proxy.fanout import BackendClient
from proxy.fanout.engagement import EngagementIndex
from proxy.fhir.http import AUTH_KEY, FACADE_KEY, STORE_KEY
from proxy.fhir.ids import PatientIds, ResourceIds
from proxy.fhir.routes import FhirRoutes, audited, fhir_errors
from proxy.mapping.registry import MappingSet, load_mappings
from proxy.pipeline import Facade
from proxy.redact import compile_policy
from proxy.settings import CacheSettings, Settings
from proxy.store import open_store


def compile_mappings(settings: Settings, ids: ResourceIds) -> MappingSet:
    """The deployment's mappings; ``ids`` (from its patient-id key) makes their resource ids."""
    return load_mappings(
        settings.mappings_dir,
        {b.name: (b.mappings, frozenset(k for k, _ in b.vars)) for b in settings.backends},
        without_care_documentation=settings.without_care_documentation,
        ids=ids,
    )


def open_cache(c: CacheSettings, *, namespace: str) -> SourceCache | None:
    """The source cache. Its entries hold resource ids, which depend on the deployment's key: the
    shared store files them under ``namespace`` (the key's fingerprint), so an entry made under
    another key — or by the unkeyed ids of old (prefix v1) — is never served. (The memory store
    lives and dies with one app, and so with one key.)"""
    if not c.enabled:
        return None
    if c.store == "redis":
        import redis.asyncio as aioredis

        return RedisCache(
            aioredis.from_url(c.redis_url),
            ttl_s=c.ttl_s,
            max_stale_s=c.max_stale_s,
            prefix=f"fhir-facade:v2:{namespace}",
        )
    return MemoryCache(ttl_s=c.ttl_s, max_stale_s=c.max_stale_s, max_entries=c.max_entries)


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
    settings: Settings, *, patient_id_key: bytes, extra_issuer: TrustedIssuer | None = None
) -> web.Application:
    """The facade app. ``patient_id_key`` must be shared by every worker behind one base URL (the
    Patient ids are encrypted under it, the other resource ids keyed with a key derived from it);
    ``extra_issuer`` is for the demo and the tests (the dev-only demo issuer), never for ``serve``."""
    import fhir.resources.R4B.consent  # noqa: F401  (validates POSTed Consents; imported once, here)

    ids, resource_ids = PatientIds(patient_id_key), ResourceIds(patient_id_key)
    mappings = compile_mappings(settings, resource_ids)
    authenticator = Authenticator.from_settings(settings, extra_issuer=extra_issuer, patient_ids=ids)
    policy = compile_policy(settings.policy)
    app = web.Application(middlewares=[*edge(settings), fhir_errors, audited], client_max_size=64 * 1024)

    async def backends(app: web.Application) -> AsyncIterator[None]:
        store = open_store(settings.store)
        await store.open()
        app[STORE_KEY] = store
        clients = {b.name: BackendClient.open(b, settings.facade.max_body_bytes) for b in settings.backends}
        cache = open_cache(settings.cache, namespace=resource_ids.fingerprint)
        e = settings.engagement
        app[FACADE_KEY] = Facade(
            settings=settings,
            mappings=mappings,
            clients=clients,
            ids=ids,
            policy=policy,
            store=store,
            cache=cache,
            engagement=EngagementIndex(ttl_s=e.ttl_s) if e.enabled else None,
        )
        try:
            yield
        finally:
            for client in clients.values():
                await client.close()
            if cache is not None:
                await cache.close()
            await store.close()

    app[AUTH_KEY] = authenticator
    app.cleanup_ctx.append(backends)
    FhirRoutes(settings.facade.base_path).add_to(app)
    return app
