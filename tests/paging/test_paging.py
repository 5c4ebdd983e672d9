"""Paging in proportion to the page, over HTTP: the first page of a search or ``$everything`` keeps
its answer as a snapshot; the later pages are read from it without asking any backend, on any
worker, exactly the answer one unpaged request gives; a consent or block change, or the snapshot's
lifetime, ends it (410 Gone). The token probes by other askers: tests/redact/test_page_tokens.py."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest
import redis.asyncio as aioredis
from aiohttp.test_utils import TestClient

from proxy.app import create_app
from proxy.auth.demo import demo_issuer
from proxy.edge.http import STORE_KEY
from proxy.settings import DEMO_PATIENT_ID_KEY, Settings
from proxy.simulators.harness import Received, running_simulators
from proxy.simulators.population import LENNART, OTHER_REGION_PROVIDER, REGION_PROVIDER, TOLVAN, population
from tests.clock import FakeClock
from tests.conftest import (
    BASE,
    FacadeTestServer,
    Running,
    auth,
    consent_body,
    consent_to,
    pid,
    postgres_dsn,
    redis_url,
    reset_postgres,
)

LENNART_ID = pid(LENNART.pnr)
EVERYTHING = f"{BASE}/Patient/{LENNART_ID}/$everything"
OBSERVATIONS = f"{BASE}/Observation"
# where the snapshots live: the embedded store (SQLite), PostgreSQL, or the cache's Redis
STORES = ["sqlite", "postgres", "redis"]


def matches(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def outcomes(bundle: dict[str, Any]) -> list[bytes]:
    return [orjson.dumps(e["resource"]) for e in bundle.get("entry", []) if e["search"]["mode"] == "outcome"]


def link(bundle: dict[str, Any], relation: str) -> str | None:
    return next((lk["url"] for lk in bundle["link"] if lk["relation"] == relation), None)


def token_of(url: str) -> str | None:
    return dict(parse_qsl(urlsplit(url).query)).get("_page_token")


async def follow(f: Running, url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    parts = urlsplit(url)
    return await f.get(parts.path, params=parse_qsl(parts.query), headers=headers or {})


async def every_page(
    f: Running, path: str, params: dict[str, str], headers: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    """The first page and every page its next links lead to."""
    status, page = await f.get(path, params=params, headers=headers or {})
    assert status == 200, page
    pages = [page]
    while (nxt := link(page, "next")) is not None:
        assert len(pages) < 100
        status, page = await follow(f, nxt, headers)
        assert status == 200, page
        pages.append(page)
    return pages


def kind(store: str) -> dict[str, Any]:
    """The facade fixture's arguments for snapshots in ``store`` (Redis: the cache's store, the
    cache itself left off so that only the snapshots could spare the backends)."""
    if store == "redis":
        return {"cache": {"store": "redis", "redis_url": redis_url(), "enabled": False}}
    return {"store": store}


@pytest.mark.parametrize("store", STORES)
async def test_pages_after_the_first_ask_no_backend(facade: Any, store: str) -> None:
    received: list[Received] = []
    async with facade(received=received, **kind(store)) as f:
        status, first = await f.get(EVERYTHING, params={"_count": "7"})
        assert status == 200
        asked = len(received)
        assert asked >= 3  # the first page walked: every backend was asked
        pages = [first]
        while (nxt := link(pages[-1], "next")) is not None:
            status, page = await follow(f, nxt)
            assert status == 200, page
            pages.append(page)
        _, last = await follow(f, link(first, "last") or "")
        _, previous = await follow(f, link(pages[-1], "previous") or "")
    assert len(pages) >= 4
    assert len(received) == asked, "a later page asked a backend"
    assert matches(last) == matches(pages[-1]) and matches(previous) == matches(pages[-2])


@pytest.mark.parametrize("store", STORES)
async def test_a_paging_walk_is_the_unpaged_answer_in_order(facade: Any, store: str) -> None:
    async with facade(**kind(store)) as f:
        for path, params in (
            (EVERYTHING, {}),
            (OBSERVATIONS, {"patient": LENNART_ID}),
            (OBSERVATIONS, {"patient": LENNART_ID, "date": "ge2020"}),
        ):
            _, whole = await f.get(path, params={**params, "_count": "500"})
            expected = [(r["resourceType"], r["id"]) for r in matches(whole)]
            assert len(expected) > 20
            pages = await every_page(f, path, {**params, "_count": "6"})
            seen = [(r["resourceType"], r["id"]) for p in pages for r in matches(p)]
            assert seen == expected  # every resource once, in the unpaged order: no gap, no repeat
            assert [r for p in pages for r in matches(p)] == matches(whole)  # the same content
            assert {p["total"] for p in pages} == {len(expected)}
            # every page carries the first page's outcomes (source statuses), byte for byte
            assert all(outcomes(p) == outcomes(pages[0]) for p in pages)
            assert len(pages) == -(-len(expected) // 6)


async def test_links_carry_one_opaque_token_beside_the_search(facade: Any) -> None:
    async with facade() as f:
        _, first = await f.get(EVERYTHING, params={"_count": "5", "_type": "Observation,Condition"})
        _, again = await f.get(EVERYTHING, params={"_count": "5", "_type": "Observation,Condition"})
        _, alone = await f.get(EVERYTHING, params={"_count": "500"})  # one page: nothing kept
    token = token_of(link(first, "next") or "")
    assert token is not None and len(token) == 22  # 128 random bits, URL-safe base64
    assert LENNART.pnr not in token and LENNART_ID not in token
    for relation in ("self", "first", "next", "last"):
        url = urlsplit(link(first, relation) or "")
        assert url.path == EVERYTHING
        query = parse_qsl(url.query)
        assert ("_page_token", token) in query and ("_count", "5") in query
        assert ("_type", "Observation,Condition") in query
    assert ("_offset", "5") in parse_qsl(urlsplit(link(first, "next") or "").query)
    assert token_of(link(again, "next") or "") != token  # a new token for every first page
    assert all(token_of(lk["url"]) is None for lk in alone["link"])


async def test_a_page_size_other_than_the_first_pages_reads_the_same_snapshot(facade: Any) -> None:
    received: list[Received] = []
    async with facade(received=received) as f:
        _, whole = await f.get(EVERYTHING, params={"_count": "500"})
        asked = len(received)
        _, first = await f.get(EVERYTHING, params={"_count": "4"})
        asked_twice = len(received)
        url = urlsplit(link(first, "next") or "")
        params = [(k, v) for k, v in parse_qsl(url.query) if k not in ("_count", "_offset")]
        status, wider = await f.get(url.path, params=[*params, ("_count", "9"), ("_offset", "3")])
    assert status == 200
    assert len(received) == asked_twice == 2 * asked
    assert matches(wider) == matches(whole)[3:12]


@pytest.mark.parametrize("store", STORES)
async def test_a_snapshot_expires(facade: Any, store: str) -> None:
    clock = FakeClock()
    async with facade(clock=clock, paging={"snapshot_ttl_s": 60}, **kind(store)) as f:
        _, first = await f.get(EVERYTHING, params={"_count": "5"})
        nxt = link(first, "next") or ""
        clock.advance(59)
        assert (await follow(f, nxt))[0] == 200
        clock.advance(2)
        status, gone = await follow(f, nxt)
        made_up = urlsplit(nxt)._replace(query=urlsplit(nxt).query.replace(token_of(nxt) or "", "A" * 22))
        status_made_up, unknown = await follow(f, made_up.geturl())
    assert status == status_made_up == 410
    assert gone == unknown and gone["resourceType"] == "OperationOutcome"
    assert "expired or is unknown" in gone["issue"][0]["diagnostics"]


@pytest.mark.parametrize("store", STORES)
async def test_a_block_or_a_revoked_consent_ends_the_patients_snapshots(facade: Any, store: str) -> None:
    lennart = {**auth("patient", pnr=LENNART.pnr), "Content-Type": "application/fhir+json"}
    async with facade(**kind(store)) as f:
        _, before = await f.get(EVERYTHING, params={"_count": "5"})
        _, tolvans = await f.get(f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything", params={"_count": "5"})
        nxt = link(before, "next") or ""
        assert (await follow(f, nxt))[0] == 200
        block = consent_body(LENNART_ID, deny=True, custodians=(OTHER_REGION_PROVIDER,))
        resp = await f.client.post(f"{BASE}/Consent", json=block, headers=lennart)
        assert resp.status == 201
        assert (await follow(f, nxt))[0] == 410  # the block is in force for the pages at once
        assert (await follow(f, link(tolvans, "next") or ""))[0] == 200  # another patient's stay
        _, after = await f.get(EVERYTHING, params={"_count": "5"})
        assert after["total"] < before["total"]  # the block applies to the search run again
        # lifting it (the patient revokes the block) ends the snapshots made under it
        stored = orjson.loads(await resp.read())
        again = link(after, "next") or ""
        lifted = await f.client.put(
            f"{BASE}/Consent/{stored['id']}", json={**stored, "status": "inactive"}, headers=lennart
        )
        assert lifted.status == 200
        assert (await follow(f, again))[0] == 410


async def test_a_snapshot_ends_when_a_consent_it_was_made_under_does(facade: Any) -> None:
    """A consent that runs out in two minutes: the snapshot made under it lives two minutes, not
    its five, so no page shows what the consent no longer covers."""
    clock = FakeClock()
    end = datetime.fromtimestamp(clock.time() + 120, UTC).isoformat(timespec="seconds")
    consent = consent_body(LENNART_ID, recipient=REGION_PROVIDER, period={"end": end})
    async with facade(clock=clock, consent=False) as f:
        resp = await f.client.post(
            f"{BASE}/Consent", json=consent, headers={"Content-Type": "application/fhir+json"}
        )
        assert resp.status == 201
        _, first = await f.get(EVERYTHING, params={"_count": "5"})
        nxt = link(first, "next") or ""
        clock.advance(100)
        assert (await follow(f, nxt))[0] == 200
        clock.advance(22)
        assert (await follow(f, nxt))[0] == 410


async def test_a_snapshot_made_by_a_walk_that_read_the_old_consents_is_never_served(
    facade: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race: a first page's walk reads the consents, a block is written and the snapshots
    dropped, and only then does the walk store its snapshot. Its generation is the old one: never
    served."""
    import proxy.pipeline.stages as stages

    lennart = {**auth("patient", pnr=LENNART.pnr), "Content-Type": "application/fhir+json"}
    async with facade() as f:
        real_keep = stages.paging.keep

        async def block_first(*args: Any, **kw: Any) -> None:
            block = consent_body(LENNART_ID, deny=True, custodians=(OTHER_REGION_PROVIDER,))
            resp = await f.client.post(f"{BASE}/Consent", json=block, headers=lennart)
            assert resp.status == 201
            await real_keep(*args, **kw)

        monkeypatch.setattr(stages.paging, "keep", block_first)
        _, first = await f.get(EVERYTHING, params={"_count": "5"})
        monkeypatch.setattr(stages.paging, "keep", real_keep)
        status, _ = await follow(f, link(first, "next") or "")
    assert status == 410


