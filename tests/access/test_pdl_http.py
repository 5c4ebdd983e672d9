"""The PDL rules through the API: own provider only without consent (and a hint), consent opens
the rest, expiry and revocation close it again, blocks, emergency access, the patient's own view."""

from __future__ import annotations

from collections import Counter
from typing import Any

from proxy.edge.http import STORE_KEY
from proxy.simulators.population import OTHER_REGION_PROVIDER, REGION_PROVIDER, TOLVAN, UNITS
from tests.conftest import BASE, auth, consent_body, pid

EVERYTHING = f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything"
JSON = {"Content-Type": "application/fhir+json"}
VCN = UNITS["vc-norr"][0]  # a unit of the region (the demo clinician works at another: MED3)


def sources(bundle: dict[str, Any]) -> Counter[str]:
    """Per source, how many records (not the Patient) the answer holds."""
    return Counter(
        e["resource"]["meta"]["source"].rsplit(":", 1)[-1]
        for e in bundle.get("entry", [])
        if e["search"]["mode"] == "match" and e["resource"]["resourceType"] != "Patient"
    )


def hints(bundle: dict[str, Any]) -> set[str]:
    return {
        c["code"]
        for e in bundle.get("entry", [])
        if e["search"]["mode"] == "outcome"
        for i in e["resource"]["issue"]
        for c in i.get("details", {}).get("coding", [])
        if c["system"] == "urn:fhir-facade:pdl"
    }


async def post(f: Any, body: dict[str, Any], headers: dict[str, str] | None = None) -> tuple[int, Any]:
    resp = await f.client.post(f"{BASE}/Consent", json=body, headers={**JSON, **(headers or {})})
    return resp.status, await resp.json(content_type=None)


async def test_no_consent_own_provider_only_and_a_hint_then_consent_opens_everything(facade: Any) -> None:
    async with facade(consent=False) as f:
        status, own = await f.get(EVERYTHING)
        assert status == 200
        assert sources(own)["viva"] == 0  # the municipality's records
        assert sources(own)["cosmic"] > 0
        assert sources(own)["npo"] <= 1  # only NPÖ's copy of the region's own diagnosis
        assert hints(own) == {"consent-required"}

        status, created = await post(f, consent_body(pid(TOLVAN.pnr), recipient=REGION_PROVIDER))
        assert status == 201, created
        status, full = await f.get(EVERYTHING)
        assert sources(full)["viva"] > 0 and sources(full)["npo"] > sources(own)["npo"]
        assert hints(full) == set()


async def test_expired_and_revoked_consents_close_it_again(facade: Any) -> None:
    async with facade(consent=False) as f:
        expired = consent_body(
            pid(TOLVAN.pnr), recipient=REGION_PROVIDER, period={"start": "2024-01-01", "end": "2025-01-01"}
        )
        assert (await post(f, expired))[0] == 201
        _, bundle = await f.get(EVERYTHING)
        assert sources(bundle)["viva"] == 0 and hints(bundle) == {"consent-required"}

        _, current = await post(f, consent_body(pid(TOLVAN.pnr), recipient=REGION_PROVIDER))
        _, bundle = await f.get(EVERYTHING)
        assert sources(bundle)["viva"] > 0
        revoked = {**current, "status": "inactive"}
        resp = await f.client.put(f"{BASE}/Consent/{current['id']}", json=revoked, headers=JSON)
        assert resp.status == 200 and (await resp.json(content_type=None))["status"] == "inactive"
        _, bundle = await f.get(EVERYTHING)
        assert sources(bundle)["viva"] == 0 and hints(bundle) == {"consent-required"}


async def test_inner_block_hides_a_unit_from_the_rest_of_its_own_provider(facade: Any) -> None:
    patient = auth("patient", pnr=TOLVAN.pnr)
    conditions = f"{BASE}/Condition?patient={pid(TOLVAN.pnr)}"
    async with facade() as f:  # consented to the region: only the block stands in the way
        _, before = await f.get(conditions)
        status, block = await post(f, consent_body(pid(TOLVAN.pnr), deny=True, custodians=(VCN,)), patient)
        assert status == 201, block
        _, after = await f.get(conditions)
        assert 0 < after["total"] < before["total"] and hints(after) == {"blocked"}
        _, inside = await f.get(conditions, headers=auth("clinician", care_unit=VCN))  # the unit itself
        assert inside["total"] == before["total"] and hints(inside) == set()
        _, own_view = await f.get(conditions, headers=patient)  # the patient sees all their own data
        assert own_view["total"] == before["total"] and hints(own_view) == set()

        lift = consent_body(pid(TOLVAN.pnr), recipient=UNITS["med"][0], custodians=(VCN,))
        assert (await post(f, lift))[0] == 201  # the patient's consent to lift the block for this unit
        _, lifted = await f.get(conditions)
        assert lifted["total"] == before["total"] and hints(lifted) == set()


