"""The audience-free cache: warm answers, stale answers standing in for a failing backend, and no
audience's view ever shaping another's."""

from __future__ import annotations

import logging
from typing import Any

import orjson
import pytest

from proxy.cache import MemoryCache, footprint
from proxy.simulators.population import TOLVAN
from proxy.types import MappedResource
from tests.clock import FakeClock
from tests.conftest import BASE, auth, pid
from tests.source_status import source_issues, status_of, statuses

EVERYTHING = f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything"


def split(bundle: dict[str, Any]) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """(match ids, {source: its outcome issue} for every source that did not simply answer now)"""
    ids = [e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "match"]
    issues = source_issues(bundle)
    return ids, {name: i for name, i in issues.items() if status_of(i) != "answered"}


async def test_a_warm_cache_answers_without_the_backends(facade: Any) -> None:
    async with facade(cache=True) as f:
        _, cold = await f.get(EVERYTHING, params={"_count": "500"})
        for name in ("cosmic", "viva", "npo"):
            await f.faults(name, error_status=503)  # any backend call would now fail
        _, warm = await f.get(EVERYTHING, params={"_count": "500"})
    cold_ids, cold_outcomes = split(cold)
    warm_ids, warm_outcomes = split(warm)
    assert cold_outcomes == {}
    assert warm_ids == cold_ids
    assert statuses(warm) == dict.fromkeys(("cosmic", "viva", "npo"), "cached")
    for issue in warm_outcomes.values():
        assert issue["severity"] == "information" and "from the cache" in issue["details"]["text"]


async def test_one_cache_entry_serves_every_type(facade: Any) -> None:
    """$everything fills the cache; a later Flag search needs no backend either."""
    async with facade(cache=True) as f:
        await f.get(EVERYTHING)
        for name in ("cosmic", "viva", "npo"):
            await f.faults(name, error_status=503)
        status, flags = await f.get(f"{BASE}/Flag", params={"patient": pid(TOLVAN.pnr)})
    ids, outcomes = split(flags)
    assert status == 200 and ids
    assert all(o["severity"] == "information" for o in outcomes.values())


async def test_a_stale_entry_stands_in_for_a_failing_backend(facade: Any) -> None:
    clock = FakeClock()
    async with facade(cache={"ttl_s": 30, "max_stale_s": 300}, clock=clock) as f:
        _, first = await f.get(EVERYTHING, params={"_count": "500"})
        clock.advance(31)  # past the TTL: the next request asks the backends again
        await f.faults("npo", error_status=503)
        _, second = await f.get(EVERYTHING, params={"_count": "500"})
    first_ids, _ = split(first)
    second_ids, outcomes = split(second)
    assert second_ids == first_ids  # NPÖ's part came from the stale entry
    assert set(outcomes) == {"npo"}
    assert outcomes["npo"]["severity"] == "warning"
    assert (
        "answer from" in outcomes["npo"]["details"]["text"]
        and "out of date" in outcomes["npo"]["details"]["text"]
    )


async def test_beyond_max_staleness_the_source_is_missing(facade: Any) -> None:
    clock = FakeClock()
    async with facade(cache={"ttl_s": 30, "max_stale_s": 300}, clock=clock) as f:
        await f.get(EVERYTHING)
        clock.advance(30 + 300 + 1)
        await f.faults("npo", error_status=503)
        _, bundle = await f.get(EVERYTHING, params={"_count": "500"})
    _, outcomes = split(bundle)
    assert "missing from this answer" in outcomes["npo"]["details"]["text"]


async def test_the_cache_holds_no_audience_view(facade: Any) -> None:
    async with facade(cache=True) as f:
        _, amb1 = await f.get(EVERYTHING, params={"_count": "500"}, headers=auth("ambulance"))
        _, clin = await f.get(EVERYTHING, params={"_count": "500"}, headers=auth("clinician"))
        _, pat = await f.get(EVERYTHING, params={"_count": "500"}, headers=auth("patient", pnr=TOLVAN.pnr))
        _, amb2 = await f.get(EVERYTHING, params={"_count": "500"}, headers=auth("ambulance"))
    amb1_ids, _ = split(amb1)
    amb2_ids, _ = split(amb2)
    assert amb1_ids == amb2_ids  # redacting for others changed nothing that was stored
    assert len(split(clin)[0]) == len(amb1_ids) - 1  # the threat flag
    assert len(split(pat)[0]) == len(split(clin)[0]) - 2  # the NOPAT note and bronchoscopy
    assert "Hotfullt" not in str(clin) and "Hotfullt" in str(amb2)


