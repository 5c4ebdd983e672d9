"""Bad input never echoes: requests aiohttp cannot parse — below every route and middleware — and
the routes' own refusals answer an OperationOutcome with a fixed text, never a byte of the request
(a header, a bearer token, a method name), and log the kind of error only.

Sent over raw sockets (asyncio.open_connection) to the test server, which runs the app as
``serve`` and ``demo`` do (``proxy.edge.server.FacadeRunner``).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import pytest

from tests.conftest import BASE, auth

TOKEN = b"Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ2aWN0aW0tc2VjcmV0In0.c2lnbmF0dXJlLXNlY3JldA"
SECRET = b"s3cr3t-Fragment-0xC0FFEE"
HOST = b"Host: 127.0.0.1\r\n"

# name → (bytes sent, the bytes that must not come back)
MALFORMED: dict[str, tuple[bytes, bytes]] = {
    "not HTTP at all": (b"\x16\x03\x01\x02\x00" + SECRET + b"\r\n\r\n", SECRET),
    "a method with markup": (
        b"G<script>" + SECRET + b"</script>T " + BASE.encode() + b"/metadata HTTP/1.1\r\n" + HOST + b"\r\n",
        b"<script>" + SECRET,
    ),
    "a header over max_field_size carrying a token": (
        b"GET "
        + BASE.encode()
        + b"/metadata HTTP/1.1\r\n"
        + HOST
        + b"Authorization: "
        + TOKEN
        + b"A" * 9000
        + b"\r\n\r\n",
        TOKEN,
    ),
    "a request line over max_line_size": (
        b"GET "
        + BASE.encode()
        + b"/metadata?access_token="
        + TOKEN[7:]
        + b"B" * 9000
        + b" HTTP/1.1\r\n"
        + HOST
        + b"\r\n",
        TOKEN[7:],
    ),
    "a control character in a header": (
        b"GET " + BASE.encode() + b"/metadata HTTP/1.1\r\n" + HOST + b"X-Note: a\x01" + SECRET + b"\r\n\r\n",
        SECRET,
    ),
    "a bad chunk size": (
        b"POST "
        + BASE.encode()
        + b"/Consent HTTP/1.1\r\n"
        + HOST
        + b"Authorization: "
        + TOKEN
        + b"\r\n"
        + b"Content-Type: application/fhir+json\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"zz"
        + SECRET
        + b"\r\n{}\r\n0\r\n\r\n",
        SECRET,
    ),
    "an invalid Content-Length": (
        b"POST "
        + BASE.encode()
        + b"/Consent HTTP/1.1\r\n"
        + HOST
        + b"Content-Length: 12"
        + SECRET
        + b"\r\n\r\n",
        SECRET,
    ),
    "an unknown HTTP version": (
        b"GET " + BASE.encode() + b"/metadata HTTP/9." + SECRET + b"\r\n" + HOST + b"\r\n",
        SECRET,
    ),
    "an HTTP/2 preface": (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SECRET, SECRET),
}


async def exchange(server: Any, data: bytes) -> tuple[int, dict[str, str], bytes, bytes]:
    """Send raw bytes, read until the server closes: (status, headers, body, the whole answer)."""
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(data)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, body, answer


def assert_fixed_outcome(status: int, headers: dict[str, str], body: bytes, expected: int) -> str:
    assert status == expected
    assert headers["content-type"].startswith("application/fhir+json")
    outcome = orjson.loads(body)
    assert outcome["resourceType"] == "OperationOutcome"
    (issue,) = outcome["issue"]
    assert issue["severity"] == "error" and issue["code"]
    return str(issue["diagnostics"])


def windows(secret: bytes, size: int = 6) -> list[bytes]:
    return [secret[i : i + size] for i in range(len(secret) - size + 1)]


@pytest.mark.parametrize("case", list(MALFORMED))
async def test_a_malformed_request_gets_an_outcome_that_echoes_nothing(
    facade: Any, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    sent, secret = MALFORMED[case]
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    caplog.set_level(logging.DEBUG, logger="proxy")
    async with facade() as f:
        status, headers, body, answer = await exchange(f.client.server, sent)
    text = assert_fixed_outcome(status, headers, body, 400)
    assert text in {
        "The request is not valid HTTP/1.1",
        "The request line is not valid HTTP/1.1",
        "A request line or header field is longer than this server accepts",
        "A request header is not valid HTTP/1.1",
        "The request body's encoding (chunked, Content-Length or compression) is not valid",
        "The request target is not a valid URL",
    }
    for piece in windows(secret):
        assert piece not in answer, f"{piece!r} echoed"
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records)
    for piece in windows(secret):
        assert piece.decode("latin-1") not in logged, f"{piece!r} logged"


async def test_a_body_that_breaks_off_or_does_not_decode_is_400(facade: Any) -> None:
    """A gzip body that is not gzip: the client's error (400), not the facade's (was 500)."""
    garbage = b"not gzip at all " + SECRET
    async with facade() as f:
        resp = await f.client.post(
            f"{BASE}/Consent",
            data=garbage,
            headers={"Content-Type": "application/fhir+json", "Content-Encoding": "gzip"},
        )
        raw = await resp.read()
    assert_fixed_outcome(resp.status, {k.lower(): v for k, v in resp.headers.items()}, raw, 400)
    assert SECRET not in raw


async def test_405_does_not_echo_the_method(facade: Any) -> None:
    async with facade() as f:
        for method in ("DELETE", "PROPFIND", "PATCH"):
            resp = await f.client.request(method, f"{BASE}/metadata")
            raw = await resp.read()
            text = assert_fixed_outcome(
                resp.status, {k.lower(): v for k, v in resp.headers.items()}, raw, 405
            )
            assert method.encode() not in raw and text == "This method is not allowed here"
            assert resp.headers["Allow"] == "GET,HEAD"


async def test_a_body_over_the_limit_is_413_with_a_fixed_text(facade: Any) -> None:
    body = b'{"resourceType": "Consent", "x": "' + SECRET * 4000 + b'"}'
    async with facade() as f:
        resp = await f.client.post(
            f"{BASE}/Consent",
            data=body,
            headers={"Content-Type": "application/fhir+json", **auth("clinician")},
        )
        raw = await resp.read()
    assert_fixed_outcome(resp.status, {k.lower(): v for k, v in resp.headers.items()}, raw, 413)
    assert SECRET not in raw and b"65536" not in raw
