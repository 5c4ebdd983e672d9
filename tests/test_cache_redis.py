"""The shared cache in a real Redis: the test session's own (tests/services.py), or the one
FHIR_FACADE_TEST_REDIS_URL names; the tests flush its database.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from proxy.app import open_cache
from proxy.cache import RedisCache
from proxy.fhir.ids import ResourceIds
from proxy.settings import CacheSettings
from proxy.simulators.population import TOLVAN
from proxy.types import MappedResource
from tests.conftest import BASE, pid, redis_url
from tests.source_status import source_issues, status_of

EVERYTHING = f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything"


@pytest.fixture
async def redis_db() -> AsyncIterator[Any]:
    client = aioredis.from_url(redis_url())
    await client.ping()  # no Redis is a failure here, not a skip: CI provides one
    await client.flushdb()
    yield client
    await client.flushdb()
    await client.aclose()


def outcomes(bundle: dict[str, Any]) -> dict[str, str]:
    """{source: severity} for every source that did not simply answer now"""
    return {
        name: issue["severity"]
        for name, issue in source_issues(bundle).items()
        if status_of(issue) != "answered"
    }


async def test_round_trip_keeps_every_field(redis_db: Any) -> None:
    cache = RedisCache(aioredis.from_url(redis_url()), ttl_s=30, max_stale_s=30)
    resource = MappedResource(
        resource={
            "resourceType": "Condition",
            "id": "x",
            "meta": {"security": [{"code": "NOPAT"}]},
            "subject": {"reference": "Patient/p"},
            "encounter": {"reference": "Encounter/e"},
        },
        source="npo",
        mapping="npo/diagnoses",
        origin_key="Condition|A|1",
        priority=2,
        refs=("Patient/p", "Encounter/e"),
        clinical_time=1_700_000_000.0,
        care_provider="SE1",
        care_unit="SE2",
    )
    await cache.put("npo", "POST /x", "pid", (resource,))
    got = await cache.get("npo", "POST /x", "pid")
    await cache.close()
    assert got is not None and got[1] is True
    assert got[0].resources == (resource,)
    assert 0 < await redis_db.pttl(next(iter(await redis_db.keys("*")))) <= 60_000  # Redis expires it


async def test_one_worker_fills_what_another_reuses(facade: Any, redis_db: Any) -> None:
    shared = {"store": "redis", "redis_url": redis_url()}
    async with facade(cache=shared) as first:
        _, cold = await first.get(EVERYTHING, params={"_count": "500"})
    async with facade(cache=shared) as second:  # another process or host, same Redis
        for name in ("cosmic", "viva", "npo"):
            await second.faults(name, error_status=503)
        _, warm = await second.get(EVERYTHING, params={"_count": "500"})
    assert outcomes(cold) == {}
    assert outcomes(warm) == {"cosmic": "information", "viva": "information", "npo": "information"}
    ids = [e["resource"]["id"] for e in cold["entry"] if e["search"]["mode"] == "match"]
    assert [e["resource"]["id"] for e in warm["entry"] if e["search"]["mode"] == "match"] == ids
    keys = [k.decode() for k in await redis_db.keys("*")]
    assert keys and all(TOLVAN.pnr not in k and "19121212" not in k for k in keys)  # no identity numbers


async def test_an_unreachable_redis_is_only_a_miss(facade: Any) -> None:
    async with facade(cache={"store": "redis", "redis_url": "redis://127.0.0.1:9/0"}) as f:
        status, bundle = await f.get(EVERYTHING, params={"_count": "500"})
    assert status == 200 and outcomes(bundle) == {}
    assert bundle["total"] > 30


async def test_entries_made_under_another_key_are_never_served(redis_db: Any) -> None:
    """Cached resources carry ids, which depend on the deployment's key: an entry stored under one
    key, or with the unkeyed ids of old (prefix v1), is a miss for a facade under another key."""
    settings = CacheSettings(store="redis", redis_url=redis_url())
    resource = MappedResource(
        resource={"resourceType": "Condition", "id": "p-cosmic-0011223344556677"},
        source="cosmic",
        mapping="cosmic/diagnoses",
        origin_key="Condition|A|1",
        priority=0,
        refs=(),
        clinical_time=None,
        care_provider=None,
        care_unit=None,
    )
    old = RedisCache(aioredis.from_url(redis_url()), ttl_s=30, max_stale_s=30)  # the v1 prefix
    await old.put("cosmic", "GET /d", "pid", (resource,))
    await old.close()
    first, same, other = (
        open_cache(settings, namespace=ResourceIds(key).fingerprint)
        for key in (b"a" * 32, b"a" * 32, b"b" * 32)
    )
    assert first is not None and same is not None and other is not None
    assert await first.get("cosmic", "GET /d", "pid") is None  # not the unkeyed entry
    await first.put("cosmic", "GET /d", "pid", (resource,))
    hit = await same.get("cosmic", "GET /d", "pid")  # another worker or host with the same key
    assert hit is not None and hit[0].resources == (resource,)
    assert await other.get("cosmic", "GET /d", "pid") is None
    for cache in (first, same, other):
        await cache.close()


def _changed_copy(tmp_path: Any, file: str, old: str, new: str) -> Any:
    """A copy of the deployment's mappings with one text in one file changed (a deploy)."""
    import shutil

    from proxy.settings import load_settings

    copy = tmp_path / "mappings-next"
    shutil.copytree(load_settings().mappings_dir, copy)
    path = copy / file
    text = path.read_text(encoding="utf-8")
    assert old in text
    path.write_text(text.replace(old, new), encoding="utf-8")
    return copy


