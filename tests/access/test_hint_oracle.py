"""The PDL hint is not a search oracle.

Care staff are told, in an OperationOutcome ``suppressed`` issue (urn:fhir-facade:pdl), that more
exists behind a missing consent or the patient's block. The hint may depend on the patient, the
asker and the requested resource types only — never on filter values, dates, ids or paging — or a
search becomes an oracle that reads the withheld records out code by code and date by date.

Every probe below is a pair of requests an attacker would send: one whose filter matches a
withheld record (Lennart's diagnoses from another region, held by NPÖ), one whose filter does not.
Both must carry exactly the same hint, and the same as the unfiltered search.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest

from proxy.simulators.population import LENNART, OTHER_REGION_PROVIDER
from tests.conftest import BASE, auth, consent_body, pid

PATIENT = pid(LENNART.pnr)
ICD = "urn:oid:1.2.752.116.1.1.1.1.3"
CONDITIONS = f"{BASE}/Condition"
EVERYTHING = f"{BASE}/Patient/{PATIENT}/$everything"
PDL = "urn:fhir-facade:pdl"

# (filter that matches a withheld diagnosis, filter that matches none); Lennart's other-region
# diagnoses are I50.9 and I48.9 (onset 2024-05-10) and T78.3 (2024-06-24), all recorded in 2024.
FILTER_PAIRS: list[tuple[str, dict[str, str], dict[str, str]]] = [
    ("code", {"code": "I50.9"}, {"code": "Z00.0"}),
    ("system|code", {"code": f"{ICD}|I50.9"}, {"code": f"{ICD}|Z00.0"}),
    ("system|", {"code": f"{ICD}|"}, {"code": "urn:oid:9.9.9|"}),
    ("code list", {"code": "Z00.0,I48.9"}, {"code": "Z00.0,Z00.1"}),
    ("date eq", {"onset-date": "eq2024-05"}, {"onset-date": "eq2020-01"}),
    ("date bare", {"onset-date": "2024-06-24"}, {"onset-date": "2024-06-25"}),
    ("date ne", {"onset-date": "ne2020"}, {"onset-date": "ne2024"}),
    ("date gt", {"onset-date": "gt2023"}, {"onset-date": "gt2025"}),
    ("date lt", {"onset-date": "lt2025"}, {"onset-date": "lt2023"}),
    ("date ge", {"onset-date": "ge2024-06"}, {"onset-date": "ge2025"}),
    ("date le", {"onset-date": "le2024-05-31"}, {"onset-date": "le2023"}),
    ("date sa", {"onset-date": "sa2023"}, {"onset-date": "sa2025"}),
    ("date eb", {"onset-date": "eb2025"}, {"onset-date": "eb2024-01"}),
    ("recorded-date", {"recorded-date": "2024"}, {"recorded-date": "2019"}),
    ("_lastUpdated", {"_lastUpdated": "ge2024"}, {"_lastUpdated": "ge2030"}),
    ("_summary=count", {"_summary": "count", "code": "I50.9"}, {"_summary": "count", "code": "Z00.0"}),
    ("_count/_offset", {"_count": "1", "code": "I50.9"}, {"_count": "1", "_offset": "5"}),
    ("_count=0", {"_count": "0", "code": "I50.9"}, {"_count": "0", "code": "Z00.0"}),
]


def hint(bundle: dict[str, Any]) -> list[bytes]:
    """Every OperationOutcome entry that carries a PDL issue, as bytes (presence, codes, text, count)."""
    return sorted(
        orjson.dumps(e["resource"], option=orjson.OPT_SORT_KEYS)
        for e in bundle.get("entry", [])
        if e["search"]["mode"] == "outcome"
        and any(
            c.get("system") == PDL
            for i in e["resource"]["issue"]
            for c in i.get("details", {}).get("coding", [])
        )
    )


@asynccontextmanager
async def withheld_from_clinician(facade: Any, reason: str) -> AsyncIterator[Any]:
    """Lennart's other-region records withheld from the region's clinician: for want of a consent,
    or (consented) behind the patient's block on the other region."""
    async with facade(consent=reason == "blocked") as f:
        if reason == "blocked":
            block = consent_body(PATIENT, deny=True, custodians=(OTHER_REGION_PROVIDER,))
            resp = await f.client.post(
                f"{BASE}/Consent",
                json=block,
                headers={**auth("patient", pnr=LENNART.pnr), "Content-Type": "application/fhir+json"},
            )
            assert resp.status == 201, await resp.text()
        yield f


async def search(f: Any, params: dict[str, str]) -> dict[str, Any]:
    status, bundle = await f.get(CONDITIONS, params={"patient": PATIENT, **params})
    assert status == 200, bundle
    return bundle


async def withheld_condition_ids(f: Any) -> list[str]:
    """What the patient sees that the clinician does not."""
    own = await f.get(CONDITIONS, params={"patient": PATIENT}, headers=auth("patient", pnr=LENNART.pnr))
    shown = {
        e["resource"]["id"] for e in (await search(f, {})).get("entry", []) if e["search"]["mode"] == "match"
    }
    hidden = [
        e["resource"]["id"]
        for e in own[1]["entry"]
        if e["search"]["mode"] == "match" and e["resource"]["id"] not in shown
    ]
    assert len(hidden) == 3
    return hidden


def made_up(real: str) -> str:
    head, _, digest = real.rpartition("-")
    return f"{head}-{'0' * 15}{'1' if digest != '0' * 15 + '1' else '2'}"


