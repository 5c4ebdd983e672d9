"""What every FHIR handler shares: the app's and request's keys, JSON responses, and the small
request readings (base URL, _pretty, Prefer: handling=strict, X-Request-ID)."""

from __future__ import annotations

from collections import Counter

import orjson
from aiohttp import web

from proxy.auth import Authenticator
from proxy.fhir.errors import operation_outcome
from proxy.pipeline.facade import Facade
from proxy.store.base import Store
from proxy.trace import mint_request_id, sane_request_id
from proxy.types import FhirDict, PatientRef, Principal, Query

FHIR_JSON = "application/fhir+json"
FACADE_KEY = web.AppKey("facade", Facade)
AUTH_KEY = web.AppKey("authenticator", Authenticator)
STORE_KEY = web.AppKey("store", Store)
PRINCIPAL_KEY = web.RequestKey("principal", Principal)
REQUEST_ID_KEY = web.RequestKey("request_id", str)
# what a handler tells the audit step: the query (once parsed) and what the answer disclosed
AUDIT_QUERY_KEY = web.RequestKey("audit_query", Query)
AUDIT_DISCLOSED_KEY = web.RequestKey("audit_disclosed", Counter)
AUDIT_DEGRADED_KEY = web.RequestKey("audit_degraded", list)
AUDIT_EMERGENCY_KEY = web.RequestKey("audit_emergency", str)  # the emergency-access reason code
AUDIT_REFUSED_KEY = web.RequestKey("audit_refused", str)  # why an access was refused (no personal data)
AUDIT_RESOURCE_KEY = web.RequestKey("audit_resource", str)  # a resource the request wrote: Type/id/_history/n
# the AuditEvent of an access logged as begun (before the backends were asked), and its commit
AUDIT_BEGUN_KEY = web.RequestKey("audit_begun", tuple)


def fhir_response(data: FhirDict, status: int = 200, *, pretty: bool = False) -> web.Response:
    option = orjson.OPT_INDENT_2 if pretty else 0
    return web.Response(
        body=orjson.dumps(data, option=option),
        status=status,
        content_type=FHIR_JSON,
        charset="utf-8",
        headers={"Cache-Control": "no-store"},
    )


def error_response(status: int, code: str, message: str) -> web.Response:
    return fhir_response(operation_outcome(("error", code, message)), status)


def request_id(request: web.Request) -> str:
    """The client's X-Request-ID when it is a plain token, else a new one; echoed and audited."""
    return sane_request_id(request.headers.get("X-Request-ID")) or mint_request_id()


def strict(request: web.Request) -> bool:
    prefer = request.headers.get("Prefer", "")
    return any(p.strip().lower() == "handling=strict" for p in prefer.split(","))


def pretty(request: web.Request) -> bool:
    return request.query.get("_pretty", "false").lower() == "true"


def audit_unparsed(
    request: web.Request, interaction: str, resource_types: frozenset[str], patient: PatientRef | None
) -> None:
    """A request refused before its query was parsed (a 400, or a 404 for an unknown type) that
    names a patient (``proxy.fhir.params.named_patient``) is logged against that patient."""
    if patient is not None:
        request[AUDIT_QUERY_KEY] = Query(
            interaction=interaction, resource_types=resource_types, patient=patient
        )


def base_url(request: web.Request, facade: Facade) -> str:
    """The base for links, ``fullUrl`` and ``Location``: the configured ``facade.public_base_url``
    (``serve`` refuses to start without one; ``demo`` sets its own address), else — in the tests —
    the address the connection arrived at. Never the request's ``Host``, ``X-Forwarded-Host`` or
    ``Forwarded`` header: the client writes those, and a link built from them points wherever the
    client (or whoever crafted its link) wants."""
    configured = facade.settings.facade.public_base_url
    if configured:
        return configured
    sockname = request.transport.get_extra_info("sockname") if request.transport is not None else None
    if isinstance(sockname, tuple) and len(sockname) >= 2:
        host = f"[{sockname[0]}]" if ":" in str(sockname[0]) else str(sockname[0])
        authority = f"{host}:{sockname[1]}"
    else:  # (a Unix socket, or a connection already gone)
        authority = "localhost"
    return f"{request.scheme}://{authority}{facade.settings.facade.base_path}"
