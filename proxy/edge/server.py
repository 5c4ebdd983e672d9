"""The HTTP server under the routes: what the facade answers to a request aiohttp cannot parse.

A malformed request line, a header over ``max_line_size``/``max_field_size``, bad chunked encoding,
an invalid Content-Length: aiohttp's parser rejects these before any route or middleware runs, in
``RequestHandler.handle_error``, and by default answers a plain-text page quoting the offending
bytes — part of a header, an ``Authorization: Bearer ...`` token, a query string — and logs them
with a traceback. aiohttp has no documented hook for that answer (aio-libs/aiohttp#3287, #9882), so
the facade's runner makes its connections with a ``RequestHandler`` whose ``handle_error`` answers
an OperationOutcome (``application/fhir+json``) with a fixed text per kind of error, and logs the
kind only. Nothing of the request is echoed or logged.

``FacadeRunner`` is a drop-in ``web.AppRunner``: ``serve`` and ``demo`` run the facade with it
(``proxy.simulators.harness.serving``), the tests through a ``TestServer`` that makes one.
"""

from __future__ import annotations

import asyncio
import logging
from http import HTTPStatus

from aiohttp import http_exceptions, web

from proxy.edge.http import error_response
from proxy.trace import mint_request_id

log = logging.getLogger(__name__)

# (exception kind, IssueType code, fixed text); the first match wins
_PARSE_ERRORS: tuple[tuple[type[BaseException], str, str], ...] = (
    (
        http_exceptions.LineTooLong,
        "too-long",
        "A request line or header field is longer than this server accepts",
    ),
    (http_exceptions.BadStatusLine, "structure", "The request line is not valid HTTP/1.1"),
    (
        http_exceptions.PayloadEncodingError,
        "structure",
        "The request body's encoding (chunked, Content-Length or compression) is not valid",
    ),
    (http_exceptions.InvalidURLError, "structure", "The request target is not a valid URL"),
    (http_exceptions.InvalidHeader, "structure", "A request header is not valid HTTP/1.1"),
    (http_exceptions.HttpProcessingError, "structure", "The request is not valid HTTP/1.1"),
)


def below_the_routes(status: int, exc: BaseException | None) -> web.Response:
    """The OperationOutcome for an error raised below the routes; never a byte of the request."""
    code, text = next(
        ((code, text) for kind, code, text in _PARSE_ERRORS if isinstance(exc, kind)), (None, None)
    )
    if code is None or text is None:
        if status == HTTPStatus.GATEWAY_TIMEOUT:
            code, text = "timeout", "The request took too long"
        elif status >= 500:
            code, text = "exception", "Internal error"
        else:
            code, text = "invalid", _phrase(status)
    return error_response(status, code, text)


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "The request cannot be processed"


class FhirRequestHandler(web.RequestHandler):
    """aiohttp's connection handler, answering its own errors as OperationOutcomes."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,  # (aiohttp's text, quoting the request: not used)
    ) -> web.StreamResponse:
        kind = type(exc).__name__ if exc is not None else "-"
        if status >= 500:  # a failure of ours, not of the request: worth its traceback
            log.error("error handling a request (%s, %s)", status, kind, exc_info=exc)
        else:  # scanners and broken clients: the kind of error only, never the bytes
            log.info("refused a malformed request (%s, %s)", status, kind)
        if request.writer.output_size > 0:  # (as aiohttp: an answer has begun, the connection is lost)
            raise ConnectionError("Response is sent already, cannot send another response")
        resp = below_the_routes(status, exc)
        resp.headers["X-Request-ID"] = mint_request_id()  # (nothing of the request is trusted here)
        resp.force_close()
        return resp


class FhirServer(web.Server):
    """aiohttp's low-level server, making ``FhirRequestHandler`` connections."""

    def __call__(self) -> web.RequestHandler:
        return FhirRequestHandler(self, loop=self._loop, **self._kwargs)


class FacadeRunner(web.AppRunner):
    """``web.AppRunner`` for the facade: the same app and handler arguments (``max_line_size``,
    ``max_field_size``, ...), its connections answering malformed requests as above."""

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()  # (starts the app)
        return FhirServer(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **made._kwargs,
        )
