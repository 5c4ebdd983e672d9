"""HSA-ids in a Consent: HL7 Sweden's system (urn:oid:1.2.752.29.4.19) is what the facade writes; the
RIVTA OID (urn:oid:1.2.752.129.2.1.4.1) that NTjP clients use is accepted on input, stored and shown
as HL7 Sweden's, and enforced exactly alike. Another system is still refused."""

from __future__ import annotations

from typing import Any

from proxy.access.consent import stored
from proxy.audience import DEFAULT_AUDIENCES
from proxy.audit.events import begun_event, patient_view
from proxy.edge.http import STORE_KEY
from proxy.hsa import HSA_SYSTEM, RIVTA_HSA_SYSTEM, is_hsa_id
from proxy.simulators.population import REGION_PROVIDER, TOLVAN, UNITS
from proxy.store.base import ConsentRow
from proxy.types import Principal
from tests.conftest import BASE, auth, consent_body, pid

JSON = {"Content-Type": "application/fhir+json"}
PATIENT = auth("patient", pnr=TOLVAN.pnr)
CARDIOLOGY = UNITS["annan-region"][0]


def with_system(body: dict[str, Any], system: str) -> dict[str, Any]:
    actors = [
        {**a, "reference": {"identifier": {**a["reference"]["identifier"], "system": system}}}
        for a in body["provision"]["actor"]
    ]
    return {**body, "provision": {**body["provision"], "actor": actors}}


def actor_systems(consent: dict[str, Any]) -> set[str]:
    return {a["reference"]["identifier"]["system"] for a in consent["provision"]["actor"]}


async def seen(f: Any, headers: dict[str, str] | None = None) -> set[str]:
    status, bundle = await f.get(
        f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything", params={"_count": "500"}, headers=headers
    )
    assert status == 200, bundle
    return {e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "match"}


