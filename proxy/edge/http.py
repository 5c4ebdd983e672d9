"""What every FHIR handler shares: the app's keys and the request's one key (its ``Exchange``, the
request as the pipeline sees it: ``proxy.pipeline.exchange``), JSON responses, and the small request
readings (base URL, _pretty, Prefer: handling=strict, X-Request-ID, X-Emergency-Access)."""

from __future__ import annotations

import orjson
from aiohttp import web

from proxy.access.pdl import EMERGENCY_HEADER, reason_code
from proxy.audit.events import NOT_A_REASON
from proxy.auth.verify import Authenticator
from proxy.fhir.errors import operation_outcome
from proxy.pipeline.exchange import Exchange
from proxy.pipeline.facade import Facade
from proxy.store.base import Store
from proxy.trace import mint_request_id, sane_request_id
from proxy.types import FhirDict, Principal

FHIR_JSON = "application/fhir+json"
FACADE_KEY = web.AppKey("facade", Facade)
AUTH_KEY = web.AppKey("authenticator", Authenticator)
STORE_KEY = web.AppKey("store", Store)
# the request as the pipeline sees it: made with the request id (proxy.edge.request_id), its
# principal set by authentication, its query and answer by the handler; the audit reads it
EXCHANGE_KEY = web.RequestKey("exchange", Exchange)


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


def exchange(request: web.Request) -> Exchange:
    """The request's Exchange (made by the outermost middleware; else here, with its request id)."""
    x = request.get(EXCHANGE_KEY)
    if x is None:
        request[EXCHANGE_KEY] = x = Exchange(request_id(request))
    return x


def asker(request: web.Request) -> Principal:
    """The request's verified principal (every FHIR route but the capability documents has one)."""
    principal = exchange(request).principal
    if principal is None:  # (a route outside the authenticating middleware: a bug of ours)
        raise RuntimeError("the request was not authenticated")
    return principal


def emergency_asked(request: web.Request) -> str | None:
    """Emergency access asked for: the header's reason code, or ``NOT_A_REASON`` (its text is
    never kept: the walk's ``emergency`` stage refuses it); None when not asked for."""
    header = request.headers.get(EMERGENCY_HEADER)
    if header is None:
        return None
    return reason_code(header) or NOT_A_REASON


def request_id(request: web.Request) -> str:
    """The client's X-Request-ID when it is a plain token, else a new one; echoed and audited."""
    return sane_request_id(request.headers.get("X-Request-ID")) or mint_request_id()


def strict(request: web.Request) -> bool:
    prefer = request.headers.get("Prefer", "")
    return any(p.strip().lower() == "handling=strict" for p in prefer.split(","))


def pretty(request: web.Request) -> bool:
    return request.query.get("_pretty", "false").lower() == "true"


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
