"""What every FHIR handler shares: the app's keys and the request's one key (its ``Exchange``, the
request as the pipeline sees it: ``proxy.pipeline.exchange``), JSON responses, and the small request
readings (base URL, _pretty, Prefer: handling=strict, X-Request-ID, X-Emergency-Access)."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.payload import Payload

from proxy.access.pdl import EMERGENCY_HEADER, reason_code
from proxy.audit.events import NOT_A_REASON
from proxy.auth.verify import Authenticator
from proxy.fhir.errors import operation_outcome
from proxy.pipeline.exchange import Exchange
from proxy.pipeline.facade import Facade
from proxy.slack import lane
from proxy.store.base import Store
from proxy.trace import CURRENT, mint_request_id, sane_request_id
from proxy.types import FhirDict, Principal

log = logging.getLogger(__name__)
FHIR_JSON = "application/fhir+json"
FACADE_KEY = web.AppKey("facade", Facade)
AUTH_KEY = web.AppKey("authenticator", Authenticator)
STORE_KEY = web.AppKey("store", Store)
# the request as the pipeline sees it: made with the request id (proxy.edge.request_id), its
# principal set by authentication, its query and answer by the handler; the audit reads it
EXCHANGE_KEY = web.RequestKey("exchange", Exchange)


# A Bundle of more entries than this is written a slice of entries at a time (``BundlePayload``).
STREAM_ENTRIES = 1024
_SLICE_ENTRIES = 256  # (~400 KB of JSON: about a millisecond to serialise, and as long to compress)


class BundlePayload(Payload):
    """A long Bundle's JSON, serialised (and, when the client accepts it, gzipped) a slice of its
    entries at a time as it is sent, waiting in the event loop's lane between slices (``proxy.slack``):
    the bytes are those ``orjson.dumps`` makes of the whole Bundle, but neither they nor the compressed
    answer are ever held whole (a 20,000-entry Bundle is 30 MB of JSON), and other requests are not
    held up while it is written. Its length is not known beforehand: the response is sent chunked, so
    a client can tell an answer cut off mid-way from a whole one. (A failure past the status line can
    only cut the answer off: it is logged with the request id. Every resource was serialised once when
    it was mapped, so this is a lost connection, not the data.)"""

    _default_content_type = FHIR_JSON

    def __init__(self, bundle: FhirDict, **kwargs: Any) -> None:
        super().__init__(bundle, **kwargs)
        self._gzip: Any = None  # the compressor's module when gzipped (``gzip``)
        current = CURRENT.get(None)  # (made in the handler: the request's trace)
        self._request_id = current.request_id if current is not None else "?"

    @staticmethod
    def fits(data: FhirDict) -> bool:
        """Whether ``data`` is written this way: a Bundle of many entries, ``entry`` its last key (so
        that the bytes are those of ``orjson.dumps`` of the whole)."""
        entries = data.get("entry")
        return isinstance(entries, list) and len(entries) > STREAM_ENTRIES and next(reversed(data)) == "entry"

    def gzip(self, deflate: Any, level: int) -> None:
        """Send it as one gzip member (RFC 1952), ``deflate`` a zlib-like module, at ``level``."""
        self._gzip = deflate.compressobj(level, deflate.DEFLATED, 16 + deflate.MAX_WBITS)

    def _json(self) -> Any:
        bundle: FhirDict = self._value
        entries: list[FhirDict] = bundle["entry"]
        head = orjson.dumps({k: v for k, v in bundle.items() if k != "entry"})
        yield head[:-1] + b',"entry":['
        for at in range(0, len(entries), _SLICE_ENTRIES):
            part = orjson.dumps(entries[at : at + _SLICE_ENTRIES])[1:-1]
            yield part if at == 0 else b"," + part
        yield b"]}"

    async def write(self, writer: AbstractStreamWriter) -> None:
        try:
            await self._write(writer)
        except ConnectionError:  # (the client went away)
            raise
        except Exception:
            log.exception("a long Bundle was cut off while it was written (request id %s)", self._request_id)
            raise
        finally:
            self._value = None  # (sent: the entries are not held while the connection idles)

    async def _write(self, writer: AbstractStreamWriter) -> None:
        z = self._gzip
        for n, chunk in enumerate(self._json()):
            if n > 1:
                await lane().wait()  # (a turn for others between slices: proxy.slack)
            out = z.compress(chunk) if z is not None else chunk
            if out:
                await writer.write(out)
        if z is not None:
            await writer.write(z.flush())

    def decode(self, encoding: str = "utf-8", errors: str = "strict") -> str:
        return b"".join(self._json()).decode(encoding, errors)


def fhir_response(data: FhirDict, status: int = 200, *, pretty: bool = False) -> web.Response:
    if not pretty and BundlePayload.fits(data):
        return web.Response(
            body=BundlePayload(data, content_type=f"{FHIR_JSON}; charset=utf-8"),
            status=status,
            headers={"Cache-Control": "no-store"},
        )
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
