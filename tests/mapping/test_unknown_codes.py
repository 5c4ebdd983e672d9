"""Nothing vanishes on an unknown code (issue 23).

A kind or status a mapping's code maps do not know is mapped conservatively — the record is shown,
the element gets its safe value (FHIR's ``unknown`` where the value set has one, a Flag's status
from its validity period, Encounter.class NullFlavor UNK, else the element left out), and the
resource carries the source's own code in an ``urn:fhir-facade:unmapped-code`` extension (a Coding
whose system names the source and its field) so a reader sees that something was not understood.
Rule and list: mappings/README.md, "Unknown codes".

Each case takes a real simulator record, gives it a code no map knows, and runs the real mapping;
on the original mappings each of these records either vanished (Cosmic's alert kinds), came out
invalid (a required status missing) or lost the code without a trace.
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

import pytest
import yaml
from fhir.resources.R4B.bundle import Bundle

from proxy.mapping import validate as validate_module
from proxy.mapping.compiler import CompiledMapping
from proxy.mapping.engine import map_records
from proxy.simulators import npo, viva
from proxy.simulators import population as pop
from proxy.timeutil import SWEDEN
from tests.conftest import BASE, auth, pid
from tests.mapping import test_compiler as tc
from tests.mapping import test_cosmic_mappings as cm
from tests.mapping import test_npo_mappings as nm
from tests.mapping import test_viva_mappings as vm

UNMAPPED = "urn:fhir-facade:unmapped-code"
FLAG_CATEGORY = "http://terminology.hl7.org/CodeSystem/flag-category"
NULL_FLAVOR_UNK = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-NullFlavor",
    "code": "UNK",
    "display": "unknown",
}


def mark(system: str, code: str) -> dict[str, Any]:
    return {"url": UNMAPPED, "valueCoding": {"system": system, "code": code}}


def marks(resource: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in resource.get("extension", []) if e.get("url") == UNMAPPED]


def map_one(mapping: CompiledMapping, body: Any, ctx: dict[str, str]) -> dict[str, Any]:
    out, skipped = map_records(mapping, body, ctx, source_uri="urn:fhir-facade:source:test", priority=1)
    assert skipped == 0
    assert len(out) == 1, [r.origin_key for r in out]
    cm.validate(out[0].resource)  # the R4B models: a required element missing fails here
    return out[0].resource


# ---- Cosmic ---------------------------------------------------------------------------------------


@pytest.fixture
def client(cosmic_client: Any) -> Any:
    return cosmic_client


def cosmic_record(kind: str, record_id: str, who: pop.Person = pop.TOLVAN) -> dict[str, Any]:
    id_field = cm.RAW[kind][1] if kind in cm.RAW else None
    (rec,) = [r for r in cm.RAW_DATA[who.pnr][kind] if id_field is None or r[id_field] == record_id]
    return copy.deepcopy(rec)


def cosmic(mapping: str, rec: dict[str, Any]) -> dict[str, Any]:
    return map_one(cm.BY_NAME[mapping], {"items": [rec]}, cm.context(pop.TOLVAN))


async def test_a_cosmic_alert_of_a_kind_the_mapping_does_not_know_is_a_flag(client: Any) -> None:
    """Simulator data: Lennart's MRSA alert (kind INFECTION) used to be in neither the Flag mapping
    nor the allergy mapping — and was in no answer."""
    mapped = await cm.fetch_and_map(client, pop.LENNART)
    flags = {r.origin_key.rsplit("|", 1)[1]: r.resource for r in mapped["alerts"]}
    assert "A-320004" not in {r.origin_key.rsplit("|", 1)[1] for r in mapped["hypersensitivity"]}
    flag = flags["A-320004"]
    cm.validate(flag)
    assert flag["status"] == "active"
    assert flag["category"] == [
        {"coding": [{"system": "urn:fhir-facade:cosmic:alert-kind", "code": "INFECTION"}]}
    ]
    assert flag["code"]["coding"] == [{"system": "urn:fhir-facade:cosmic:alert-code", "code": "MRSA"}]
    assert flag["code"]["text"].startswith("MRSA")
    assert marks(flag) == [mark("urn:fhir-facade:cosmic:alert-kind", "INFECTION")]
    # the known kinds carry no mark
    assert all(marks(f) == [] for rid, f in flags.items() if rid != "A-320004")


def test_a_cosmic_alert_without_a_kind_is_a_flag() -> None:
    rec = cosmic_record("alerts", "A-300001")
    del rec["alertKind"]
    flag = cosmic("alerts", rec)
    assert flag["status"] == "active" and "category" not in flag
    assert marks(flag) == []  # not recorded is not an unknown code


def test_a_cosmic_alert_state_the_map_does_not_know_reads_from_the_validity_period(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(validate_module, "now", lambda: datetime(2026, 6, 1, 12, 0, tzinfo=SWEDEN))
    rec = cosmic_record("alerts", "A-300001")  # Tolvan's Ej HLR
    rec["state"] = "PENDING_REVIEW"
    flag = cosmic("alerts", rec)
    assert flag["status"] == "active"  # no end: shown as in force, and marked
    assert flag["category"][0]["coding"][0]["code"] == "advance-directive"
    assert marks(flag) == [mark("urn:fhir-facade:cosmic:alert-state", "PENDING_REVIEW")]
    rec["validTo"] = "2026-05-31 12:00"  # an end that has passed: inactive
    assert cosmic("alerts", rec)["status"] == "inactive"
    rec["validTo"] = "2026-06-30 12:00"
    assert cosmic("alerts", rec)["status"] == "active"


def test_cosmic_statuses_the_maps_do_not_know() -> None:
    contact = cosmic_record("carecontacts", "C-500001")
    contact["state"], contact["contactType"] = "TRIAGED", "DAYCARE"
    enc = cosmic("carecontacts", contact)
    assert enc["status"] == "unknown"
    assert enc["class"] == NULL_FLAVOR_UNK
    assert marks(enc) == [
        mark("urn:fhir-facade:cosmic:contact-state", "TRIAGED"),
        mark("urn:fhir-facade:cosmic:contact-type", "DAYCARE"),
    ]

    lab = cosmic_record("labresults", "L-400001")
    lab["state"] = "CORRECTED"
    obs = cosmic("labresults", lab)
    assert obs["status"] == "unknown"
    assert marks(obs) == [mark("urn:fhir-facade:cosmic:lab-state", "CORRECTED")]

    lab["abnormal"] = "maybe"  # Cosmic's flag is a boolean: anything else is not understood
    obs = cosmic("labresults", lab)
    assert "interpretation" not in obs  # no Coding with a system and no code
    assert marks(obs)[1:] == [mark("urn:fhir-facade:cosmic:lab-abnormal", "maybe")]
    del lab["abnormal"]
    assert "interpretation" not in cosmic("labresults", lab)

    med = cosmic_record("medications", "M-200001")
    med["state"] = "PAUSED"
    stmt = cosmic("medications", med)
    assert stmt["status"] == "unknown"
    assert marks(stmt) == [mark("urn:fhir-facade:cosmic:medication-state", "PAUSED")]

    dia = cosmic_record("diagnoses", "D-100001")
    dia["state"] = "SUSP"
    cond = cosmic("diagnoses", dia)
    assert "clinicalStatus" not in cond  # no Coding with a system and no code
    assert marks(cond) == [mark("urn:fhir-facade:cosmic:diagnosis-state", "SUSP")]

    note = cosmic_record("notes", "N-600001")
    note["state"] = "DRAFT"
    doc = cosmic("notes", note)
    assert "docStatus" not in doc
    assert marks(doc) == [mark("urn:fhir-facade:cosmic:note-state", "DRAFT")]


def test_cosmic_allergy_codes_the_maps_do_not_know() -> None:
    rec = cosmic_record("alerts", "A-300002")  # Tolvan's penicillin allergy
    rec["certainty"], rec["severity"], rec["alertCode"] = "PROBABLE", "LIFE_THREATENING", "NICKEL"
    allergy = cosmic("hypersensitivity", rec)
    assert "verificationStatus" not in allergy and "category" not in allergy
    assert "severity" not in allergy["reaction"][0]
    assert allergy["clinicalStatus"]["coding"][0]["code"] == "active"
    assert marks(allergy) == [
        mark("urn:fhir-facade:cosmic:alert-code", "NICKEL"),
        mark("urn:fhir-facade:cosmic:allergy-certainty", "PROBABLE"),
        mark("urn:fhir-facade:cosmic:allergy-severity", "LIFE_THREATENING"),
    ]
    rec = cosmic_record("alerts", "A-300002")
    rec["state"] = "UNDER_REVIEW"  # the validity period decides (no end: active), and it is marked
    allergy = cosmic("hypersensitivity", rec)
    assert [c["code"] for c in allergy["clinicalStatus"]["coding"]] == ["active"]
    assert marks(allergy) == [mark("urn:fhir-facade:cosmic:alert-state", "UNDER_REVIEW")]


def test_known_cosmic_codes_carry_no_mark() -> None:
    for who in (pop.TOLVAN, pop.LENNART):
        for kind, (raw_kind, _) in cm.RAW.items():
            records = cm.RAW_DATA[who.pnr][raw_kind]
            out, _ = map_records(
                cm.BY_NAME[kind], {"items": records}, cm.context(who), source_uri="urn:x", priority=1
            )
            for r in out:
                if r.origin_key.endswith("|A-320004"):
                    continue  # the unknown kind above
                assert marks(r.resource) == [], (kind, r.origin_key)


# ---- NPÖ ------------------------------------------------------------------------------------------


def npo_record(element: str) -> dict[str, Any]:
    return copy.deepcopy(nm.RAW[pop.LENNART.pnr][element][0])


def npo_map(mapping: str, rec: dict[str, Any]) -> dict[str, Any]:
    _, contract, element = nm.EXPECTED[mapping]
    body = {"Envelope": {"Body": {f"{contract}Response": {element: npo._drop_none(rec)}}}}
    return map_one(nm.BY_NAME[mapping], body, nm.context(pop.LENNART))


def test_an_npo_alert_of_an_unknown_type_keeps_its_type_as_its_category() -> None:
    (rec,) = [
        r
        for r in nm.RAW[pop.LENNART.pnr]["alertInformation"]
        if r["alertInformationBody"]["typeOfAlertInformation"]["code"] == "BEH"
    ]
    rec = copy.deepcopy(rec)
    rec["alertInformationBody"]["typeOfAlertInformation"].update(code="IMP", displayName="Implantat")
    flag = npo_map("alerts-flag", rec)
    system = f"urn:oid:{npo.KV_ALERT_TYPE_OID}"
    assert flag["category"] == [{"coding": [{"system": system, "code": "IMP"}], "text": "Implantat"}]
    assert all(c["system"] != FLAG_CATEGORY for cat in flag["category"] for c in cat["coding"])
    assert marks(flag) == [mark(system, "IMP")]


def test_npo_codes_the_maps_do_not_know() -> None:
    note = npo_record("careDocumentation")
    note["careDocumentationBody"]["clinicalDocumentNote"]["clinicalDocumentNoteCode"] = "kon"
    doc = npo_map("care-documentation", note)
    system = "urn:fhir-facade:npo:clinical-document-note-code"
    assert doc["type"]["coding"] == [{"system": system, "code": "kon"}]
    assert marks(doc) == [mark(system, "kon")]

    contact = npo_record("careContact")
    contact["careContactBody"].update(careContactStatus="9", careContactCode="7")
    enc = npo_map("care-contacts", contact)
    assert enc["status"] == "unknown" and enc["class"] == NULL_FLAVOR_UNK
    assert marks(enc) == [
        mark("urn:fhir-facade:npo:care-contact-status", "9"),
        mark("urn:fhir-facade:npo:care-contact-code", "7"),
    ]

    lab = npo_record("laboratoryOrderOutcome")
    lab["laboratoryOrderOutcomeBody"]["resultType"] = "KOMP"
    obs = npo_map("laboratory-outcomes", lab)
    assert obs["status"] == "unknown"
    assert marks(obs) == [mark("urn:fhir-facade:npo:result-type", "KOMP")]

    status = npo_record("functionalStatusAssessment")
    status["functionalStatusAssessmentBody"]["assessmentCategory"] = "ovr-ovr"
    fs = npo_map("functional-status", status)
    assert fs["category"][1] == {"text": "ovr-ovr"}
    assert marks(fs) == [mark("urn:fhir-facade:npo:assessment-category", "ovr-ovr")]

    med = npo_record("medicationMedicalRecord")
    med["medicationMedicalRecordBody"]["medicationPrescription"]["prescriptionStatus"] = "Paused"
    stmt = npo_map("medication-history", med)
    assert stmt["status"] == "unknown"
    assert marks(stmt) == [mark("urn:fhir-facade:npo:prescription-status", "Paused")]


def test_known_npo_codes_carry_no_mark() -> None:
    for mapping, (_, contract, element) in nm.EXPECTED.items():
        for who in pop.DEMO_PEOPLE:
            records = nm.RAW.get(who.pnr, {}).get(element, [])
            body = {
                "Envelope": {"Body": {f"{contract}Response": {element: [npo._drop_none(r) for r in records]}}}
            }
            out, _ = map_records(nm.BY_NAME[mapping], body, nm.context(who), source_uri="urn:x", priority=2)
            assert all(marks(r.resource) == [] for r in out), mapping


# ---- Viva -----------------------------------------------------------------------------------------

VIVA_DATA = viva.build_data(vm.PEOPLE)


def viva_map(mapping: str, kind: str, rec: dict[str, Any]) -> dict[str, Any]:
    return map_one(vm.BY_NAME[f"viva/{mapping}"], {kind: [rec]}, vm.context(pop.TOLVAN))


@pytest.mark.parametrize(
    ("mapping", "kind", "field", "system"),
    [
        ("hembesok", "hembesok", "status", "urn:fhir-facade:viva:besok-status"),
        ("lakemedelslista", "lakemedelslista", "status", "urn:fhir-facade:viva:ordination-status"),
        ("vardplaner", "vardplaner", "status", "urn:fhir-facade:viva:vardplan-status"),
    ],
)
def test_viva_statuses_the_maps_do_not_know(mapping: str, kind: str, field: str, system: str) -> None:
    records = [
        r for r in VIVA_DATA[pop.TOLVAN.pnr][kind] if r.get("besokstyp", "HEMSJUKVARD") == "HEMSJUKVARD"
    ]
    rec = copy.deepcopy(records[0])
    rec[field] = "PAUSAD"
    resource = viva_map(mapping, kind, rec)
    assert resource["status"] == "unknown"
    assert marks(resource) == [mark(system, "PAUSAD")]


def test_a_viva_administration_status_the_map_does_not_know() -> None:
    ordination = copy.deepcopy(
        next(r for r in VIVA_DATA[pop.TOLVAN.pnr]["lakemedelslista"] if r.get("administreringar"))
    )
    ordination["administreringar"] = [dict(ordination["administreringar"][0], status="DELVIS_GIVEN")]
    admin = viva_map("lakemedelsadministreringar", "lakemedelslista", ordination)
    assert admin["status"] == "unknown"
    assert marks(admin) == [mark("urn:fhir-facade:viva:administrering-status", "DELVIS_GIVEN")]


# ---- the mapping language: conditions on code maps, a computed default -------------------------


def test_mapped_and_unmapped_conditions() -> None:
    fields = {
        "known": {"$const": True, "$when": {"path": "s", "mapped": "test-status"}},
        "unknown": {"$const": True, "$when": {"path": "s", "unmapped": "test-status"}},
        "inline": {"$const": True, "$when": {"path": "s", "unmapped": {"X": 1}}},
    }
    assert tc.build(fields, {"s": "A"}) == {"known": True, "inline": True}
    assert tc.build(fields, {"s": "Q"}) == {"unknown": True, "inline": True}
    assert tc.build(fields, {"s": "X"}) == {"unknown": True}
    assert tc.build(fields, {}) == {}  # missing: neither known nor unknown
    assert tc.build(fields, {"s": ""}) == {}
    assert tc.build(fields, {"s": ["Q", "A"]}) == {"known": True, "inline": True}


def test_an_unknown_code_map_in_a_condition_names_the_key() -> None:
    msg = tc.compile_error(tc.doc({"x": {"$const": 1, "$when": {"path": "s", "unmapped": "no-such-map"}}}))
    assert msg.startswith(f"{tc.FILE}: fields.x.$when.unmapped: unknown code map")


def test_a_default_may_be_a_value_spec() -> None:
    fields = {
        "status": {
            "$path": "s",
            "$map": "test-status",
            "$default": {"$const": "inactive", "$when": {"path": "ended", "equals": True}, "$else": "active"},
        }
    }
    assert tc.build(fields, {"s": "I"}) == {"status": "inactive"}
    assert tc.build(fields, {"s": "Q"}) == {"status": "active"}
    assert tc.build(fields, {"s": "Q", "ended": True}) == {"status": "inactive"}
    assert tc.build(fields, {"ended": True}) == {"status": "inactive"}


def test_npo_allergy_codes_the_maps_do_not_know() -> None:
    (rec,) = [
        r
        for r in nm.RAW[pop.LENNART.pnr]["alertInformation"]
        if (r["alertInformationBody"].get("hypersensitivity") or {}).get("degreeOfCertainty")
        and r["alertInformationBody"]["hypersensitivity"]["degreeOfSeverity"]
    ][:1]
    rec = copy.deepcopy(rec)
    hyp = rec["alertInformationBody"]["hypersensitivity"]
    hyp["typeOfHypersensitivity"]["code"] = "KON"  # contact allergy: no category the map knows
    hyp["degreeOfCertainty"]["code"] = "SAN"  # "sannolik": not in the simulator's list
    hyp["degreeOfSeverity"]["code"] = "LIV"
    allergy = npo_map("alerts-allergy", rec)
    assert "category" not in allergy and "verificationStatus" not in allergy and "reaction" not in allergy
    assert [m["valueCoding"]["code"] for m in marks(allergy)] == ["KON", "SAN", "LIV"]
    assert all(m["valueCoding"]["system"].startswith("urn:oid:1.2.752.") for m in marks(allergy))


def test_a_viva_reason_and_an_npo_flag_the_maps_do_not_know() -> None:
    ordination = copy.deepcopy(
        next(r for r in VIVA_DATA[pop.TOLVAN.pnr]["lakemedelslista"] if r.get("administreringar"))
    )
    ordination["administreringar"] = [
        dict(ordination["administreringar"][0], status="EJ_GIVEN", orsak="SJUKHUS")
    ]
    admin = viva_map("lakemedelsadministreringar", "lakemedelslista", ordination)
    assert admin["status"] == "not-done" and admin["statusReason"] == [{"text": "Ej given"}]
    assert marks(admin) == [mark("urn:fhir-facade:viva:administrering-orsak", "SJUKHUS")]

    lab = npo_record("laboratoryOrderOutcome")
    lab["laboratoryOrderOutcomeBody"]["analysis"]["analysisOutcome"]["pathologicalFlag"] = "H"
    obs = npo_map("laboratory-outcomes", lab)
    assert "interpretation" not in obs
    assert marks(obs) == [mark("urn:fhir-facade:npo:pathological-flag", "H")]


# ---- every code map a mapping reads a source's code through is guarded --------------------------

# Maps whose miss loses nothing, each with the reason; every other `$map` over a `$path` must have an
# unmapped-code extension on the same path and map in the same file.
LOSES_NOTHING = {
    "atc-substance": "a display: the ATC code and the product text go out whatever the map knows",
    "cosmic-alert-flag-category-display": "the display beside a mapped code",
    "cosmic-lab-interpretation-display": "the display beside a mapped code",
    "cosmic-note-type": "display and text: the note type is kept as a coding of Cosmic's own system",
    "npo-note-type-text": "the text beside npo-note-type",
    "cosmic-ucum": "the unit's text is kept; only the UCUM code needs the map",
    "npo-ucum": "the unit's text is kept; only the UCUM code needs the map",
    "cosmic-care-limitation-snomed": "a SNOMED CT coding beside the local code, which is kept",
    "npo-care-limitation-snomed": "a SNOMED CT coding beside the local code, which is kept",
    "viva-icf-niva": "display and text: the qualifier is kept in the code (d450.2)",
    "viva-besokstyp": "text: only HEMSJUKVARD visits are mapped at all (a privacy filter)",
    "viva-administrering-ej-given": "derived from the status, whose map is guarded",
    "viva-administrering-vagrat": "derived from the status, whose map is guarded",
    "cosmic-sex": "Patient.gender: FHIR's own unknown; Patients merge element-wise across sources",
    "viva-kon": "Patient.gender: FHIR's own unknown; Patients merge element-wise across sources",
}


def _walk(node: Any) -> Any:
    yield node
    if isinstance(node, dict):
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def test_every_code_map_over_a_source_code_is_guarded() -> None:
    unguarded = []
    for file in sorted((cm.MAPPINGS_DIR).glob("*/*.yaml")):
        if file.parent.name == "terminology":
            continue
        doc = yaml.safe_load(file.read_text())
        guarded = set()
        for ext in doc["fields"].get("extension") or []:
            if ext.get("url") == UNMAPPED:
                conds = ext["$when"] if isinstance(ext["$when"], list) else [ext["$when"]]
                guarded |= {(c["path"], c["unmapped"]) for c in conds if "unmapped" in c}
        for node in _walk(doc["fields"]):
            if isinstance(node, dict) and isinstance(node.get("$map"), str) and "$path" in node:
                if node["$map"] not in LOSES_NOTHING and (node["$path"], node["$map"]) not in guarded:
                    unguarded.append(f"{file.parent.name}/{file.name}: {node['$path']} via {node['$map']}")
    assert unguarded == []


# ---- end to end: the alert of an unknown kind in the answer -------------------------------------


@pytest.mark.parametrize("audience", ["clinician", "ambulance", "patient"])
async def test_lennarts_alert_of_an_unknown_kind_is_in_the_answer(facade: Any, audience: str) -> None:
    claims = {"pnr": pop.LENNART.pnr} if audience == "patient" else {}
    async with facade() as f:
        status, bundle = await f.get(
            f"{BASE}/Flag", params={"patient": pid(pop.LENNART.pnr)}, headers=auth(audience, **claims)
        )
    assert status == 200
    Bundle.model_validate(bundle)
    flags = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "match"]
    (mrsa,) = [f for f in flags if any(c.get("code") == "MRSA" for c in f["code"]["coding"])]
    assert mrsa["status"] == "active"
    assert marks(mrsa) == [mark("urn:fhir-facade:cosmic:alert-kind", "INFECTION")]


@pytest.mark.parametrize("state", ["ACTIVE ", " active", "PÅ\nGÅR", "A  B\t", "x" * 2000])
def test_an_unknown_code_with_odd_whitespace_is_still_valid_fhir(state: str) -> None:
    """The source's code is echoed as FHIR ``code`` text (trimmed, single spaces): whatever the
    backend sends, the resource stays valid — a mark must never make the record unsendable."""
    rec = cosmic_record("alerts", "A-300001")
    rec["state"], rec["alertKind"] = state, state
    flag = cosmic("alerts", rec)  # validated
    code = " ".join(state.split())
    assert marks(flag) == [
        mark("urn:fhir-facade:cosmic:alert-kind", code),
        mark("urn:fhir-facade:cosmic:alert-state", code),
    ]
    assert flag["category"] == [{"coding": [{"system": "urn:fhir-facade:cosmic:alert-kind", "code": code}]}]
