"""/healthz (alive) and /readyz (store reachable, mappings loaded; breakers reported, never failing
readiness): at the server root, outside the FHIR base path and outside authentication, patient-free."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import orjson

from proxy.edge.http import FACADE_KEY, STORE_KEY
from tests.conftest import BASE, auth, pid

TOLVAN = "191212121212"


def patient_free(raw: bytes) -> None:
    text = raw.decode()
    assert not re.search(r"\d{12}", text), text  # no personnummer
    assert "http://" not in text and "https://" not in text and "@" not in text  # no backend URLs/DSNs


async def test_healthz_and_readyz_answer_without_a_token_at_the_server_root(edge: Any) -> None:
    async with edge() as f:
        alive = await f.client.get("/healthz")
        alive_raw = await alive.read()
        ready = await f.client.get("/readyz")
        ready_raw = await ready.read()
        under_fhir = await f.client.get(f"{BASE}/healthz")  # not a FHIR endpoint: auth as ever
        head = await f.client.head("/readyz")
    assert alive.status == 200 and orjson.loads(alive_raw) == {"status": "alive"}
    assert ready.status == 200, ready_raw
    body = orjson.loads(ready_raw)
    assert body["status"] == "ready"
    assert body["checks"] == {"store": "ok", "mappings": "ok"}
    assert set(body["backends"]) == {"cosmic", "viva", "npo"}
    assert all(b["breaker"] == "closed" for b in body["backends"].values())
    assert alive.headers["Cache-Control"] == "no-store" and ready.headers["Cache-Control"] == "no-store"
    patient_free(alive_raw)
    patient_free(ready_raw)
    assert under_fhir.status == 401
    assert head.status == 200


async def test_readyz_is_503_naming_the_store_when_its_audit_writer_has_stopped(edge: Any) -> None:
    """Nothing can be disclosed without the access log: not ready, and it says which check failed."""
    async with edge() as f:
        store = f.client.server.app[STORE_KEY]
        writer = store._writer
        store.submit_audit(object())  # the writer breaks on it and stops (as in tests/audit)
        await asyncio.wait({writer}, timeout=10)
        assert writer.done()
        resp = await f.client.get("/readyz")
        raw = await resp.read()
    assert resp.status == 503, raw
    body = orjson.loads(raw)
    assert body["status"] == "not ready"
    assert body["checks"]["store"] == "unreachable" and body["checks"]["mappings"] == "ok"
    patient_free(raw)


async def test_readyz_is_503_when_the_store_connection_is_gone(edge: Any) -> None:
    async with edge() as f:
        store = f.client.server.app[STORE_KEY]
        await store._db.close()  # (the database went away under the facade)
        resp = await f.client.get("/readyz")
        raw = await resp.read()
        await store._disconnect()  # (closed twice is fine; the app's cleanup closes it again)
    assert resp.status == 503 and orjson.loads(raw)["checks"]["store"] == "unreachable"


async def test_an_open_breaker_is_reported_but_the_facade_stays_ready(edge: Any) -> None:
    async with edge(faults={"viva": {"error_status": 500}}, breaker_failures=1) as f:
        resp = await f.client.get(f"{BASE}/Patient/{pid(TOLVAN)}/$everything", headers=auth("clinician"))
        assert resp.status == 200
        ready = await f.client.get("/readyz")
        body = orjson.loads(await ready.read())
        assert f.client.server.app[FACADE_KEY].clients["viva"].breaker.state == "open"
    assert ready.status == 200 and body["status"] == "ready"
    assert body["backends"]["viva"]["breaker"] == "open"
    assert body["backends"]["cosmic"]["breaker"] == "closed"


async def test_a_flood_of_readyz_asks_the_store_once(edge: Any) -> None:
    """/readyz is outside authentication, so anyone can call it: concurrent probes share one store
    ping, and a result is reused for READY_MEMO_S — a flood never becomes a flood of queries."""
    async with edge() as f:
        store = f.client.server.app[STORE_KEY]
        real, pings = store.ping, []

        async def counted() -> None:
            pings.append(1)
            await asyncio.sleep(0.05)  # (a ping that takes a while: the others arrive meanwhile)
            await real()

        store.ping = counted  # type: ignore[method-assign]
        answers = await asyncio.gather(*(f.client.get("/readyz") for _ in range(40)))
        again = await f.client.get("/readyz")
    assert [a.status for a in answers] == [200] * 40 and again.status == 200
    assert len(pings) == 1
