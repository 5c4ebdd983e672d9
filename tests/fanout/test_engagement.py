"""The learned engagement index: a backend whose patient lookup said, positively, "unknown patient"
is not asked about that patient for a short while — never for safety-critical types, never learned
from empty lists, records or failures."""

from __future__ import annotations

from typing import Any

from proxy.fanout.engagement import EngagementIndex
from proxy.settings import load_settings
from proxy.simulators.population import GRETA, TOLVAN
from tests.clock import FakeClock
from tests.conftest import BASE, auth, pid
from tests.source_status import source_issues, statuses

GRETA_EVERYTHING = f"{BASE}/Patient/{pid(GRETA.pnr)}/$everything"  # known to Viva only


def test_the_index_forgets_after_its_ttl_and_when_the_lookup_knows_the_patient() -> None:
    clock = FakeClock()
    index = EngagementIndex(ttl_s=10, clock=clock)
    index.learn("npo", "p", known=False)
    assert index.unknown_here("npo", "p") and not index.unknown_here("npo", "q")
    index.learn("npo", "p", known=True)
    assert not index.unknown_here("npo", "p")
    index.learn("npo", "p", known=False)
    clock.advance(10.5)
    assert not index.unknown_here("npo", "p")


def test_the_configured_ttl_is_short_and_the_safety_types_are_declared() -> None:
    engagement = load_settings().engagement
    assert engagement.ttl_s <= 60
    assert {"Flag", "AllergyIntolerance"} <= engagement.never_skip


async def test_only_the_lookups_unknown_patient_answer_teaches_a_skip(facade: Any) -> None:
    conditions = f"{BASE}/Condition"
    async with facade(engagement=True) as f:
        _, first = await f.get(GRETA_EVERYTHING, params={"_count": "500"})
        await f.faults("cosmic", error_status=503)  # would show as failed if it were asked
        await f.faults("npo", error_status=503)
        _, second = await f.get(conditions, params={"patient": pid(GRETA.pnr)})
        _, everything = await f.get(GRETA_EVERYTHING, params={"_count": "500"})
    assert statuses(first) == {"cosmic": "answered", "viva": "answered", "npo": "answered"}
    # Cosmic's lookup said "unknown patient": not asked, and said so. NPÖ only answered empty
    # lists — that says nothing about tomorrow's records: it is asked, and its failure shows.
    assert statuses(second) == {"cosmic": "not-asked", "npo": "failed"}  # (Viva: no Condition)
    skipped = source_issues(second)["cosmic"]
    assert skipped["severity"] == "information"
    assert "was not asked" in skipped["details"]["text"] and "does not know this patient" in str(skipped)
    # $everything holds the safety-critical types: every source is asked
    assert statuses(everything) == {"cosmic": "failed", "viva": "answered", "npo": "failed"}


async def test_safety_critical_types_always_ask_every_source(facade: Any) -> None:
    async with facade(engagement=True) as f:
        await f.get(GRETA_EVERYTHING)  # Cosmic: "unknown patient", learned
        await f.faults("cosmic", error_status=503)
        for rtype in ("Flag", "AllergyIntolerance"):
            _, bundle = await f.get(
                f"{BASE}/{rtype}", params={"patient": pid(GRETA.pnr)}, headers=auth("ambulance")
            )
            assert statuses(bundle)["cosmic"] == "failed", rtype  # asked, not skipped
        _, condition = await f.get(f"{BASE}/Condition", params={"patient": pid(GRETA.pnr)})
    assert statuses(condition)["cosmic"] == "not-asked"


async def test_a_bare_404_or_a_failure_teaches_nothing(facade: Any) -> None:
    async with facade(engagement=True) as f:
        await f.faults("cosmic", error_status=404)  # a 404 without Cosmic's "unknown patient" body
        _, bare = await f.get(GRETA_EVERYTHING)
        await f.faults("cosmic", error_status=503)
        _, then = await f.get(GRETA_EVERYTHING)
        await f.faults("cosmic")
        _, recovered = await f.get(f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything")
    assert statuses(bare)["cosmic"] == "failed" and "HTTP 404" in str(source_issues(bare)["cosmic"])
    assert statuses(then)["cosmic"] == "failed"
    assert set(statuses(recovered).values()) == {"answered"}


def test_a_bad_never_skip_or_a_long_ttl_is_refused_at_start_up(tmp_path: Any) -> None:
    import pytest

    from proxy.settings import ConfigError

    source = (load_settings().config_dir / "facade.yaml").read_text(encoding="utf-8")
    for bad, key in (
        ("never_skip: [Flag, AllergyIntolerance]", "never_skip: flag"),
        # a misspelt type would quietly leave Flag skippable: refused, not ignored
        ("never_skip: [Flag, AllergyIntolerance]", "never_skip: [Flags, AllergyIntolerance]"),
        ("ttl_s: 60 ", "ttl_s: 600 "),
    ):
        config = tmp_path / "facade.yaml"
        config.write_text(source.replace(bad, key), encoding="utf-8")
        assert source != config.read_text(encoding="utf-8")
        with pytest.raises(ConfigError, match=r"facade.yaml: engagement\.(never_skip|ttl_s)"):
            load_settings(config)