@pytest.mark.parametrize("reason", ["consent-required", "blocked"])
async def test_filters_dates_and_paging_do_not_change_the_hint(facade: Any, reason: str) -> None:
    async with withheld_from_clinician(facade, reason) as f:
        baseline = hint(await search(f, {}))
        assert len(baseline) == 1 and reason.encode() in baseline[0]
        leaks = []
        for name, matching, missing in FILTER_PAIRS:
            a, b = hint(await search(f, matching)), hint(await search(f, missing))
            if not a == b == baseline:
                leaks.append(name)
        assert leaks == []


@pytest.mark.parametrize("reason", ["consent-required", "blocked"])
async def test_id_filter_and_post_search_do_not_change_the_hint(facade: Any, reason: str) -> None:
    async with withheld_from_clinician(facade, reason) as f:
        baseline = hint(await search(f, {}))
        real = (await withheld_condition_ids(f))[0]
        assert (
            hint(await search(f, {"_id": real})) == hint(await search(f, {"_id": made_up(real)})) == baseline
        )
        posted = []
        for code in ("I50.9", "Z00.0"):
            resp = await f.client.post(
                f"{CONDITIONS}/_search",
                data={"patient": PATIENT, "code": code},
                headers={"Content-Type": "application/x-www-form-urlencoded"},
            )
            assert resp.status == 200
            posted.append(hint(await resp.json(content_type=None)))
        assert posted[0] == posted[1] == baseline


@pytest.mark.parametrize("reason", ["consent-required", "blocked"])
async def test_everything_since_and_paging_do_not_change_the_hint(facade: Any, reason: str) -> None:
    async with withheld_from_clinician(facade, reason) as f:
        answers = []
        for params in (
            {"_type": "Condition"},
            {"_type": "Condition", "_since": "2000-01-01T00:00:00Z"},
            {"_type": "Condition", "_since": "2030-01-01T00:00:00Z"},
            {"_type": "Condition", "_count": "1", "_offset": "7"},
            {"_type": "Condition", "_summary": "count", "_since": "2030-01-01T00:00:00Z"},
        ):
            status, bundle = await f.get(EVERYTHING, params=params)
            assert status == 200
            answers.append(hint(bundle))
        assert len(answers[0]) == 1 and all(a == answers[0] for a in answers)


@pytest.mark.parametrize("reason", ["consent-required", "blocked"])
async def test_reading_a_withheld_id_is_answered_like_reading_a_made_up_one(facade: Any, reason: str) -> None:
    """Rule: a read of type T that finds nothing the asker may see answers 403 with the hint when
    records of type T are withheld from this asker, whatever the id — else 404."""
    async with withheld_from_clinician(facade, reason) as f:
        real = (await withheld_condition_ids(f))[0]
        patient_part, _, _ = real.partition("-")
        ids = [real, made_up(real), f"{patient_part}-cosmic-{'0' * 16}", f"{patient_part}-npo-{'f' * 16}"]
        answers = []
        for rid in ids:
            resp = await f.client.get(f"{CONDITIONS}/{rid}")
            answers.append((resp.status, await resp.read(), sorted(k for k in resp.headers if k != "Date")))
        assert answers[0][0] == 403 and reason.replace("-required", "").encode() in answers[0][1]
        assert all(a == answers[0] for a in answers)
        # a type with nothing withheld from this asker: the plain 404 of an unknown id
        missing = await f.client.get(f"{BASE}/Immunization/{patient_part}-npo-{'0' * 16}")
        assert missing.status == 404


@pytest.mark.parametrize("reason", ["consent-required", "blocked"])
async def test_everything_narrowed_by_scopes_to_withheld_records_is_not_an_unknown_patient(
    facade: Any, reason: str
) -> None:
    """A token whose scopes leave ``$everything`` only types all of whose records are withheld
    (here: Condition, without Patient) must not be told "No Patient with that id is known": the
    patient exists and more can be shown with consent or emergency access. The answer is the same
    as a search of those types — 200 with the hint (no silent incompleteness)."""
    async with withheld_from_clinician(facade, reason) as f:
        narrow = auth("clinician", scopes="user/Condition.rs")
        searched = await f.get(CONDITIONS, params={"patient": PATIENT}, headers=narrow)
        status, bundle = await f.get(EVERYTHING, headers=narrow)
        assert status == 200, bundle
        assert hint(bundle) == hint(searched[1]) and len(hint(bundle)) == 1


@pytest.mark.parametrize("reason", ["consent-required", "blocked"])
async def test_the_summary_shows_nothing_withheld_and_carries_the_same_hint(facade: Any, reason: str) -> None:
    """``$summary`` is built from the same PDL-filtered answer: no withheld record, id or text in
    it, and the hint it carries (among its source outcomes) is the one ``$everything`` carries."""
    async with withheld_from_clinician(facade, reason) as f:
        hidden = await withheld_condition_ids(f)
        _, everything = await f.get(EVERYTHING)
        resp = await f.client.get(f"{BASE}/Patient/{PATIENT}/$summary")
        text = await resp.text()
        document = orjson.loads(text)
    assert resp.status == 200
    assert not any(rid in text for rid in hidden)
    outcomes = [
        orjson.dumps({k: v for k, v in e["resource"].items() if k != "id"}, option=orjson.OPT_SORT_KEYS)
        for e in document["entry"]
        if e["resource"]["resourceType"] == "OperationOutcome"
        and any(
            c.get("system") == PDL for i in e["resource"]["issue"] for c in i["details"].get("coding", [])
        )
    ]
    assert outcomes == hint(everything) and len(outcomes) == 1
