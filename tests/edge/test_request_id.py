"""X-Request-ID on every response — errors too — and on to the backends, with a W3C traceparent."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import uuid
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy import trace
from proxy.edge import routes
from proxy.edge.http import EXCHANGE_KEY, STORE_KEY, exchange
from proxy.edge.request_id import request_ids
from proxy.simulators.harness import Received, serving
from tests.conftest import BASE, auth, pid

TOLVAN = "191212121212"
MINTED = re.compile(r"^[0-9a-f]{32}$")
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-01$")


async def test_every_answer_carries_a_request_id_errors_too(
    edge: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.CRITICAL, logger="proxy.edge.routes")  # (the 500's traceback)
    async with edge() as f:
        ok = await f.client.get(f"{BASE}/metadata")
        unauthorised = await f.client.get(f"{BASE}/Patient/{pid(TOLVAN)}")
        unknown_path = await f.client.get("/no/such/thing")  # (401 before routing, as ever)
        not_found = await f.client.get(f"{BASE}/Patient/{pid(TOLVAN)}/$nothing", headers=auth("clinician"))
        not_allowed = await f.client.delete(f"{BASE}/metadata")

        def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("a defect")

        monkeypatch.setattr(routes, "capability_statement", broken)
        failed = await f.client.get(f"{BASE}/metadata")
        server = f.client.server
        malformed = await raw_exchange(server.host, server.port, b"GET /fhir/metadata HTTP/9.9\r\n\r\n")
    statuses = [r.status for r in (ok, unauthorised, unknown_path, not_found, not_allowed, failed)]
    assert statuses == [200, 401, 401, 404, 405, 500]
    for resp in (ok, unauthorised, unknown_path, not_found, not_allowed, failed):
        assert MINTED.match(resp.headers.get("X-Request-ID", "")), (resp.status, dict(resp.headers))
    assert malformed[0] == 400 and MINTED.match(malformed[1].get("x-request-id", "")), malformed
    ids = {r.headers["X-Request-ID"] for r in (ok, unauthorised, unknown_path, not_found, failed)}
    assert len(ids) == 5  # one per request


async def raw_exchange(host: str, port: int, data: bytes) -> tuple[int, dict[str, str]]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    head = answer.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
    return int(head[0].split()[1]), headers


@pytest.mark.parametrize(
    "given",
    [
        "x" * 129,  # too long
        "a b",  # a space
        "<script>alert(1)</script>",
        "id\u00e9",  # not ASCII
        "",
        "." * 128,  # nothing but punctuation
        "-rf",
        "../../etc/passwd",
    ],
)
async def test_an_unusable_client_request_id_is_replaced(edge: Any, given: str) -> None:
    async with edge() as f:
        resp = await f.client.get(f"{BASE}/metadata", headers={"X-Request-ID": given})
    assert resp.status == 200
    assert MINTED.match(resp.headers["X-Request-ID"]) and resp.headers["X-Request-ID"] != given


@pytest.mark.parametrize(
    "given", ["req-42", "0f3c2a9e-1b2c-4d5e-8f90-a1b2c3d4e5f6", "A" * 128, "ab:cd.ef_gh"]
)
async def test_a_sane_client_request_id_is_echoed_on_success_and_on_errors(edge: Any, given: str) -> None:
    async with edge() as f:
        ok = await f.client.get(f"{BASE}/metadata", headers={"X-Request-ID": given})
        refused = await f.client.get(f"{BASE}/Patient/{pid(TOLVAN)}", headers={"X-Request-ID": given})
    assert (ok.status, refused.status) == (200, 401)
    assert ok.headers["X-Request-ID"] == given and refused.headers["X-Request-ID"] == given


async def test_a_request_id_or_traceparent_sent_twice_is_replaced(edge: Any) -> None:
    """Two values are ambiguous (a proxy in between may have read the other): neither is used."""
    received: list[Received] = []
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    twice = [
        ("X-Request-ID", "req-a"),
        ("X-Request-ID", "req-b"),
        ("traceparent", f"00-{trace}-00f067aa0ba902b7-01"),
        ("traceparent", f"00-{trace}-00f067aa0ba902b8-01"),
        *auth("clinician").items(),
    ]
    async with edge(received=received) as f:
        resp = await f.client.get(f"{BASE}/Patient/{pid(TOLVAN)}/$everything", headers=twice)
    assert resp.status == 200
    rid = resp.headers["X-Request-ID"]
    assert MINTED.match(rid)
    assert received and all(r.headers["X-Request-ID"] == rid for r in received)
    assert all(trace not in r.headers["traceparent"] for r in received)


async def test_every_backend_is_sent_the_request_id_and_a_traceparent_of_one_trace(edge: Any) -> None:
    received: list[Received] = []
    async with edge(received=received) as f:
        resp = await f.client.get(
            f"{BASE}/Patient/{pid(TOLVAN)}/$everything",
            headers={**auth("clinician"), "X-Request-ID": "req-trace-1"},
        )
        assert resp.status == 200
    assert {r.backend for r in received} == {"cosmic", "viva", "npo"}
    assert all(r.headers.get("X-Request-ID") == "req-trace-1" for r in received), received
    parsed = [TRACEPARENT.match(r.headers.get("traceparent", "")) for r in received]
    assert all(parsed), [r.headers.get("traceparent") for r in received]
    traces = {m.group(1) for m in parsed if m}
    parents = [m.group(2) for m in parsed if m]
    assert len(traces) == 1 and traces != {"0" * 32}
    assert len(set(parents)) == len(parents) and "0" * 16 not in parents  # a fresh parent-id per call


async def test_an_incoming_traceparent_is_continued_and_a_minted_request_id_is_sent_on(edge: Any) -> None:
    received: list[Received] = []
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    async with edge(received=received) as f:
        resp = await f.client.get(
            f"{BASE}/Patient/{pid(TOLVAN)}/$everything",
            headers={**auth("clinician"), "traceparent": f"00-{trace}-00f067aa0ba902b7-01"},
        )
        assert resp.status == 200
    rid = resp.headers["X-Request-ID"]
    assert MINTED.match(rid)
    assert {r.backend for r in received} == {"cosmic", "viva", "npo"}
    for r in received:
        m = TRACEPARENT.match(r.headers.get("traceparent", ""))
        assert m and m.group(1) == trace and m.group(2) != "00f067aa0ba902b7"
        assert r.headers.get("X-Request-ID") == rid


@pytest.mark.parametrize(
    "bad",
    [
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # an all-zero trace-id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # an all-zero parent-id
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # version 00 has no more
        "garbage",
    ],
)
async def test_an_invalid_traceparent_starts_a_new_trace(edge: Any, bad: str) -> None:
    received: list[Received] = []
    async with edge(received=received) as f:
        resp = await f.client.get(
            f"{BASE}/Patient/{pid(TOLVAN)}/$everything", headers={**auth("clinician"), "traceparent": bad}
        )
        assert resp.status == 200
    traces = {m.group(1) for r in received if (m := TRACEPARENT.match(r.headers.get("traceparent", "")))}
    assert len(traces) == 1 and traces.pop() not in bad.lower()


async def test_the_access_log_names_the_id_the_answer_carries(edge: Any) -> None:
    """The audit event and the answer name one id (the edge's), not one each."""
    async with edge() as f:
        resp = await f.client.get(f"{BASE}/Patient/{pid(TOLVAN)}/$everything", headers=auth("clinician"))
        refused = await f.client.get(
            f"{BASE}/Patient/{pid(TOLVAN)}/$everything?_count=x", headers=auth("clinician")
        )
        logged = await f.client.server.app[STORE_KEY].all_audit_events()
    assert resp.status == 200 and refused.status == 400
    ids = {
        e["what"]["identifier"]["value"]
        for event in logged
        for e in event["entity"]
        if e.get("type", {}).get("code") == "XrequestId"
    }
    assert ids == {resp.headers["X-Request-ID"], refused.headers["X-Request-ID"]}


def test_an_id_that_could_hold_a_personnummer_is_never_kept_or_minted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The id is echoed, audited and written to the access log, which never hold a personnummer: a
    client id with a run of ten or more digits (a personnummer has 10 or 12) is replaced, and a minted
    one never has such a run (a random hex id has one about once in twenty)."""
    for given in ("191212121212", "req-1912121212-x", "20121212-1212x1212121212"):
        assert trace.sane_request_id(given) is None, given
    assert trace.sane_request_id("req-123456789-x") == "req-123456789-x"  # nine digits: kept
    digits, letters = uuid.UUID("12345678901234567890abcdefabcdef"), uuid.UUID("a1b2c3d4" * 4)
    drawn = iter([digits, letters])
    monkeypatch.setattr(trace.uuid, "uuid4", lambda: next(drawn))
    assert trace.mint_request_id() == letters.hex


def test_workers_forked_from_one_parent_draw_different_parent_ids() -> None:
    """``serve --workers N`` forks its workers: each must draw its own parent-ids, not the parent's."""
    parent = trace.Trace("req", "4bf92f3577b34da6a3ce929d0e0e4736")
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the worker: its first parent-id, to the test
        os.write(write, parent.outgoing()["traceparent"].encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    childs = os.read(read, 100).decode()
    os.close(read)
    assert TRACEPARENT.match(childs) and childs != parent.outgoing()["traceparent"]


async def test_a_request_lets_go_of_its_working_state_once_answered() -> None:
    """aiohttp holds a request until its connection's next one: an idle keep-alive connection would
    keep the last answer's records (a long history: 100 MB) if the request still held its Exchange."""
    seen: list[web.Request] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        exchange(request).resources = [{"resourceType": "Observation", "id": "o1"}]
        seen.append(request)
        return web.Response(text="ok")

    app = web.Application(middlewares=[request_ids])
    app.router.add_get("/x", handler)
    async with serving(app) as base, aiohttp.ClientSession() as http:
        async with http.get(f"{base}/x") as resp:
            assert resp.status == 200 and resp.headers["X-Request-ID"]
        assert seen and EXCHANGE_KEY not in seen[0]  # (the connection is still open)
