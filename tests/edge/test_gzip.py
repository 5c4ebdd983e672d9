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
from proxy.edge.http import STREAM_ENTRIES, fhir_response
from proxy.simulators.harness import serving
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


# ---- a long Bundle: written a slice of entries at a time ----------------------------------------


def long_bundle(entries: int) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": entries,
        "link": [{"relation": "self", "url": "https://facade.example/fhir/Observation"}],
        "entry": [
            {
                "fullUrl": f"https://facade.example/fhir/Observation/o{n}",
                "resource": {"resourceType": "Observation", "id": f"o{n}", "valueString": "å" * (n % 7)},
                "search": {"mode": "match"},
            }
            for n in range(entries)
        ],
    }


async def serve_bundle(bundle: dict[str, Any], accept: str | None, pretty: bool = False) -> tuple[Any, bytes]:
    """``bundle`` answered by a handler through the edge's gzip middleware; the headers and the bytes
    as sent."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return fhir_response(bundle, pretty=pretty)

    app = web.Application(middlewares=[compression(min_bytes=1024)])
    app.router.add_get("/fhir/Observation", handler)
    skip = ["Accept-Encoding"] if accept is None else []
    headers = {"Accept-Encoding": accept} if accept is not None else {}
    async with serving(app) as base, aiohttp.ClientSession(auto_decompress=False) as http:
        async with http.get(f"{base}/fhir/Observation", headers=headers, skip_auto_headers=skip) as resp:
            assert resp.status == 200
            return resp.headers, await resp.read()


@pytest.mark.parametrize("accept", ["gzip", None])
async def test_a_long_bundle_is_written_in_slices_as_the_bytes_of_the_whole(accept: str | None) -> None:
    """More than ``STREAM_ENTRIES`` entries: sent chunked (a cut-off answer is told from a whole one),
    gzipped as it is written when accepted — the same bytes ``orjson.dumps`` makes of the whole."""
    bundle = long_bundle(STREAM_ENTRIES * 3 + 17)
    headers, body = await serve_bundle(bundle, accept)
    assert headers.get("Transfer-Encoding") == "chunked" and "Content-Length" not in headers
    assert headers["Content-Type"] == "application/fhir+json; charset=utf-8"
    assert "Accept-Encoding" in headers.get("Vary", "")
    if accept == "gzip":
        assert headers["Content-Encoding"] == "gzip"
        body = gzip.decompress(body)
    else:
        assert "Content-Encoding" not in headers
    assert body == orjson.dumps(bundle)


async def test_a_short_or_pretty_bundle_is_written_whole() -> None:
    headers, body = await serve_bundle(long_bundle(STREAM_ENTRIES), None)
    assert int(headers["Content-Length"]) == len(body) and body == orjson.dumps(long_bundle(STREAM_ENTRIES))
    bundle = long_bundle(STREAM_ENTRIES + 1)
    headers, body = await serve_bundle(bundle, None, pretty=True)
    assert int(headers["Content-Length"]) == len(body)
    assert body == orjson.dumps(bundle, option=orjson.OPT_INDENT_2)
