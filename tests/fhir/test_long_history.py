"""The named long-history patient through the facade, end to end: one ``$everything`` with a large
``_count`` answers every one of her records — thousands, from all three sources — with every source
answered in full."""

from __future__ import annotations

from collections import Counter
from typing import Any

from proxy.simulators.population import DEMO_PEOPLE, INGEGERD, LONG_HISTORIES
from tests.conftest import BASE, pid
from tests.source_status import degraded, statuses

RECORDS, _ = LONG_HISTORIES[INGEGERD.pnr]


async def test_the_long_history_is_answered_whole_from_all_three_sources(facade: Any) -> None:
    async with facade(people=[*DEMO_PEOPLE, INGEGERD], facade_overrides={"max_count": 20_000}) as f:
        status, bundle = await f.get(
            f"{BASE}/Patient/{pid(INGEGERD.pnr)}/$everything", params={"_count": "20000"}
        )
    assert status == 200, bundle
    assert statuses(bundle) == {"cosmic": "answered", "viva": "answered", "npo": "answered"}
    assert not degraded(bundle)
    matches = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "match"]
    records = [r for r in matches if r["resourceType"] != "Patient"]
    assert len(records) == RECORDS >= 5000  # every record, each once
    assert len({(r["resourceType"], r["id"]) for r in records}) == len(records)
    sources = Counter(r["meta"]["source"].rsplit(":", 1)[-1] for r in records)
    assert set(sources) == {"cosmic", "viva", "npo"} and min(sources.values()) >= 1000, sources
    kinds = Counter(r["resourceType"] for r in records)
    assert kinds["Observation"] > RECORDS / 3 and len(kinds) >= 10, kinds
    assert not [link for link in bundle.get("link", []) if link["relation"] == "next"]  # one page
    assert [r["resourceType"] for r in matches].count("Patient") == 1
