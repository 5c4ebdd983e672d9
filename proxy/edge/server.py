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

``AcceptingSite`` is a drop-in ``web.TCPSite`` for ``serve``: it accepts every connection waiting
in the listen queue at each turn of the event loop. uvloop (libuv) accepts one per turn; a worker
whose turns take 100 ms under load then takes in ten new connections a second, and the rest wait in
the kernel's queue — unseen by admission control (``proxy.edge.admission``), which can only refuse
what has been accepted, while their clients wait.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
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


class _Listening(asyncio.AbstractServer):
    """A listening socket whose waiting connections are all accepted at each turn of the loop and
    handed to ``protocol_factory`` (aiohttp's server), as a ``loop.create_server`` would."""

    def __init__(self, sock: socket.socket, protocol_factory: web.Server, backlog: int) -> None:
        self._sock = sock
        self._factory = protocol_factory
        self._backlog = backlog
        self._loop = asyncio.get_running_loop()
        self._tasks: set[asyncio.Task[object]] = set()
        sock.setblocking(False)
        self._loop.add_reader(sock.fileno(), self._accept)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return (self._sock,) if self._sock.fileno() != -1 else ()

    def _accept(self) -> None:
        for _ in range(self._backlog):  # (bounded: a flood cannot keep this turn going forever)
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # every waiting connection taken
            except ConnectionAbortedError:
                continue  # (the client gave up while it waited)
            except OSError as exc:  # out of file descriptors, or the like: try again next turn
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("accepting a connection failed (%s)", type(exc).__name__)
                return
            conn.setblocking(False)
            task = self._loop.create_task(self._loop.connect_accepted_socket(self._factory, conn))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def close(self) -> None:
        if self._sock.fileno() != -1:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return self._sock.fileno() != -1

    async def start_serving(self) -> None:
        return None

    async def serve_forever(self) -> None:
        raise NotImplementedError

    async def wait_closed(self) -> None:
        return None


class AcceptingSite(web.TCPSite):
    """``web.TCPSite``, every waiting connection accepted at each turn of the loop (see above)."""

    __slots__ = ()

    async def start(self) -> None:
        await web.BaseSite.start(self)  # (registers the site; TCPSite.start would listen through uvloop)
        server = self._runner.server
        assert server is not None
        host = self._host or "0.0.0.0"
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server(
            (host, self._port), family=family, backlog=self._backlog, reuse_port=bool(self._reuse_port)
        )
        self._server = _Listening(sock, server, self._backlog)
        self._bound_port = sock.getsockname()[1]
