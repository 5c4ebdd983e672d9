"""X-Request-ID on every answer, and the request's trace for the backend calls (``proxy.trace``).

The client's X-Request-ID is kept when it is a plain token (1-128 of ``A-Z a-z 0-9 . _ : -``,
starting with a letter or digit) sent once, else replaced by a new one (uuid4, 32 hex); a valid
W3C ``traceparent`` sent once continues the client's trace. This is the outermost place that
knows the id, so the request's ``Exchange`` (``EXCHANGE_KEY``: ``proxy.pipeline.exchange``) is
made here with it, for the access log and the audit event. The id is answered on every response —
success, OperationOutcome, preflight, and an error raised past every other middleware.
"""

from __future__ import annotations

import logging

from aiohttp import web

from proxy import trace
from proxy.edge.http import EXCHANGE_KEY, error_response
from proxy.edge.routes import Handler
from proxy.pipeline.exchange import Exchange

log = logging.getLogger(__name__)
HEADER = "X-Request-ID"


def _single(request: web.Request, name: str) -> str | None:
    """The header's value if it is sent once; sent twice it is ambiguous (a proxy in between may
    read the other one), so it counts as not sent: a new id, a new trace (W3C Trace Context §3.2)."""
    values = request.headers.getall(name, [])
    return values[0] if len(values) == 1 else None


@web.middleware
async def request_ids(request: web.Request, handler: Handler) -> web.StreamResponse:
    current = trace.new_trace(_single(request, HEADER), _single(request, "traceparent"))
    request[EXCHANGE_KEY] = Exchange(current.request_id)
    token = trace.CURRENT.set(current)
    try:
        response = await handler(request)
    except web.HTTPException as exc:  # (the FHIR middlewares answer these; an edge one may raise)
        exc.headers[HEADER] = current.request_id
        raise
    except Exception:  # past every handler of ours: still an OperationOutcome, with its id
        log.exception("unhandled error at the HTTP edge (request id %s)", current.request_id)
        response = error_response(500, "exception", "Internal error")
    finally:
        trace.CURRENT.reset(token)
        # The request is answered (only its body may be left to write): its working state — a long
        # history's records — is let go now, not when aiohttp drops the request, which it holds
        # until the connection's next request (an idle keep-alive connection would keep it).
        request.pop(EXCHANGE_KEY, None)
    if not response.prepared:
        response.headers[HEADER] = current.request_id
    return response
