"""How fan-out talks to a backend: a small protocol, aiohttp in production, in memory in unit tests.

``Transport.request(method, url, headers=..., body=...)`` is an async context manager giving an
``Exchange`` — the status and headers as soon as they are in, the body only when fan-out asks for it
(``read(cap)``: whole, or ``BodyTooLarge`` past ``cap`` bytes, carrying what was read; then
``chunks()``: the rest as it arrives, for an answer decoded incrementally). Whatever goes wrong on the way
(cannot connect, connecting takes too long, the connection is cut, the body is incomplete) is a
``TransportError`` with a short, non-sensitive detail and the source status it makes; nothing else
escapes but ``BodyTooLarge``, cancellation, and bugs (which fan-out logs and reports as a failure).

The whole budget of a backend and of a request is fan-out's (``BackendRun.expire``, ``fan_out``'s
deadline), never the transport's: a transport only bounds connecting. Headers are the caller's, as
given (the request's own from its mapping, and whatever fan-out adds, e.g. a request id).

``Transport.slot()`` is one of the backend's connections (``limit_per_host``), waited for in the
facade's own queue: fan-out sends each request inside one, and a request's budget starts only once it
has one — the wait for a slot is the facade's, never the backend's (``proxy.fanout.client``).

``AiohttpTransport`` keeps one ``aiohttp.ClientSession`` per backend for the app's lifetime.
``MemoryTransport`` answers from a table (URL → ``Canned``: status, headers, body, a delay, a wait,
or an exception) and records what it was asked, so fan-out's logic — budgets, deadlines, the
breaker, partial answers, the body cap — is tested without sockets or simulators.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import aiohttp
from yarl import URL

from proxy.types import SourceStatus


class TransportError(Exception):
    """The backend could not be asked, or its answer did not arrive whole."""

    def __init__(self, status: SourceStatus, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail


class BodyTooLarge(Exception):
    """The answer's body is larger than the cap fan-out read it with. ``head``: what had been read
    (nothing when the length was known beforehand); the rest is still to be had from ``chunks()``."""

    def __init__(self, head: bytes = b"") -> None:
        super().__init__()
        self.head = head


CHUNK_BYTES = 64 * 1024  # what a body is read in: bounded, and large enough that a chunk's overhead is small


# what each failure is called in an answer (one wording for every transport)
COULD_NOT_CONNECT = "could not connect"
CONNECT_TIMEOUT = "could not connect in time"
CUT_OFF = "connection closed before the answer was complete"


class Exchange(Protocol):
    """One answer on its way: the status and headers are in; the body is read on demand."""

    @property
    def status(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    async def read(self, cap: int) -> bytes:
        """The whole body (decompressed), or ``BodyTooLarge`` once it passes ``cap`` bytes."""
        ...

    def chunks(self) -> AsyncIterator[bytes]:
        """The rest of the body (decompressed) as it arrives, in chunks of at most ``CHUNK_BYTES``:
        after ``read`` raised ``BodyTooLarge``, what it had not read. A cut-off body raises
        ``TransportError`` after the chunks that did arrive."""
        ...


class Transport(Protocol):
    def slot(self) -> contextlib.AbstractAsyncContextManager[None]:
        """Wait for one of the backend's connection slots and hold it (a request is sent inside one)."""
        ...

    def request(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None
    ) -> contextlib.AbstractAsyncContextManager[Exchange]:
        """Send one request; ``url`` is percent-encoded already. Never follows redirects (a request
        naming a patient goes to the configured host only)."""
        ...

    async def close(self) -> None: ...


# -- production: aiohttp ---------------------------------------------------------------------------


def _translated(exc: Exception) -> Exception:
    """An aiohttp exception as a TransportError (the most specific first); any other as it is."""
    if isinstance(exc, TimeoutError):  # (connecting: the total budget is fan-out's)
        return TransportError(SourceStatus.TIMEOUT, CONNECT_TIMEOUT)
    if isinstance(exc, aiohttp.ClientPayloadError):
        return TransportError(SourceStatus.ERROR, CUT_OFF)
    if isinstance(exc, aiohttp.ClientConnectorError):
        return TransportError(SourceStatus.ERROR, COULD_NOT_CONNECT)
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        return TransportError(SourceStatus.ERROR, CUT_OFF)
    if isinstance(exc, aiohttp.ClientConnectionError):
        return TransportError(SourceStatus.ERROR, COULD_NOT_CONNECT)
    if isinstance(exc, aiohttp.ClientError):
        return TransportError(SourceStatus.ERROR, f"HTTP client error ({type(exc).__name__})")
    return exc


class _AiohttpExchange:
    __slots__ = ("_resp",)

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp

    @property
    def status(self) -> int:
        return self._resp.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._resp.headers

    async def read(self, cap: int) -> bytes:
        """A body with a Content-Length and no Content-Encoding is exactly that long (the HTTP
        parser reads no more), so it is checked before it is read; a chunked or compressed one is
        counted as it arrives, decompressed."""
        resp = self._resp
        try:
            if resp.content_length is not None:
                if resp.content_length > cap:
                    raise BodyTooLarge
                if "Content-Encoding" not in resp.headers:
                    return await resp.read()
            chunks: list[bytes] = []
            size = 0
            async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
                size += len(chunk)
                chunks.append(chunk)
                if size > cap:
                    raise BodyTooLarge(b"".join(chunks))
            return b"".join(chunks)
        except aiohttp.ClientError as exc:
            raise _translated(exc) from None

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._resp.content.iter_chunked(CHUNK_BYTES):
                yield chunk
        except aiohttp.ClientError as exc:
            raise _translated(exc) from None