async def test_every_page_is_an_access_logged_as_before(facade: Any) -> None:
    """Each page served is one AuditEvent (what it disclosed), and the patient's own view of the
    access log shows each one, as when every page walked."""
    me = auth("patient", pnr=LENNART.pnr)
    async with facade() as f:
        pages = await every_page(f, EVERYTHING, {"_count": "8"})
        own = await every_page(f, EVERYTHING, {"_count": "8"}, headers=me)
        events = await f.client.server.app[STORE_KEY].all_audit_events()
        status, log = await f.get(f"{BASE}/AuditEvent", params={"patient": LENNART_ID}, headers=me)
    assert status == 200 and log["total"] == len(pages) + len(own) == len(events)
    assert all(e["subtype"][0]["code"] == "everything" and e["outcome"] == "0" for e in events)
    disclosed = [
        sum(int(d["valueString"]) for d in e["entity"][1]["detail"] if d["type"].startswith("disclosed:"))
        for e in events
    ]
    assert disclosed == [len(matches(p)) for p in [*pages, *own]]


async def test_without_snapshots_every_page_walks_again(facade: Any) -> None:
    received: list[Received] = []
    async with facade(received=received, paging={"snapshots": False}) as f:
        _, first = await f.get(EVERYTHING, params={"_count": "7"})
        asked = len(received)
        nxt = link(first, "next") or ""
        status, _ = await follow(f, nxt)
    assert status == 200 and token_of(nxt) is None and ("_offset", "7") in parse_qsl(urlsplit(nxt).query)
    assert len(received) == 2 * asked


