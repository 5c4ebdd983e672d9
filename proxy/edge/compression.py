"""gzip when the client accepts it, for answers of at least ``http.compression.min_bytes``.

The whole ``bytes`` body the routes build with orjson is compressed here — CPU per request is what
limits a worker — with ISA-L's deflate (``isal``, a dependency) at its level 1:
on the facade's FHIR JSON about 70 µs per 40 KB Bundle against 210 µs for zlib at level 1 and 570 µs
at aiohttp's level 6, in fewer bytes than zlib's level 1 (12.5 % of the JSON against 13.1 %; level
6: 10.9 %). In a deployment that left ``isal`` out, zlib at level 1. Either writes a standard gzip
member. An answer up to ``SYNC_BYTES`` is compressed on the event loop (a thread hop costs more than
the work); a larger one in the default executor, so that one big answer does not stall the others
(both release the GIL). A long Bundle (``proxy.edge.http.BundlePayload``: more than
``STREAM_ENTRIES`` entries) is never one ``bytes``: it is compressed a slice of entries at a time as
it is written, into one gzip member all the same. The choice is made here, not by aiohttp's
negotiation, which looks for the coding's name anywhere in ``Accept-Encoding`` and so ignores
q-values (``gzip;q=0`` would be gzipped) and prefers deflate. Here gzip is used only when
``Accept-Encoding`` accepts it (``gzip`` or ``*`` with q > 0, RFC 9110 §12.5.3); answers that could
be compressed carry ``Vary: Accept-Encoding`` either way.

BREACH (a compressed size leaking a secret next to attacker-chosen text) needs an attacker who can
make the victim's client send authenticated requests with chosen parameters and watch the sizes.
The facade's credential is a bearer token the client adds itself, never a cookie, so a cross-site
page cannot send a request as the victim; and no body carries a token or another secret next to
reflected input (the Bundle's links echo the query, the records are the asker's own to read).
Should the facade ever take ambient credentials (cookies), this must be revisited.
"""

from __future__ import annotations

import asyncio
import zlib

from aiohttp import web
from aiohttp.typedefs import Middleware

from proxy.edge.http import BundlePayload
from proxy.edge.routes import Handler

try:
    from isal import isal_zlib as _deflate
except ImportError:  # (a deployment that left it out) the standard library's, three times the CPU
    _deflate = zlib  # type: ignore[no-redef,misc]

LEVEL = 1  # (ISA-L has levels 0-3; zlib's 1 is its fastest too)
SYNC_BYTES = 256 * 1024  # (well under 1 ms of level-1 work) larger answers are compressed off the loop


def gzipped(body: bytes) -> bytes:
    """``body`` as a gzip member (RFC 1952), at ``LEVEL``."""
    z = _deflate.compressobj(LEVEL, _deflate.DEFLATED, 16 + _deflate.MAX_WBITS)
    return z.compress(body) + z.flush()


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether ``Accept-Encoding`` accepts gzip (explicitly, else through ``*``), q-values honoured."""
    explicit: float | None = None
    star: float | None = None
    for part in accept_encoding.split(","):
        coding, _, params = part.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        coding = coding.strip().lower()
        if coding in ("gzip", "x-gzip"):
            explicit = q
        elif coding == "*":
            star = q
    chosen = explicit if explicit is not None else star
    return chosen is not None and chosen > 0


def compression(min_bytes: int) -> Middleware:
    @web.middleware
    async def gzip_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if not isinstance(response, web.Response) or response.prepared:
            return response
        body = response.body
        # a long Bundle is compressed as it is written (``BundlePayload``); other answers here, whole
        streamed = isinstance(body, BundlePayload)
        whole = isinstance(body, bytes) and len(body) >= min_bytes
        if not (streamed or whole) or "Content-Encoding" in response.headers:
            return response
        vary = response.headers.get("Vary", "")
        if "accept-encoding" not in vary.lower():
            response.headers["Vary"] = f"{vary}, Accept-Encoding" if vary else "Accept-Encoding"
        if accepts_gzip(request.headers.get("Accept-Encoding", "")):
            if isinstance(body, BundlePayload):
                body.gzip(_deflate, LEVEL)
            elif isinstance(body, bytes):
                if len(body) <= SYNC_BYTES:
                    response.body = gzipped(body)
                else:
                    response.body = await asyncio.get_running_loop().run_in_executor(None, gzipped, body)
            response.headers["Content-Encoding"] = "gzip"
        return response

    return gzip_middleware