class _AiohttpRequest:
    """``session.request(...)`` with its errors translated (a plain class, not a generator: it is
    entered once per backend call)."""

    __slots__ = ("_cm",)

    def __init__(self, cm: Any) -> None:
        self._cm = cm  # aiohttp's _RequestContextManager

    async def __aenter__(self) -> Exchange:
        try:
            return _AiohttpExchange(await self._cm.__aenter__())
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _translated(exc) from None

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._cm.__aexit__(*exc_info)


class AiohttpTransport:
    """One long-lived ``aiohttp.ClientSession`` (connection pool) per backend. A connection the
    backend closed before answering is retried once for an idempotent GET — by aiohttp itself
    (RFC 9112 §9.3.1), never for a POST."""

    def __init__(self, session: aiohttp.ClientSession, limit: int) -> None:
        self.session = session
        # The connection slots, in front of aiohttp's pool (which has the same limit, and so never
        # queues a request inside ``session.request``, where the wait would look like the backend's).
        self._slots = asyncio.Semaphore(limit)

    @classmethod
    def open(cls, *, limit_per_host: int, connect_timeout_s: float) -> AiohttpTransport:
        connector = aiohttp.TCPConnector(
            limit=limit_per_host,
            limit_per_host=limit_per_host,
            keepalive_timeout=15,  # below the common 30-75 s server keep-alive, to avoid reuse races
        )
        # the total budget is fan-out's (one timer per backend and request, see BackendRun.expire);
        # an aiohttp ``total`` would cost a timer and its bookkeeping per backend call
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s)
        session = aiohttp.ClientSession(
            connector=connector, timeout=timeout, raise_for_status=False, auto_decompress=True
        )
        return cls(session, limit_per_host)

    def slot(self) -> contextlib.AbstractAsyncContextManager[None]:
        return self._slots

    def request(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None
    ) -> contextlib.AbstractAsyncContextManager[Exchange]:
        return _AiohttpRequest(
            self.session.request(
                method,
                URL(url, encoded=True),  # (yarl need not parse and re-quote it)
                data=body,
                headers=headers,
                allow_redirects=False,
            )
        )

    async def close(self) -> None:
        await self.session.close()


# -- unit tests: in memory -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Canned:
    """One backend answer, in memory. ``delay_s`` passes (on the event loop's clock) and ``until``
    is waited for before the answer (or ``exception``) comes. ``cut_after``: the connection closes
    after that many bytes of the body (a ``TransportError``, as aiohttp's would be)."""

    body: bytes = b""
    status: int = 200
    headers: Mapping[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    until: asyncio.Event | None = None
    exception: BaseException | None = None  # raised instead of answering (e.g. a TransportError)
    cut_after: int | None = None


class Sent(NamedTuple):
    method: str
    url: str
    headers: Mapping[str, str]
    body: bytes | None


class _MemoryExchange:
    """The body is handed out as the network would: in chunks, one event-loop turn apart."""

    __slots__ = ("_at", "_canned")

    def __init__(self, canned: Canned) -> None:
        self._canned = canned
        self._at = 0  # how much of the body has been read

    @property
    def status(self) -> int:
        return self._canned.status

    @property
    def headers(self) -> Mapping[str, str]:
        return self._canned.headers

    async def read(self, cap: int) -> bytes:
        body, cut = self._canned.body, self._canned.cut_after
        if len(body) > cap and (cut is None or cut > cap):
            self._at = cap + 1
            raise BodyTooLarge(body[: self._at])
        if cut is not None and cut < len(body):
            raise TransportError(SourceStatus.ERROR, CUT_OFF)
        self._at = len(body)
        return body

    async def chunks(self) -> AsyncIterator[bytes]:
        body, cut = self._canned.body, self._canned.cut_after
        end = len(body) if cut is None else min(cut, len(body))
        while self._at < end:
            await asyncio.sleep(0)
            chunk = body[self._at : min(self._at + CHUNK_BYTES, end)]
            self._at += len(chunk)
            yield chunk
        if end < len(body):
            raise TransportError(SourceStatus.ERROR, CUT_OFF)


class MemoryTransport:
    """Answers from ``answers`` (URL → Canned, or plain bytes for a 200), ``default`` for any other
    URL (a 404, as a backend without that path); ``sent`` records every request, in the order sent.
    ``limit``: how many connection slots it has (None: as many as asked for); ``peak``: the most
    requests it has had out at once."""

    def __init__(
        self,
        answers: Mapping[str, Canned | bytes] | None = None,
        default: Canned | None = None,
        *,
        limit: int | None = None,
    ):
        self.answers: dict[str, Canned | bytes] = dict(answers or {})
        self.default = default if default is not None else Canned(b"", status=404)
        self.sent: list[Sent] = []
        self.closed = False
        self.peak = 0
        self._out = 0
        self._slots: contextlib.AbstractAsyncContextManager[Any] = (
            asyncio.Semaphore(limit) if limit is not None else contextlib.nullcontext()
        )

    def slot(self) -> contextlib.AbstractAsyncContextManager[None]:
        return self._slots

    @contextlib.asynccontextmanager
    async def request(
        self, method: str, url: str, *, headers: Mapping[str, str], body: bytes | None
    ) -> AsyncIterator[Exchange]:
        self.sent.append(Sent(method, url, dict(headers), body))
        self._out += 1
        self.peak = max(self.peak, self._out)
        try:
            canned = self.answers.get(url, self.default)
            if isinstance(canned, bytes):
                canned = Canned(canned)
            if canned.delay_s:
                await asyncio.sleep(canned.delay_s)
            if canned.until is not None:
                await canned.until.wait()
            if canned.exception is not None:
                raise canned.exception
            yield _MemoryExchange(canned)
        finally:
            self._out -= 1

    async def close(self) -> None:
        self.closed = True