def _codes(bundle: dict[str, Any], element: str) -> set[str]:
    return {
        c["code"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == "Condition"
        for c in e["resource"].get(element, {}).get("coding", [])
    }


@pytest.mark.parametrize(
    ("file", "old", "new", "element", "code"),
    [
        # a mapping changed: Cosmic's diagnoses are now provisional
        (
            "cosmic/diagnoses.yaml",
            "code: confirmed",
            "code: provisional",
            "verificationStatus",
            "provisional",
        ),
        # a terminology table changed: Cosmic's ACT state now maps to "recurrence"
        ("terminology/cosmic.yaml", "  ACT: active\n", "  ACT: recurrence\n", "clinicalStatus", "recurrence"),
    ],
)
async def test_a_deploy_with_changed_mappings_never_serves_the_old_output(
    facade: Any, redis_db: Any, tmp_path: Any, file: str, old: str, new: str, element: str, code: str
) -> None:
    """Two facades share one Redis; the second runs changed mappings (a deploy, same key). It must
    map the answers itself — never serve the entries the first made with the old mappings."""
    shared = {"store": "redis", "redis_url": redis_url()}
    changed = _changed_copy(tmp_path, file, old, new)
    async with facade(cache=shared) as first:
        _, before = await first.get(EVERYTHING, params={"_count": "500"})
    async with facade(cache=shared, mappings_dir=changed) as second:
        _, after = await second.get(EVERYTHING, params={"_count": "500"})
        _, again = await second.get(EVERYTHING, params={"_count": "500"})
    assert code not in _codes(before, element)
    assert code in _codes(after, element)  # the new mapping's output, not the cached old one
    assert outcomes(after).get("cosmic") is None  # cosmic was asked, not served from the cache
    # the viva and NPÖ mappings did not change: their entries are still shared
    assert outcomes(again) == {"cosmic": "information", "viva": "information", "npo": "information"}


async def test_entries_are_stored_compressed_and_read_back_identical(redis_db: Any) -> None:
    """What Redis holds is a compressed entry — a fraction of its JSON — and it reads back as the
    very resources put; an entry an older facade stored as plain JSON still reads."""
    resources = tuple(
        MappedResource(
            resource={
                "resourceType": "Observation",
                "id": f"o{i}",
                "code": {
                    "coding": [{"system": "urn:oid:1.2.752.108.1", "code": "NPU02319", "display": "B-Hb"}]
                },
                "valueQuantity": {"value": 120.5 + i, "unit": "g/L"},
                "note": [{"text": 'Provsvar — ünïcödé, "citat"'}],
                "subject": {"reference": "Patient/p"},
            },
            source="npo",
            mapping="npo/laboratory-outcomes",
            origin_key=f"Observation|S|{i}",
            priority=2,
            refs=("Patient/p",),
            clinical_time=1_700_000_000.0 + i,
            care_provider="SE1",
            care_unit=None,
        )
        for i in range(300)
    )
    cache = RedisCache(aioredis.from_url(redis_url()), ttl_s=30, max_stale_s=30)
    await cache.put("npo", "POST /labs", "pid", resources)
    (key,) = await redis_db.keys("*")
    stored = await redis_db.get(key)
    plain = orjson.dumps({"stored_at": 0.0, "resources": [r._asdict() for r in resources]})
    assert not stored.startswith(b"{") and len(stored) * 4 < len(plain)
    got = await cache.get("npo", "POST /labs", "pid")
    assert got is not None and got[0].resources == resources
    assert got[0].size == len(stored)  # (bytes read: what the metrics count)
    # an entry an older facade wrote, plain JSON, under the same key: still read
    await redis_db.set(
        key, orjson.dumps({"stored_at": cache.clock.time(), "resources": [r._asdict() for r in resources]})
    )
    old = await cache.get("npo", "POST /labs", "pid")
    await cache.close()
    assert old is not None and old[0].resources == resources


async def test_freshness_is_read_without_the_entry(redis_db: Any) -> None:
    """``fresh`` asks Redis how long the entry has left (it expires ``ttl_s + max_stale_s`` after it
    was stored): fresh while more than ``max_stale_s`` is left — stale and missing alike are not."""
    cache = RedisCache(aioredis.from_url(redis_url()), ttl_s=0.3, max_stale_s=30)
    assert not await cache.fresh("cosmic", "k", "p")
    await cache.put("cosmic", "k", "p", ())
    assert await cache.fresh("cosmic", "k", "p")
    await asyncio.sleep(0.5)
    got = await cache.get("cosmic", "k", "p")
    assert got is not None and got[1] is False  # (stale, as get judges it too)
    assert not await cache.fresh("cosmic", "k", "p")
    await cache.close()
