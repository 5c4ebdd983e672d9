"""The snapshot stores (proxy/paging.py ``SnapshotStore``): SQLite and PostgreSQL (a table in the
facade's store) and Redis each keep, read, expire, sweep and drop snapshots alike."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from proxy import paging
from proxy.store.base import SWEEP_EVERY_S, ConsentRow
from proxy.store.postgres import PostgresStore
from proxy.store.sqlite import SqliteStore
from proxy.types import SourceOutcome, SourceStatus, Withheld
from tests.conftest import postgres_dsn, redis_url, reset_postgres

NOW = 1_800_000_000.0
RESOURCES = [{"resourceType": "Observation", "id": f"o{i}", "valueString": "x" * 50} for i in range(23)]
OUTCOMES = [
    SourceOutcome("cosmic", SourceStatus.OK, "answered", 12.5),
    SourceOutcome("npo", SourceStatus.TIMEOUT, "no answer", 3000.0),
]


@pytest.fixture(params=["sqlite", "postgres", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "redis":
        redis = paging.RedisSnapshots(aioredis.from_url(redis_url()), prefix=f"test:{uuid.uuid4().hex}")
        yield redis
        await redis.close()
        return
    async with opened(request.param, tmp_path) as sql:
        yield sql


@pytest.fixture(params=["sqlite", "postgres"])
async def sql_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    async with opened(request.param, tmp_path) as sql:
        yield sql


@contextlib.asynccontextmanager
async def opened(kind: str, tmp_path: Path) -> AsyncIterator[Any]:
    if kind == "postgres":
        await reset_postgres()
        sql: Any = PostgresStore(postgres_dsn())
    else:
        sql = SqliteStore(tmp_path / "facade.sqlite")
    await sql.open()
    try:
        yield sql
    finally:
        await sql.close()


async def keep(
    store: Any, key: str, *, patient: str = "p1", generation: int = 0, expires: float = NOW + 300
) -> None:
    await paging.keep(
        store,
        key,
        patient=patient,
        generation=generation,
        resources=RESOURCES,
        chunk=5,
        outcomes=OUTCOMES,
        known=True,
        withheld={Withheld.BLOCKED},
        expires=expires,
        now=NOW,
    )


async def test_a_snapshot_is_read_back_part_by_part(store: Any) -> None:
    await keep(store, "k1")
    page = await paging.read(store, "k1", patient="p1", offset=10, count=5, now=NOW + 1)
    assert page is not None
    assert page.resources == RESOURCES[10:15] and page.start == 10 and page.size == 23
    assert page.outcomes == OUTCOMES and page.known is True and page.withheld == {Withheld.BLOCKED}
    last = await paging.read(store, "k1", patient="p1", offset=20, count=5, now=NOW + 1)
    assert last is not None and last.resources == RESOURCES[20:]
    # another page size than the snapshot's parts: the parts that hold it
    wide = await paging.read(store, "k1", patient="p1", offset=3, count=9, now=NOW + 1)
    assert wide is not None and wide.resources[3 - wide.start : 12 - wide.start] == RESOURCES[3:12]
    counted = await paging.read(store, "k1", patient="p1", offset=0, count=0, now=NOW + 1)
    assert counted is not None and counted.resources == [] and counted.size == 23
    beyond = await paging.read(store, "k1", patient="p1", offset=40, count=5, now=NOW + 1)
    assert beyond is not None and beyond.resources == []


async def test_unknown_expired_and_half_written_snapshots_are_not_found(store: Any) -> None:
    await keep(store, "k1", expires=NOW + 60)
    assert await paging.read(store, "k1", patient="p1", offset=0, count=5, now=NOW + 59) is not None
    assert await paging.read(store, "k1", patient="p1", offset=0, count=5, now=NOW + 60) is None
    assert await paging.read(store, "nope", patient="p1", offset=0, count=5, now=NOW) is None
    await store.put_snapshot("half", "p1", [(0, b"x"), (1, b"y")], expires=NOW + 60, now=NOW)  # no header
    assert await paging.read(store, "half", patient="p1", offset=0, count=5, now=NOW) is None


async def test_dropping_a_patients_snapshots_moves_the_generation_on(store: Any) -> None:
    await keep(store, "a")
    await keep(store, "b", patient="p2")
    assert await store.snapshot_generation("p1") == 0
    await store.drop_snapshots("p1")
    assert await store.snapshot_generation("p1") == 1 and await store.snapshot_generation("p2") == 0
    assert await paging.read(store, "a", patient="p1", offset=0, count=5, now=NOW) is None
    assert await paging.read(store, "b", patient="p2", offset=0, count=5, now=NOW) is not None


async def test_a_snapshot_of_an_older_generation_is_never_served(store: Any) -> None:
    """Made by a walk that read the generation (and the consents) before a change, stored after it."""
    generation = await store.snapshot_generation("p1")
    await store.drop_snapshots("p1")
    await keep(store, "late", generation=generation)
    assert await paging.read(store, "late", patient="p1", offset=0, count=5, now=NOW) is None
    await keep(store, "fresh", generation=await store.snapshot_generation("p1"))
    assert await paging.read(store, "fresh", patient="p1", offset=0, count=5, now=NOW) is not None


async def test_expired_rows_are_swept_on_a_later_write(store: Any) -> None:
    if isinstance(store, paging.RedisSnapshots):
        await keep(store, "k1", expires=NOW + 60)
        assert 0 < await store.client.pttl(store._page("k1")) <= 60_000  # Redis expires it itself
        return
    await keep(store, "old", expires=NOW + 60)
    await keep(store, "new", expires=NOW + SWEEP_EVERY_S + 400)
    later = NOW + SWEEP_EVERY_S + 1
    await store.put_snapshot("newer", "p1", [(paging.HEADER, b"{}")], expires=later + 300, now=later)
    keys = await _keys(store)
    assert "old" not in keys and {"new", "newer"} <= keys


async def _keys(store: Any) -> set[str]:
    if isinstance(store, SqliteStore):
        return {k for (k,) in await store._fetch("SELECT DISTINCT key FROM page_snapshot")}
    return {r[0] for r in await store._fetch("SELECT DISTINCT key FROM page_snapshot")}


async def test_the_consents_are_read_with_the_generation_they_were_read_at(sql_store: Any) -> None:
    """``Store.consents_at``: one statement, so a consent changed after it is a later generation."""
    store = sql_store
    assert await store.consents_at("191212121212", "p1") == ([], 0)
    rows = [
        ConsentRow(f"c{i}", "191212121212", "active", 1, {"resourceType": "Consent", "id": f"c{i}"})
        for i in range(2)
    ]
    for row in rows:
        await store.add_consent(row)
    await store.add_consent(ConsentRow("other", "201212121212", "active", 1, {"resourceType": "Consent"}))
    await store.drop_snapshots("p1")
    await store.drop_snapshots("p1")
    assert await store.consents_at("191212121212", "p1") == (rows, 2)
    assert await store.consents_at("191212121212", "p2") == (rows, 0)
    assert await store.consents_at("191212121213", "p1") == ([], 2)
    assert await store.consents("191212121212") == rows