async def test_a_store_that_cannot_keep_the_snapshot_leaves_offset_links(facade: Any) -> None:
    async with facade(cache={"store": "redis", "redis_url": "redis://127.0.0.1:9/0", "enabled": False}) as f:
        status, first = await f.get(EVERYTHING, params={"_count": "7"})
        nxt = link(first, "next") or ""
        status_next, second = await follow(f, nxt)
    assert status == status_next == 200 and token_of(nxt) is None
    assert len(matches(second)) == 7


# ---- two workers, one shared store ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def two_workers(
    settings: Settings, tmp_path: Path, store: str
) -> AsyncIterator[tuple[Running, Running]]:
    """Two facade apps (as two workers or hosts) over one store and one set of simulators."""
    if store == "postgres":
        await reset_postgres()
    people = population(0, settings.simulators.seed)
    async with running_simulators(settings, people) as urls:
        live = settings.with_backend_urls(urls)
        live = replace(live, engagement=replace(live.engagement, enabled=False))
        if store == "redis":
            live = replace(
                live, cache=replace(live.cache, enabled=False, store="redis", redis_url=redis_url())
            )
            kind, dsn = "sqlite", live.store.postgres_dsn  # (each worker its own SQLite: only Redis shared)
        else:
            live = replace(live, cache=replace(live.cache, enabled=False))
            kind, dsn = "postgres", postgres_dsn()
        running = []
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(2):
                sqlite = tmp_path / f"worker-{uuid.uuid4().hex}.sqlite"
                app = create_app(
                    replace(live, store=replace(live.store, kind=kind, postgres_dsn=dsn, sqlite_path=sqlite)),
                    patient_id_key=DEMO_PATIENT_ID_KEY,
                    extra_issuer=demo_issuer(),
                )
                client = await stack.enter_async_context(
                    TestClient(FacadeTestServer(app), headers=auth("clinician"))
                )
                running.append(Running(client, urls))
            await consent_to(running[0].client.server.app[STORE_KEY], [p.pnr for p in people])
            if store == "redis":
                await consent_to(running[1].client.server.app[STORE_KEY], [p.pnr for p in people])
            yield running[0], running[1]


