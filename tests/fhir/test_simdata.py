"""The simulators' more real data end to end: KVÅ procedures as Procedure, a patient known by a
samordningsnummer, and lab results whose sample was taken before the result was issued."""

from __future__ import annotations

from typing import Any

from fhir.resources.R4B.bundle import Bundle

from proxy.pnr import PNR_SYSTEM, SAMORDNING_SYSTEM, is_valid_pnr, normalise, system_of
from proxy.simulators.population import DEMO_PEOPLE, LENNART, LUCIA, TOLVAN
from tests.conftest import BASE, auth, pid, validate
from tests.source_status import statuses

KVA = "urn:oid:1.2.752.116.1.3.2.1.4"
LUCIA_ID = pid(LUCIA.pnr)


def resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def source(resource: dict[str, Any]) -> str:
    return str(resource["meta"]["source"]).rsplit(":", 1)[-1]


def codes(found: list[dict[str, Any]]) -> set[str]:
    return {r["code"]["coding"][0]["code"] for r in found}


# ---- procedures ----------------------------------------------------------------------------------


async def test_procedures_in_everything_with_their_encounter(facade: Any) -> None:
    async with facade() as f:
        _, bundle = await f.get(f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything", params={"_count": "500"})
    Bundle.model_validate(bundle)
    found = resources(bundle)
    by_id = {f"{r['resourceType']}/{r['id']}": r for r in found}
    procedures = [r for r in found if r["resourceType"] == "Procedure"]
    assert codes(procedures) == {"NCJ09", "DT016", "UGC12"}
    for r in procedures:
        validate(r)
        assert r["code"]["coding"][0]["system"] == KVA and r["code"]["coding"][0]["display"]
        assert source(r) == "cosmic"
        if "encounter" in r:  # the care contact it belongs to is in the same answer
            assert by_id[r["encounter"]["reference"]]["resourceType"] == "Encounter"
    reduction = next(r for r in procedures if r["code"]["coding"][0]["code"] == "NCJ09")
    assert by_id[reduction["reasonReference"][0]["reference"]]["code"]["coding"][0]["code"] == "S52.5"


async def test_procedure_search_date_code_status_and_read(facade: Any) -> None:
    url = f"{BASE}/Procedure"
    async with facade() as f:
        _, every = await f.get(url, params={"patient": pid(TOLVAN.pnr)})
        assert every["total"] == 3
        _, kva = await f.get(url, params={"patient": pid(TOLVAN.pnr), "code": f"{KVA}|NCJ09"})
        assert codes(resources(kva)) == {"NCJ09"}
        _, recent = await f.get(url, params={"patient": pid(TOLVAN.pnr), "date": "ge2025-01-01"})
        assert codes(resources(recent)) == {"UGC12"}
        _, done = await f.get(url, params={"patient": pid(LENNART.pnr), "status": "completed"})
        assert codes(resources(done)) == {"DF027", "XS026"}
        _, period = await f.get(url, params={"patient": pid(LENNART.pnr), "date": "2026-10-12"})
        assert codes(resources(period)) == {"XS026"}
        one = resources(kva)[0]
        status, read = await f.get(f"{url}/{one['id']}")
        assert status == 200 and read["id"] == one["id"]
        _, cs = await f.get(f"{BASE}/metadata")
        _, smart = await f.get(f"{BASE}/.well-known/smart-configuration")
    (rest,) = [r for r in cs["rest"][0]["resource"] if r["type"] == "Procedure"]
    assert {"patient", "date", "code", "status"} <= {p["name"] for p in rest["searchParam"]}
    assert rest["documentation"] == "Sources: cosmic"
    assert "patient/Procedure.rs" in smart["scopes_supported"]


async def test_procedures_follow_the_audience_policy_and_pdl(facade: Any) -> None:
    url = f"{BASE}/Procedure"
    tolvan = pid(TOLVAN.pnr)
    async with facade(consent=False) as f:
        _, clinician = await f.get(url, params={"patient": tolvan}, headers=auth("clinician"))
        _, ambulance = await f.get(url, params={"patient": tolvan}, headers=auth("ambulance"))
        _, patient = await f.get(url, params={"patient": tolvan}, headers=auth("patient", pnr=TOLVAN.pnr))
        _, everything = await f.get(
            f"{BASE}/Patient/{tolvan}/$everything", headers=auth("patient", pnr=TOLVAN.pnr)
        )
        _, homecare = await f.get(url, params={"patient": tolvan}, headers=auth("homecare"))
        hidden = next(r for r in resources(clinician) if r["code"]["coding"][0]["code"] == "UGC12")
        status, _ = await f.get(f"{url}/{hidden['id']}", headers=auth("patient", pnr=TOLVAN.pnr))
    # the region's own staff see the region's procedures, the bronchoscopy not yet told included
    assert codes(resources(clinician)) == codes(resources(ambulance)) == {"NCJ09", "DT016", "UGC12"}
    # the patient sees what the region approved for him, and nothing betrays the rest
    assert codes(resources(patient)) == {"NCJ09", "DT016"} and patient["total"] == 2
    assert "UGC12" not in str(everything) and "Bronkoskopi" not in str(everything)
    assert status == 404
    # the municipality without his consent: the region's records are not theirs
    assert homecare["total"] == 0


# ---- samordningsnummer ---------------------------------------------------------------------------


def test_lucia_has_a_valid_samordningsnummer() -> None:
    assert 61 <= int(LUCIA.pnr[6:8]) <= 91
    assert is_valid_pnr(LUCIA.pnr) and normalise(f"{LUCIA.pnr[:8]}-{LUCIA.pnr[8:]}") == LUCIA.pnr
    assert system_of(LUCIA.pnr) == SAMORDNING_SYSTEM
    assert LUCIA.birth_date.day == int(LUCIA.pnr[6:8]) - 60
    assert LUCIA in DEMO_PEOPLE and LUCIA.in_cosmic and LUCIA.in_npo and not LUCIA.in_viva


async def test_samordningsnummer_patient_end_to_end(facade: Any) -> None:
    async with facade() as f:
        status, search = await f.get(
            f"{BASE}/Patient", params={"identifier": f"{SAMORDNING_SYSTEM}|{LUCIA.pnr}"}
        )
        assert status == 200 and search["total"] == 1
        (patient,) = resources(search)
        assert patient["id"] == LUCIA_ID
        # a samordningsnummer is not a personnummer: asked under the wrong system, nobody
        _, wrong = await f.get(f"{BASE}/Patient", params={"identifier": f"{PNR_SYSTEM}|{LUCIA.pnr}"})
        assert wrong["total"] == 0
        status, bundle = await f.get(f"{BASE}/Patient/{LUCIA_ID}/$everything", params={"_count": "500"})
        _, own = await f.get(f"{BASE}/Patient/{LUCIA_ID}/$everything", headers=auth("patient", pnr=LUCIA.pnr))
    assert status == 200
    Bundle.model_validate(bundle)
    assert statuses(bundle) == {"cosmic": "answered", "viva": "answered", "npo": "answered"}
    found = resources(bundle)
    for r in found:
        validate(r)
    (patient,) = [r for r in found if r["resourceType"] == "Patient"]
    ids = [(i["system"], i["value"]) for i in patient["identifier"]]
    assert ids == [(SAMORDNING_SYSTEM, LUCIA.pnr)]
    assert patient["birthDate"] == LUCIA.birth_date.isoformat() == "1990-04-07"
    assert patient["name"][0]["given"] == ["Lucía"] and patient["gender"] == "female"
    per_source: dict[str, set[str]] = {}
    for r in found:
        per_source.setdefault(source(r), set()).add(r["resourceType"])
    assert {"Patient", "Condition", "Encounter", "Procedure", "Observation"} <= per_source["cosmic"]
    assert {"Observation", "Encounter"} <= per_source["npo"]
    assert "viva" not in per_source
    # the wound diagnosis Cosmic published to NPÖ comes out once, from both
    wounds = [r for r in found if r["resourceType"] == "Condition"]
    assert len(wounds) == 1
    # her own view: her record, as approved for her
    assert resources(own) and {r["resourceType"] for r in resources(own)} >= {"Patient", "Procedure"}


# ---- lab: sampled before issued ------------------------------------------------------------------


async def test_every_lab_result_was_sampled_before_it_was_issued(facade: Any) -> None:
    from proxy.timeutil import fhir_range

    async with facade() as f:
        seen = {"cosmic": 0, "npo": 0}
        for person in DEMO_PEOPLE:
            _, bundle = await f.get(f"{BASE}/Patient/{pid(person.pnr)}/$everything", params={"_count": "500"})
            for r in resources(bundle):
                if r["resourceType"] != "Observation":
                    continue
                if "laboratory" not in {
                    c.get("code") for cat in r.get("category", []) for c in cat.get("coding", [])
                }:
                    continue
                assert "effectiveDateTime" in r and "issued" in r, r["id"]
                assert fhir_range(r["effectiveDateTime"])[0] < fhir_range(r["issued"])[0], r["id"]
                seen[source(r)] += 1
    assert seen["cosmic"] >= 5 and seen["npo"] >= 45


async def test_probes_a_withheld_procedure_leaves_no_trace_for_the_patient(facade: Any) -> None:
    """A patient probing for the bronchoscopy by code, by count, by id or as another patient."""
    url = f"{BASE}/Procedure"
    tolvan = pid(TOLVAN.pnr)
    me = auth("patient", pnr=TOLVAN.pnr)
    async with facade() as f:
        _, clinician = await f.get(url, params={"patient": tolvan})
        hidden = next(r for r in resources(clinician) if r["code"]["coding"][0]["code"] == "UGC12")
        _, by_code = await f.get(url, params={"patient": tolvan, "code": f"{KVA}|UGC12"}, headers=me)
        _, count = await f.get(url, params={"patient": tolvan, "_summary": "count"}, headers=me)
        _, by_id = await f.get(url, params={"patient": tolvan, "_id": hidden["id"]}, headers=me)
        _, by_date = await f.get(url, params={"patient": tolvan, "date": "ge2025-01-01"}, headers=me)
        # another patient (Lucía) may not read Tolvan's procedures at all
        status, other = await f.get(f"{url}/{hidden['id']}", headers=auth("patient", pnr=LUCIA.pnr))
    assert by_code["total"] == 0 and count["total"] == 2 and by_id["total"] == 0 and by_date["total"] == 0
    for answer in (by_code, by_id, by_date):  # (the self link repeats the asker's own query)
        entries = str(answer.get("entry", []))
        assert hidden["id"] not in entries and "UGC12" not in entries and "Bronkoskopi" not in entries
    assert status == 404 and hidden["id"] not in str(other)


async def test_probes_malformed_samordningsnummer_are_refused(facade: Any) -> None:
    day_92 = LUCIA.pnr[:6] + "92" + LUCIA.pnr[8:]  # day 92 - 60 = 32: no such date
    bad_check = LUCIA.pnr[:-1] + str((int(LUCIA.pnr[-1]) + 1) % 10)
    async with facade() as f:
        for value in (day_92, bad_check):
            status, body = await f.get(
                f"{BASE}/Patient", params={"identifier": f"{SAMORDNING_SYSTEM}|{value}"}
            )
            assert status == 400 and body["resourceType"] == "OperationOutcome"
            assert value not in str(body)  # the number is not echoed back