async def post(f: Any, body: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
    resp = await f.client.post(f"{BASE}/Consent", json=body, headers={**JSON, **(headers or {})})
    created = await resp.json(content_type=None)
    assert resp.status == 201, created
    return dict(created)


async def revoke(
    f: Any, created: dict[str, Any], sent: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    """Revoke by PUTting back the body the client sent (in whichever system it wrote)."""
    body = {**sent, "id": created["id"], "status": "inactive"}
    resp = await f.client.put(
        f"{BASE}/Consent/{created['id']}", json=body, headers={**JSON, **(headers or {})}
    )
    assert resp.status == 200, await resp.text()


async def test_a_consent_in_either_system_is_stored_in_hl7_swedens_and_enforced_alike(facade: Any) -> None:
    async with facade(consent=False) as f:
        own = await seen(f)  # the region's records only
        granted: dict[str, set[str]] = {}
        for system in (RIVTA_HSA_SYSTEM, HSA_SYSTEM):
            sent = with_system(consent_body(pid(TOLVAN.pnr), recipient=REGION_PROVIDER), system)
            created = await post(f, sent)
            assert actor_systems(created) == {HSA_SYSTEM}, created
            status, read = await f.get(f"{BASE}/Consent/{created['id']}")
            assert status == 200 and actor_systems(read) == {HSA_SYSTEM}
            granted[system] = await seen(f)
            await revoke(f, created, sent)
            assert await seen(f) == own
        assert granted[RIVTA_HSA_SYSTEM] == granted[HSA_SYSTEM]
        assert granted[HSA_SYSTEM] > own


async def test_a_block_in_either_system_hides_the_same_records(facade: Any) -> None:
    async with facade() as f:
        everything = await seen(f)
        hidden: dict[str, set[str]] = {}
        for system in (RIVTA_HSA_SYSTEM, HSA_SYSTEM):
            sent = with_system(consent_body(pid(TOLVAN.pnr), custodians=(CARDIOLOGY,), deny=True), system)
            created = await post(f, sent, PATIENT)
            assert actor_systems(created) == {HSA_SYSTEM}
            hidden[system] = everything - await seen(f)
            await revoke(f, created, sent, PATIENT)
            assert await seen(f) == everything
        assert hidden[RIVTA_HSA_SYSTEM] == hidden[HSA_SYSTEM] != set()


async def test_another_system_is_still_refused(facade: Any) -> None:
    async with facade(consent=False) as f:
        for system in ("urn:oid:1.2.752.129.2.1.4.2", "urn:oid:1.2.752.29.4.19 ", "", "http://hsa"):
            body = with_system(consent_body(pid(TOLVAN.pnr), recipient=REGION_PROVIDER), system)
            resp = await f.client.post(f"{BASE}/Consent", json=body, headers=JSON)
            assert resp.status == 400, system
            assert HSA_SYSTEM in await resp.text()


async def test_the_access_log_names_the_user_in_hl7_swedens_system(facade: Any) -> None:
    auditor = auth("clinician", hsa_id="SE2321000016-AUD1")
    async with facade(access={"auditors": frozenset({"SE2321000016-AUD1"})}) as f:
        await f.get(f"{BASE}/Flag", params={"patient": pid(TOLVAN.pnr)}, headers=auth("ambulance"))
        status, log = await f.get(f"{BASE}/AuditEvent", params={"patient": pid(TOLVAN.pnr)}, headers=auditor)
    assert status == 200 and log["entry"]
    for entry in log["entry"]:
        event = entry["resource"]
        assert RIVTA_HSA_SYSTEM not in str(event)
        users = [a["who"]["identifier"] for a in event["agent"] if "identifier" in a.get("who", {})]
        assert users and all(u["system"] == HSA_SYSTEM for u in users), users
        # the user's care unit and provider: HSA-ids too, in the same system
        (asker,) = [a for a in event["agent"] if a.get("requestor")]
        where = {e["url"]: e for e in asker["extension"]}
        for url in ("urn:fhir-facade:care-unit", "urn:fhir-facade:care-provider"):
            ident = where[url]["valueIdentifier"]
            assert ident["system"] == HSA_SYSTEM and is_hsa_id(ident["value"]), where


def test_the_patients_view_reads_the_care_unit_in_either_form() -> None:
    """Events stored before the unit was an Identifier (a valueString) read the same to the patient."""
    names = {"SE2321000016-MED3": "Medicinkliniken avd 3", "SE2321000016-15CQ": "Regionen"}
    base = begun_event(
        Principal(
            audience=DEFAULT_AUDIENCES["clinician"],
            subject="u1",
            issuer="demo",
            scopes=frozenset(),
            user_hsa_id="SE2321000016-L5MED",
            care_unit_hsa_id="SE2321000016-MED3",
            care_provider_hsa_id="SE2321000016-15CQ",
            client_id="demo",
        ),
        interaction="read",
        patient_id="p1",
        resource_types=["Condition"],
        request_id="r1",
    )
    asker = base["agent"][0]
    legacy = {
        **base,
        "agent": [
            {
                **asker,
                "extension": [
                    {"url": e["url"], "valueString": e["valueIdentifier"]["value"]}
                    for e in asker["extension"]
                ],
            },
            *base["agent"][1:],
        ],
    }
    for event in (base, legacy):
        assert patient_view(event, names, DEFAULT_AUDIENCES)["agent"][0]["who"] == {
            "display": "Medicinkliniken avd 3, Regionen"
        }


async def test_a_consent_stored_in_the_rivta_oid_reads_and_revokes_as_hl7_swedens(facade: Any) -> None:
    """A Consent stored before the facade wrote HL7 Sweden's system (still in the store as the RIVTA
    OID) is answered in HL7 Sweden's and enforced; a malformed PUT is a 400, never a 500."""
    legacy = stored(with_system(consent_body(pid(TOLVAN.pnr), recipient=REGION_PROVIDER), RIVTA_HSA_SYSTEM))
    async with facade(consent=False) as f:
        own = await seen(f)
        await f.client.server.app[STORE_KEY].add_consent(
            ConsentRow(legacy["id"], TOLVAN.pnr, "active", 1, legacy)
        )
        assert await seen(f) > own
        status, read = await f.get(f"{BASE}/Consent/{legacy['id']}")
        assert status == 200 and actor_systems(read) == {HSA_SYSTEM}
        status, bundle = await f.get(f"{BASE}/Consent", params={"patient": pid(TOLVAN.pnr)})
        assert [actor_systems(e["resource"]) for e in bundle["entry"]] == [{HSA_SYSTEM}]
        for actors in ([{"reference": "SE2321000016-15CQ"}], ["x"], [{"reference": {"identifier": 7}}]):
            broken = {**read, "status": "inactive", "provision": {**read["provision"], "actor": actors}}
            resp = await f.client.put(f"{BASE}/Consent/{legacy['id']}", json=broken, headers=JSON)
            assert resp.status == 400, actors
        await revoke(f, read, read)
        assert await seen(f) == own
