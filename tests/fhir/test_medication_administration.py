"""Viva's administrations as MedicationAdministration end to end, and ATC as receivers know it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fhir.resources.R4B.bundle import Bundle

from proxy.simulators.population import DEMO_PEOPLE, GRETA, TOLVAN
from tests.conftest import BASE, auth, pid, validate, walk

GRETA_ID = pid(GRETA.pnr)
ATC = "http://www.whocc.no/atc"
ATC_OID = "urn:oid:1.2.752.129.2.2.3.1.1"


def resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


async def test_greta_administrations_in_everything_linked_to_their_statements(facade: Any) -> None:
    async with facade() as f:
        status, bundle = await f.get(f"{BASE}/Patient/{GRETA_ID}/$everything", params={"_count": "500"})
    assert status == 200
    Bundle.model_validate(bundle)
    found = resources(bundle)
    admins = [r for r in found if r["resourceType"] == "MedicationAdministration"]
    statements = {r["id"]: r for r in found if r["resourceType"] == "MedicationStatement"}
    by_status: dict[str, int] = {}
    for r in admins:
        validate(r)
        by_status[r["status"]] = by_status.get(r["status"], 0) + 1
        (ref,) = r["supportingInformation"]
        assert ref["reference"].split("/", 1)[1] in statements  # the link resolves inside the Bundle
    assert by_status == {"completed": 24, "not-done": 2}
    assert all("note" not in s for s in statements.values() if s["meta"]["source"].endswith("viva"))


async def test_search_by_patient_with_status_code_and_effective_time(facade: Any) -> None:
    async with facade() as f:
        url = f"{BASE}/MedicationAdministration"
        _, every = await f.get(url, params={"patient": GRETA_ID, "_count": "500"})
        assert every["total"] == 26
        _, not_done = await f.get(url, params={"patient": GRETA_ID, "status": "not-done"})
        assert sorted(
            r["medicationCodeableConcept"]["coding"][0]["display"] for r in resources(not_done)
        ) == [
            "apixaban",
            "furosemide",
        ]
        _, apixaban = await f.get(url, params={"patient": GRETA_ID, "code": f"{ATC}|B01AF02"})
        assert apixaban["total"] == 3
        _, last_night = await f.get(
            url, params={"patient": GRETA_ID, "effective-time": "ge2026-11-01T18:00:00+01:00"}
        )
        (dose,) = resources(last_night)
        assert dose["status"] == "not-done" and dose["effectiveDateTime"] == "2026-11-01T20:00:00+01:00"
        _, reason = await f.get(url, params={"patient": GRETA_ID, "reason-not-given": "182895007"})
        assert reason["total"] == 1
        # readable by id
        status, read = await f.get(f"{url}/{dose['id']}")
        assert status == 200 and read["id"] == dose["id"]
        validate(read)


async def test_capability_statement_and_smart_scopes_name_the_type(facade: Any) -> None:
    async with facade() as f:
        _, cs = await f.get(f"{BASE}/metadata")
        _, smart = await f.get(f"{BASE}/.well-known/smart-configuration")
    (rest,) = [r for r in cs["rest"][0]["resource"] if r["type"] == "MedicationAdministration"]
    assert {"patient", "effective-time", "status", "code", "reason-not-given"} <= {
        p["name"] for p in rest["searchParam"]
    }
    assert "patient/MedicationAdministration.rs" in smart["scopes_supported"]


async def test_pdl_and_audience_apply_to_administrations(facade: Any) -> None:
    url = f"{BASE}/MedicationAdministration"
    async with facade(consent=False) as f:
        # the region's clinician without consent: the municipality's record is not theirs
        _, clinician = await f.get(url, params={"patient": GRETA_ID}, headers=auth("clinician"))
        # the municipality's own home-care staff and the patient herself see them
        _, homecare = await f.get(url, params={"patient": GRETA_ID}, headers=auth("homecare"))
        _, patient = await f.get(url, params={"patient": GRETA_ID}, headers=auth("patient", pnr=GRETA.pnr))
    assert clinician["total"] == 0 and not resources(clinician)
    assert homecare["total"] == 26
    assert patient["total"] == 26


async def test_atc_is_whocc_with_substance_displays_everywhere(facade: Any) -> None:
    async with facade() as f:
        codings = []
        for person in DEMO_PEOPLE:
            _, bundle = await f.get(f"{BASE}/Patient/{pid(person.pnr)}/$everything", params={"_count": "500"})
            text = str(bundle)
            assert ATC_OID not in text and "1.2.752.129.2.2.3.1.1" not in text
            for r in resources(bundle):
                for key, value in walk(r):
                    if key == "system" and value == ATC:
                        codings.append(r)
                for _, node in _codings(r):
                    if node.get("system") == ATC and "display" in node:
                        display = node["display"]
                        # a substance, not a product: no strength, no form
                        assert not any(ch.isdigit() for ch in display), display
                        assert "tablett" not in display.lower() and " mg" not in display, display
    assert len(codings) >= 10
    async with facade() as f:
        _, tolvan = await f.get(f"{BASE}/MedicationStatement", params={"patient": pid(TOLVAN.pnr)})
    ramipril = [
        c
        for r in resources(tolvan)
        for c in r["medicationCodeableConcept"]["coding"]
        if c["system"] == ATC and c["code"] == "C09AA05"
    ]
    assert ramipril and {c.get("display") for c in ramipril} == {"ramipril"}


def test_no_mapping_or_code_map_writes_atc_as_the_oid() -> None:
    mappings = Path(__file__).resolve().parents[2] / "mappings"
    users = []
    for path in sorted(mappings.rglob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        assert "1.2.752.129.2.2.3.1.1" not in text, path.name
        if ATC in text:
            users.append(path.relative_to(mappings).as_posix())
    assert {
        "viva/lakemedelslista.yaml",
        "viva/lakemedelsadministreringar.yaml",
        "cosmic/medications.yaml",
    } <= set(users)


def _codings(node: Any, key: str = "") -> Any:
    """Every (element name, Coding-like dict) in a resource."""
    if isinstance(node, dict):
        if "system" in node and "code" in node:
            yield key, node
        for k, v in node.items():
            yield from _codings(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from _codings(v, key)