async def test_outer_block_emergency_access_lifts_it_and_is_logged_as_etreat(facade: Any) -> None:
    patient = auth("patient", pnr=TOLVAN.pnr)
    async with facade() as f:
        _, before = await f.get(EVERYTHING)
        block = consent_body(pid(TOLVAN.pnr), deny=True, custodians=(OTHER_REGION_PROVIDER,))
        assert (await post(f, block, patient))[0] == 201
        _, blocked = await f.get(EVERYTHING)
        assert sources(blocked)["npo"] < sources(before)["npo"] and hints(blocked) == {"blocked"}
        assert sources(blocked)["viva"] == sources(before)["viva"]  # the consent still opens the rest

        resp = await f.client.get(
            EVERYTHING, headers={"X-Emergency-Access": "patient-unconscious", "X-Request-ID": "emergency-1"}
        )
        emergency = await resp.json(content_type=None)
        assert resp.status == 200 and sources(emergency) == sources(before) and hints(emergency) == set()
        _, own_view = await f.get(EVERYTHING, headers=patient)
        assert hints(own_view) == set() and sources(own_view)["npo"] > 0

        events = await f.client.server.app[STORE_KEY].all_audit_events()
    by_request = {
        e["entity"][-1]["what"]["identifier"]["value"]: e for e in events if e["entity"][-1].get("what")
    }
    logged = by_request["emergency-1"]
    assert logged["purposeOfEvent"][0]["coding"][0]["code"] == "ETREAT"
    assert {"type": "emergency-reason", "valueString": "patient-unconscious"} in logged["entity"][1]["detail"]
    others = [e for r, e in by_request.items() if r != "emergency-1"]
    assert {e["purposeOfEvent"][0]["coding"][0]["code"] for e in others} <= {"TREAT", "PATRQT"}


async def test_emergency_access_without_consent_and_who_may_use_it(facade: Any) -> None:
    async with facade(consent=False) as f:
        status, bundle = await f.get(EVERYTHING, headers={"X-Emergency-Access": "no-time"})
        assert status == 200 and sources(bundle)["viva"] > 0 and hints(bundle) == set()
        homecare = {**auth("homecare"), "X-Emergency-Access": "no-time"}
        status, refused = await f.get(EVERYTHING, headers=homecare)
        assert status == 403 and "social-care" in refused["issue"][0]["diagnostics"]
        status, bad = await f.get(EVERYTHING, headers={"X-Emergency-Access": "because I want to"})
        assert status == 400 and "patient-unconscious" in bad["issue"][0]["diagnostics"]
        patient = {**auth("patient", pnr=TOLVAN.pnr), "X-Emergency-Access": "no-time"}
        assert (await f.get(EVERYTHING, headers=patient))[0] == 403
        events = await f.client.server.app[STORE_KEY].all_audit_events()
    assert len(events) == 4  # refused requests are logged too
    assert sorted(e["outcome"] for e in events) == ["0", "8", "8", "8"]


async def test_homecare_sees_its_own_municipality_records_and_needs_consent_for_the_region(
    facade: Any,
) -> None:
    async with facade(consent=False) as f:
        _, bundle = await f.get(EVERYTHING, headers=auth("homecare"))
        assert sources(bundle)["viva"] > 0 and sources(bundle)["cosmic"] == 0
        assert hints(bundle) == {"consent-required"}


async def test_reading_another_providers_record_is_refused_with_the_hint_unless_hidden_anyway(
    facade: Any,
) -> None:
    patient = auth("patient", pnr=TOLVAN.pnr)
    async with facade(consent=False) as f:
        _, plans = await f.get(f"{BASE}/CarePlan?patient={pid(TOLVAN.pnr)}", headers=patient)
        plan = plans["entry"][0]["fullUrl"].split(BASE, 1)[1]  # the municipality's
        status, body = await f.get(f"{BASE}{plan}")  # the region's clinician, no consent
        assert status == 403 and "consent" in body["issue"][0]["diagnostics"]
        assert (await f.get(f"{BASE}{plan}", headers=patient))[0] == 200

        # the threat flag is the region's; homecare may never see it, so it is answered exactly like
        # a Flag id that does not exist: the type-level hint (the region's other flag, which they
        # could see with consent, is withheld), never a trace of the threat flag itself
        _, flags = await f.get(f"{BASE}/Flag?patient={pid(TOLVAN.pnr)}", headers=auth("ambulance"))
        by_category = {
            e["resource"]["category"][0]["coding"][0]["code"]: e["fullUrl"].split(BASE, 1)[1]
            for e in flags["entry"]
            if e["search"]["mode"] == "match"
        }
        made_up = by_category["safety"][:-16] + "0" * 16
        answers = []
        for path in (by_category["safety"], made_up, by_category["advance-directive"]):
            resp = await f.client.get(f"{BASE}{path}", headers=auth("homecare"))
            answers.append((resp.status, await resp.read()))
        assert answers[0] == answers[1] == answers[2]
        assert answers[0][0] == 403 and b"consent" in answers[0][1]
        # the patient's own flags: nothing is withheld, so an unknown id is a plain 404
        assert (await f.get(f"{BASE}{made_up}", headers=patient))[0] == 404
