"""The learned engagement index: skip a backend known to hold nothing for the patient, for a while."""

from __future__ import annotations

from typing import Any

from proxy.fanout.engagement import EngagementIndex
from proxy.simulators.population import GRETA, TOLVAN
from tests.conftest import BASE, pid


def outcomes(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        e["resource"]["issue"][0]["details"]["coding"][0]["code"]: e["resource"]["issue"][0]
        for e in bundle["entry"]
        if e["search"]["mode"] == "outcome"
    }


def test_the_index_forgets_after_its_ttl_and_on_any_record() -> None:
    now = [0.0]
    index = EngagementIndex(ttl_s=10, clock=lambda: now[0])
    index.learn("npo", "p", holds_data=False)
    assert index.holds_nothing("npo", "p") and not index.holds_nothing("npo", "q")
    index.learn("npo", "p", holds_data=True)
    assert not index.holds_nothing("npo", "p")
    index.learn("npo", "p", holds_data=False)
    now[0] = 10.5
    assert not index.holds_nothing("npo", "p")


async def test_backends_that_hold_nothing_are_skipped_and_said_so(facade: Any) -> None:
    greta = f"{BASE}/Patient/{pid(GRETA.pnr)}/$everything"  # known to Viva only
    async with facade(engagement=True) as f:
        _, first = await f.get(greta, params={"_count": "500"})
        await f.faults("cosmic", error_status=503)  # would show as degraded if it were asked
        await f.faults("npo", error_status=503)
        _, second = await f.get(greta, params={"_count": "500"})
        _, tolvan = await f.get(f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything")
    assert outcomes(first) == {}
    skipped = outcomes(second)
    assert set(skipped) == {"cosmic", "npo"}
    assert all(
        i["severity"] == "information" and "was not asked" in i["details"]["text"] for i in skipped.values()
    )
    assert second["total"] == first["total"]
    # Tolvan's record is in all three: nothing about him was learned as empty, so the faults show
    assert {k: v["severity"] for k, v in outcomes(tolvan).items()} == {"cosmic": "warning", "npo": "warning"}


async def test_a_partial_fetch_teaches_nothing(facade: Any) -> None:
    """Only an answer to every contract can say 'nothing here'; one search type cannot."""
    async with facade(engagement=True) as f:
        await f.get(f"{BASE}/Condition", params={"patient": pid(GRETA.pnr)})
        await f.faults("cosmic", error_status=503)
        _, again = await f.get(f"{BASE}/Condition", params={"patient": pid(GRETA.pnr)})
    assert outcomes(again)["cosmic"]["severity"] == "warning"
