"""CORS for the configured origins (``http.cors.allow_origins``), e.g. the 1177 web client.

A small middleware rather than aiohttp-cors: aiohttp-cors configures CORS per route and answers a
preflight from an OPTIONS route of its own, so a preflight would still meet the FHIR middlewares'
authentication (401: a browser sends no token with a preflight), and the answers those middlewares
make themselves — a 401 the web client must read to renew its token, a 404 for an unknown path,
a 503 — would carry no CORS headers, having no route. Here it is one check over every request.

- A preflight (OPTIONS with ``Origin`` and ``Access-Control-Request-Method``) is answered here,
  without a token: 204 with the allowed methods and headers and a max-age when the origin is
  configured and every method and header asked for is allowed; otherwise 403 without CORS headers
  (the browser then refuses the request).
- Any other request from a configured origin is answered with ``Access-Control-Allow-Origin: <that
  origin>`` (never ``*``) and the headers a client may read. Another origin gets no CORS header.
- No ``Access-Control-Allow-Credentials``: the facade takes bearer tokens in ``Authorization``,
  never cookies, so nothing ambient rides on a cross-site request.
- ``Vary: Origin`` on every answer, so a cache never hands one origin's answer to another.

Without configured origins the middleware is not installed: no CORS, as before.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Middleware

from proxy.access.pdl import EMERGENCY_HEADER
from proxy.edge.http import error_response
from proxy.edge.routes import Handler

METHODS = ("GET", "HEAD", "POST", "PUT")
ALLOW_HEADERS = (
    "Accept",
    "Authorization",
    "Content-Type",
    "If-Match",
    "Prefer",
    "X-Request-ID",
    "traceparent",
    EMERGENCY_HEADER,
)
EXPOSE_HEADERS = (
    "Content-Location",
    "ETag",
    "Location",
    "Retry-After",
    "WWW-Authenticate",
    "X-Request-ID",
)
_ALLOWED_HEADERS = frozenset(h.lower() for h in ALLOW_HEADERS)


def _vary_origin(response: web.StreamResponse) -> None:
    vary = [v.strip() for v in response.headers.get("Vary", "").split(",") if v.strip()]
    if "origin" not in (v.lower() for v in vary):
        response.headers["Vary"] = ", ".join([*vary, "Origin"])


def cors(allow_origins: tuple[str, ...], max_age_s: int) -> Middleware:
    allowed = frozenset(allow_origins)
    preflight_headers = {
        "Access-Control-Allow-Methods": ", ".join(METHODS),
        "Access-Control-Allow-Headers": ", ".join(ALLOW_HEADERS),
        "Access-Control-Max-Age": str(max_age_s),
    }
    expose = ", ".join(EXPOSE_HEADERS)

    @web.middleware
    async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if request.method == "OPTIONS" and origin is not None:
            method = request.headers.get("Access-Control-Request-Method")
            if method is not None:
                asked = request.headers.get("Access-Control-Request-Headers", "")
                headers = {h.strip().lower() for h in asked.split(",") if h.strip()}
                if origin in allowed and method in METHODS and headers <= _ALLOWED_HEADERS:
                    answer: web.StreamResponse = web.Response(status=204)
                    answer.headers.update(preflight_headers)
                    answer.headers["Access-Control-Allow-Origin"] = origin
                else:
                    answer = error_response(403, "forbidden", "This cross-origin request is not allowed")
                _vary_origin(answer)
                return answer
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # (answered as raised: headers on the exception)
            _vary_origin(exc)
            if origin is not None and origin in allowed:
                exc.headers["Access-Control-Allow-Origin"] = origin
                exc.headers["Access-Control-Expose-Headers"] = expose
            raise
        if not response.prepared:
            _vary_origin(response)
            if origin is not None and origin in allowed:
                response.headers["Access-Control-Allow-Origin"] = origin
                response.headers["Access-Control-Expose-Headers"] = expose
        return response

    return cors_middleware
