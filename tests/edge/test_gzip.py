"""gzip when the client accepts it (its q-values honoured), for answers above a small threshold."""

from __future__ import annotations

import gzip
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from proxy.edge.compression import SYNC_BYTES, compression
from tests.conftest import BASE, auth, pid

TOLVAN = "191212121212"


async def fetch(f: Any, path: str, accept_encoding: str | None) -> tuple[int, Any, bytes]:
    """The answer as sent (not decompressed by the client)."""
    headers = dict(auth("clinician"))
    skip = []
    if accept_encoding is None:
        skip.append("Accept-Encoding")
    else:
        headers["Accept-Encoding"] = accept_encoding
    async with aiohttp.ClientSession(auto_decompress=False) as bare:
        async with bare.get(f.client.make_url(path), headers=headers, skip_auto_headers=skip) as resp:
            return resp.status, resp.headers, await resp.read()


def records(bundle: dict[str, Any]) -> list[Any]:
    return [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "match"]


async def test_everything_is_gzipped_when_accepted_and_decodes_to_the_same_answer(edge: Any) -> None:
    path = f"{BASE}/Patient/{pid(TOLVAN)}/$everything"
    async with edge() as f:
        status, zipped_headers, zipped = await fetch(f, path, "gzip, deflate, br")
        plain_status, plain_headers, plain = await fetch(f, path, None)
    assert status == plain_status == 200
    assert zipped_headers["Content-Encoding"] == "gzip"
    assert "Accept-Encoding" in zipped_headers.get("Vary", "")
    assert int(zipped_headers["Content-Length"]) == len(zipped) < len(plain) / 3
    a, b = orjson.loads(gzip.decompress(zipped)), orjson.loads(plain)
    assert a["total"] == b["total"] > 20
    # the same records (the outcomes name each source's latency, which differs between the two)
    assert records(a) == records(b)
    assert "Content-Encoding" not in plain_headers
    assert "Accept-Encoding" in plain_headers.get("Vary", "")


@pytest.mark.parametrize(
    "accept", ["identity", "gzip;q=0", "deflate", "br", "gzip;q=0, identity", "x-gzip-not"]
)
async def test_identity_unless_gzip_is_accepted(edge: Any, accept: str) -> None:
    async with edge() as f:
        status, headers, body = await fetch(f, f"{BASE}/Patient/{pid(TOLVAN)}/$everything", accept)
    assert status == 200 and "Content-Encoding" not in headers
    assert orjson.loads(body)["resourceType"] == "Bundle"


@pytest.mark.parametrize("accept", ["GZIP", "gzip;q=0.5, identity;q=1", "*", "br;q=1, *;q=0.1"])
async def test_gzip_accepted_in_other_spellings(edge: Any, accept: str) -> None:
    async with edge() as f:
        status, headers, body = await fetch(f, f"{BASE}/Patient/{pid(TOLVAN)}/$everything", accept)
    assert status == 200 and headers["Content-Encoding"] == "gzip"
    assert orjson.loads(gzip.decompress(body))["resourceType"] == "Bundle"


async def test_a_small_answer_is_not_compressed(edge: Any) -> None:
    async with edge() as f:
        status, headers, body = await fetch(f, f"{BASE}/Patient/{pid('190101019800')}", "gzip")
    assert status in (404, 200) and len(body) < 1024
    assert "Content-Encoding" not in headers


async def test_compression_can_be_turned_off(edge: Any) -> None:
    async with edge(http={"gzip": False}) as f:
        status, headers, _ = await fetch(f, f"{BASE}/Patient/{pid(TOLVAN)}/$everything", "gzip")
    assert status == 200 and "Content-Encoding" not in headers


@pytest.mark.parametrize("size", [4 * 1024, SYNC_BYTES + 1])
async def test_an_answer_is_gzipped_whole_on_the_loop_or_off_it(size: int) -> None:
    """Both paths (small: on the event loop; over ``SYNC_BYTES``: in the executor) give one gzip
    member that decodes to the body, with its length and the coding in the headers."""
    body = orjson.dumps({"resourceType": "Bundle", "text": "x" * size})
    middleware = compression(min_bytes=1024)

    async def handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=body, content_type="application/fhir+json")

    request = make_mocked_request("GET", "/fhir/metadata", headers={"Accept-Encoding": "gzip"})
    response = await middleware(request, handler)
    assert isinstance(response, web.Response) and isinstance(response.body, bytes)
    assert response.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(response.body) == body and len(response.body) < len(body) / 10