async def test_entries_expire_into_staleness_and_then_away() -> None:
    clock = FakeClock()
    cache = MemoryCache(ttl_s=10, max_stale_s=5, max_entries=2, clock=clock)
    await cache.put("cosmic", "k", "p", ())
    fresh = await cache.get("cosmic", "k", "p")
    assert fresh is not None and fresh[1] is True
    assert await cache.fresh("cosmic", "k", "p") and not await cache.fresh("cosmic", "other", "p")
    clock.advance(12)
    stale = await cache.get("cosmic", "k", "p")
    assert stale is not None and stale[1] is False
    assert not await cache.fresh("cosmic", "k", "p")
    clock.advance(4)
    assert await cache.get("cosmic", "k", "p") is None
    for i in range(3):  # bounded: least recently used entries go first
        await cache.put("cosmic", f"k{i}", "p", ())
    assert await cache.get("cosmic", "k0", "p") is None
    assert await cache.get("cosmic", "k2", "p") is not None


def _resources(n: int, text: str = "x" * 200) -> tuple[MappedResource, ...]:
    return tuple(
        MappedResource(
            resource={"resourceType": "Observation", "id": f"o{i}", "note": [{"text": text}]},
            source="npo",
            mapping="npo/laboratory-outcomes",
            origin_key=f"Observation|S|{i}",
            priority=2,
            refs=(),
            clinical_time=None,
            care_provider=None,
            care_unit=None,
        )
        for i in range(n)
    )


async def test_the_memory_cache_is_bounded_by_bytes_least_recently_used_first() -> None:
    """Entries of 100 resources each, a budget that holds about three of them: the fourth puts out
    the least recently used (not the oldest: the first was read since), and the bytes held stay
    within the budget."""
    one = footprint(_resources(100))
    cache = MemoryCache(
        ttl_s=30, max_stale_s=30, max_entries=1000, max_bytes=one * 3 + one // 2, clock=FakeClock()
    )
    for key in ("a", "b", "c"):
        await cache.put("npo", key, "p", _resources(100))
    assert await cache.get("npo", "a", "p") is not None  # a is now the most recently used
    await cache.put("npo", "d", "p", _resources(100))
    assert await cache.get("npo", "b", "p") is None  # the least recently used went
    assert all([await cache.get("npo", k, "p") is not None for k in ("a", "c", "d")])
    assert cache.held_bytes <= one * 3 + one // 2
    assert cache.held_bytes == 3 * one


async def test_an_entry_larger_than_the_whole_budget_is_not_cached(caplog: pytest.LogCaptureFixture) -> None:
    small, large = _resources(2), _resources(2000)
    cache = MemoryCache(
        ttl_s=30, max_stale_s=30, max_entries=1000, max_bytes=footprint(large) - 1, clock=FakeClock()
    )
    await cache.put("npo", "small", "p", small)
    await cache.put("npo", "large", "p", small)  # (an older, smaller answer to the same request)
    with caplog.at_level(logging.DEBUG, logger="proxy.cache"):
        await cache.put("npo", "large", "p", large)
    assert await cache.get("npo", "large", "p") is None  # neither the new nor the older answer
    assert await cache.get("npo", "small", "p") is not None  # and nothing else was put out for it
    assert any("not cached" in r.getMessage() and r.levelno == logging.DEBUG for r in caplog.records)


def test_an_entrys_footprint_grows_with_what_it_holds() -> None:
    """The estimate the budget counts: about what Python holds for the resources (a few times their
    JSON), in proportion to their number and size."""
    assert footprint(_resources(200)) == pytest.approx(2 * footprint(_resources(100)), rel=0.05)
    assert footprint(_resources(100, "x" * 2000)) > 5 * footprint(_resources(100, "x" * 20))
    json_size = len(orjson.dumps([r._asdict() for r in _resources(100)]))
    assert 2 * json_size < footprint(_resources(100)) < 8 * json_size
