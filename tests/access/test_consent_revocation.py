"""The patient revokes any consent or lifts any block about themselves (PUT with status inactive,
If-Match honoured), and the revocation is logged; nobody else revokes what is not theirs."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.edge.http import STORE_KEY
from proxy.simulators.population import GRETA, MUNICIPALITY_PROVIDER, REGION_PROVIDER, TOLVAN, UNITS
from tests.audit.test_audit import request_id
from tests.conftest import BASE, auth, consent_body, pid, validate

JSON = {"Content-Type": "application/fhir+json"}
PATIENT = auth("patient", pnr=TOLVAN.pnr)


async def post(f: Any, body: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
    resp = await f.client.post(f"{BASE}/Consent", json=body, headers={**JSON, **(headers or {})})
    assert resp.status == 201, await resp.text()
    created: dict[str, Any] = await resp.json(content_type=None)
    return created


async def put(f: Any, resource: dict[str, Any], headers: dict[str, str]) -> tuple[int, Any]:
    resp = await f.client.put(f"{BASE}/Consent/{resource['id']}", json=resource, headers={**JSON, **headers})
    return resp.status, await resp.json(content_type=None)


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
async def test_the_patient_revokes_a_consent_registered_about_them_and_it_is_logged(
    facade: Any, store: str
) -> None:
    async with facade(consent=False, store=store) as f:
        given = await post(f, consent_body(pid(TOLVAN.pnr), recipient=REGION_PROVIDER))  # by the clinician
        _, before = await f.get(f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything")
        revoke = {**given, "status": "inactive"}
        stale = await put(f, revoke, {**PATIENT, "If-Match": 'W/"2"', "X-Request-ID": "stale"})
        status, revoked = await put(f, revoke, {**PATIENT, "If-Match": 'W/"1"', "X-Request-ID": "revoke"})
        _, after = await f.get(f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything")
        _, search = await f.get(
            f"{BASE}/Consent", params={"patient": pid(TOLVAN.pnr), "status": "active"}, headers=PATIENT
        )
        logged = {request_id(e): e for e in await f.client.server.app[STORE_KEY].all_audit_events()}
    assert stale[0] == 412
    assert status == 200 and revoked["status"] == "inactive" and revoked["meta"]["versionId"] == "2"
    assert search["total"] == 0
    # the revocation takes effect: the clinician's reading of the other providers' records ends
    sources = lambda b: {  # noqa: E731
        e["resource"]["meta"]["source"].rsplit(":", 1)[-1]
        for e in b.get("entry", [])
        if "meta" in e["resource"]
    }
    assert "viva" in sources(before) and "viva" not in sources(after)
    event = logged["revoke"]
    assert event["subtype"][0]["code"] == "update" and event["action"] == "U" and event["outcome"] == "0"
    assert event["agent"][0]["who"]["reference"] == f"Patient/{pid(TOLVAN.pnr)}"  # the patient did it
    assert {"reference": f"Consent/{given['id']}/_history/2"} in [e.get("what") for e in event["entity"]]
    assert logged["stale"]["outcome"] == "8"
    validate(event)


async def test_the_patient_lifts_blocks_and_revokes_any_consent_about_themselves_only(facade: Any) -> None:
    async with facade(consent=False) as f:
        region = await post(f, consent_body(pid(TOLVAN.pnr), recipient=REGION_PROVIDER))
        municipality = await post(
            f, consent_body(pid(TOLVAN.pnr), recipient=MUNICIPALITY_PROVIDER), auth("homecare")
        )
        block = await post(
            f, consent_body(pid(TOLVAN.pnr), deny=True, custodians=(UNITS["akuten"][0],)), PATIENT
        )
        gretas = await post(f, consent_body(pid(GRETA.pnr), recipient=REGION_PROVIDER))
        # another patient cannot revoke Tolvan's: it is not even there for her
        greta = auth("patient", pnr=GRETA.pnr)
        assert (await put(f, {**region, "status": "inactive"}, greta))[0] == 404
        # care staff revoke only the consents given to their own provider or unit, never a block
        assert (await put(f, {**municipality, "status": "inactive"}, {}))[0] == 404
        assert (await put(f, {**block, "status": "inactive"}, {}))[0] == 404
        # the patient revokes every consent and lifts every block about themselves ...
        for resource in (region, municipality, block):
            status, body = await put(f, {**resource, "status": "inactive"}, PATIENT)
            assert status == 200 and body["status"] == "inactive", body
        # ... and may not change anything else while doing so
        status, _ = await put(f, {**gretas, "status": "inactive"}, PATIENT)
        assert status == 404
        changed = {**region, "status": "inactive", "provision": {"type": "deny"}}
        assert (await put(f, changed, PATIENT))[0] == 400