@pytest.mark.parametrize("store", ["postgres", "redis"])
async def test_a_page_kept_by_one_worker_is_read_by_another_and_dropped_for_both(
    settings: Settings, tmp_path: Path, store: str
) -> None:
    async with two_workers(settings, tmp_path, store) as (a, b):
        _, whole = await a.get(EVERYTHING, params={"_count": "500"})
        _, first = await a.get(EVERYTHING, params={"_count": "6"})
        nxt = link(first, "next") or ""
        status, second = await follow(b, nxt)
        assert status == 200 and matches(second) == matches(whole)[6:12]
        block = consent_body(LENNART_ID, deny=True, custodians=(OTHER_REGION_PROVIDER,))
        lennart = {**auth("patient", pnr=LENNART.pnr), "Content-Type": "application/fhir+json"}
        resp = await a.client.post(f"{BASE}/Consent", json=block, headers=lennart)
        assert resp.status == 201
        assert (await follow(b, nxt))[0] == 410  # dropped through the shared store: at once, everywhere
        assert (await follow(a, nxt))[0] == 410


async def test_redis_holds_the_snapshot_compact_and_expiring(facade: Any) -> None:
    client = aioredis.from_url(redis_url())
    try:
        async with facade(**kind("redis")) as f:
            _, whole = await f.get(EVERYTHING, params={"_count": "500"})
            await f.get(EVERYTHING, params={"_count": "5"})
            keys = [k.decode() for k in await client.keys("fhir-facade:pages:v1:*:page:*")]
            assert keys
            sizes = [sum(len(v) for v in (await client.hgetall(k)).values()) for k in keys]
            ttls = [await client.pttl(k) for k in keys]
    finally:
        await client.aclose()
    assert all(0 < t <= 300_000 for t in ttls)
    assert min(sizes) < len(orjson.dumps(matches(whole))) / 2  # compressed
    assert all(LENNART.pnr not in k for k in keys)
