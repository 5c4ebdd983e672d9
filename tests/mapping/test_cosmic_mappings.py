"""The Cosmic mappings (mappings/cosmic/*.yaml) over the Cosmic simulator's real answers.

Every resource must validate against the R4B models, and the domain's facts must survive the trip:
the threat flag carries its label, care limitations and allergies come out of one alert list, lab
values lose their decimal comma, encounter reasons point at the Conditions diagnoses.yaml builds.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from proxy.mapping.engine import map_records
from proxy.simulators import cosmic
from proxy.simulators import population as pop
from proxy.types import MappedResource
from tests import contract, r4

MAPPINGS_DIR = contract.MAPPINGS_DIR
SOURCE_URI = contract.COSMIC.source_uri
PEOPLE = contract.PEOPLE["cosmic"]
GENERATED = [p for p in PEOPLE if p.generated]
COSMIC_PEOPLE = [p for p in PEOPLE if p.in_cosmic]
EXPECTED = {
    "patient": "Patient",
    "diagnoses": "Condition",
    "medications": "MedicationStatement",
    "alerts": "Flag",
    "hypersensitivity": "AllergyIntolerance",
    "labresults": "Observation",
    "carecontacts": "Encounter",
    "notes": "DocumentReference",
    "vaccinations": "Immunization",
    "threats": "Flag",
    "procedures": "Procedure",
}
# the kinds only the facade's writes fill (issue 22; tests/simulators/test_writes.py reads them back)
WRITTEN = {"vitalsigns": "Observation", "administrations": "MedicationAdministration"}
# Which raw list (and record id field) each mapping reads.
RAW = {
    "diagnoses": ("diagnoses", "diagnosisId"),
    "medications": ("medications", "medicationId"),
    "alerts": ("alerts", "alertId"),
    "hypersensitivity": ("alerts", "alertId"),
    "labresults": ("labresults", "resultId"),
    "carecontacts": ("carecontacts", "contactId"),
    "notes": ("notes", "noteId"),
    "vaccinations": ("vaccinations", "vaccinationId"),
    "threats": ("threats", "threatId"),
    "procedures": ("procedures", "procedureId"),
}
THREAT_LABEL = {
    "system": "urn:fhir-facade:security-label",
    "code": "THREAT",
    "display": "Threat flag - ambulance only",
}
ATC = "http://www.whocc.no/atc"  # WHO's URI, as receivers know it (not the Swedish OID)
INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{2}:\d{2}$")


MAPPINGS = contract.COSMIC.mappings
BY_NAME = contract.COSMIC.by_name
RAW_DATA = cosmic.build_data(PEOPLE)
patient_id = contract.COSMIC.patient_id
context = contract.COSMIC.context

Mapped = contract.Mapped


async def fetch_and_map(client: Any, person: pop.Person) -> Mapped:
    """Every Cosmic mapping over the simulator's answers for ``person`` (tests/contract.py)."""
    return await contract.map_all(contract.COSMIC, client, person)


@pytest.fixture
def client(cosmic_client: Any) -> Any:
    return cosmic_client


@pytest.fixture
async def tolvan(client: Any) -> Mapped:
    return await fetch_and_map(client, pop.TOLVAN)


def only(resources: Sequence[MappedResource], record: str) -> dict[str, Any]:
    """The one resource built from the Cosmic record with this id (its origin ends with the id)."""
    found = [r.resource for r in resources if r.origin_key.endswith("|" + record)]
    assert len(found) == 1, (record, [r.origin_key for r in resources])
    return found[0]


def validate(resource: dict[str, Any]) -> None:
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    assert r4.validate(resource) == [], r4.validate(resource)  # and against R4 itself (tests/r4.py)


def labels(resource: dict[str, Any]) -> list[dict[str, str]]:
    return list(resource.get("meta", {}).get("security", []))


# ---- every mapping, every patient ---------------------------------------------------------------


def test_all_cosmic_mappings_compile() -> None:
    assert {name: m.resource_type for name, m in BY_NAME.items()} == EXPECTED | WRITTEN
    assert all(m.backend == "cosmic" for m in MAPPINGS)
    for name, m in BY_NAME.items():
        if name != "patient":
            assert m.record_id is not None and m.origin is not None
            assert m.care_provider is not None and m.care_unit is not None, name


@pytest.mark.parametrize("person", PEOPLE, ids=lambda p: f"{p.given}-{p.pnr}")
async def test_every_resource_validates(client: Any, person: pop.Person) -> None:
    mapped = await fetch_and_map(client, person)
    if not person.in_cosmic:
        assert all(not rs for rs in mapped.values())
        return
    raw = RAW_DATA[person.pnr]
    pid = patient_id(person)
    ids = set()
    for name, resources in mapped.items():
        for r in resources:
            res = r.resource
            validate(res)
            assert res["resourceType"] == EXPECTED[name]
            assert res["meta"]["source"] == SOURCE_URI
            assert r.source == "cosmic"
            assert res["id"] not in ids
            ids.add(res["id"])
            if name == "patient":
                assert res["id"] == pid
                assert r.origin_key == f"Patient|{person.pnr}"
                continue
            subject = res.get("subject") or res.get("patient")
            assert subject == {"reference": f"Patient/{pid}"}, name
            assert r.care_provider == pop.REGION_PROVIDER, name
            assert r.care_unit in {hsa for hsa, _ in pop.UNITS.values()}, name
            kind, id_field = RAW[name]
            record_ids = {rec[id_field] for rec in raw[kind]}
            rt, system, record_id = r.origin_key.split("|")
            assert (rt, system) == (EXPECTED[name], pop.COSMIC_SYSTEM)
            assert record_id in record_ids
    # every record comes out exactly once (alerts are split between Flag and AllergyIntolerance)
    assert len(mapped["patient"]) == 1
    for name, (kind, _) in RAW.items():
        if name not in ("alerts", "hypersensitivity"):
            assert len(mapped[name]) == len(raw[kind]), name
    assert len(mapped["alerts"]) + len(mapped["hypersensitivity"]) == len(raw["alerts"])


@pytest.mark.parametrize("person", COSMIC_PEOPLE, ids=lambda p: f"{p.given}-{p.pnr}")
async def test_threat_label_only_on_threat_flags(client: Any, person: pop.Person) -> None:
    mapped = await fetch_and_map(client, person)
    threat_records = RAW_DATA[person.pnr]["threats"]
    labelled = [
        (name, r.resource)
        for name, rs in mapped.items()
        for r in rs
        if any(lab.get("code") == "THREAT" for lab in labels(r.resource))
    ]
    assert len(labelled) == len(threat_records)
    assert all(name == "threats" for name, _ in labelled)
    if not threat_records:
        assert labelled == []


async def test_tolvan_threat_flag(tolvan: Mapped) -> None:
    (r,) = tolvan["threats"]
    flag = r.resource
    assert flag["resourceType"] == "Flag"
    assert flag["status"] == "active"
    assert flag["category"][0]["coding"][0]["system"] == "http://terminology.hl7.org/CodeSystem/flag-category"
    assert flag["category"][0]["coding"][0]["code"] == "safety"
    assert labels(flag) == [THREAT_LABEL]
    assert flag["code"]["text"].startswith("Hot")
    assert "kniv synlig" in flag["code"]["text"]
    assert INSTANT.match(flag["period"]["start"])
    assert r.care_provider == pop.REGION_PROVIDER
    assert r.care_unit == pop.UNITS["ambulans"][0]  # the ambulance service, not the recording station
    assert r.origin_key == f"Flag|{pop.COSMIC_SYSTEM}|T-800001"


async def test_ej_hlr_care_limitation_flag(tolvan: Mapped) -> None:
    (r,) = tolvan["alerts"]  # the hypersensitivity alert is not a Flag
    flag = r.resource
    assert flag["code"]["coding"] == [
        {"system": "urn:fhir-facade:cosmic:alert-code", "code": "EJHLR"},
        {"system": "http://snomed.info/sct", "code": "304253006", "display": "Not for resuscitation"},
    ]
    assert flag["code"]["text"].startswith("Ej HLR")
    assert flag["category"][0]["coding"][0]["code"] == "advance-directive"
    assert flag["status"] == "active"
    assert INSTANT.match(flag["period"]["start"]) and "end" not in flag["period"]
    assert INSTANT.match(flag["meta"]["lastUpdated"])
    assert labels(flag) == []
    assert r.care_unit == pop.UNITS["med"][0]


async def test_penicillin_allergy(tolvan: Mapped) -> None:
    (r,) = tolvan["hypersensitivity"]
    allergy = r.resource
    assert allergy["code"]["coding"][0] == {
        "system": ATC,
        "code": "J01CE02",
        "display": "Fenoximetylpenicillin",
    }
    assert "criticality" not in allergy  # Cosmic records the reaction's severity, not a criticality
    assert allergy["reaction"][0]["severity"] == "severe"
    assert allergy["category"] == ["medication"]
    assert allergy["clinicalStatus"]["coding"][0]["code"] == "active"
    assert allergy["verificationStatus"]["coding"][0]["code"] == "confirmed"
    assert allergy["reaction"][0]["manifestation"][0]["text"] == "Urtikaria och andningsbesvär"
    assert allergy["patient"]["reference"] == f"Patient/{patient_id(pop.TOLVAN)}"


async def test_mild_allergy_is_a_mild_reaction(client: Any) -> None:
    candidates = [p for p in GENERATED if RAW_DATA[p.pnr]["alerts"]]
    if not candidates:  # pragma: no cover - depends on the seed
        pytest.skip("no generated patient with a hypersensitivity alert")
    mapped = await fetch_and_map(client, candidates[0])
    assert [r.resource["reaction"][0]["severity"] for r in mapped["hypersensitivity"]] == ["mild"]
    assert all("criticality" not in r.resource for r in mapped["hypersensitivity"])
    assert mapped["alerts"] == []


async def test_encounter_reason_references_the_condition(tolvan: Mapped) -> None:
    condition = only(tolvan["diagnoses"], record="D-100003")
    encounter = only(tolvan["carecontacts"], record="C-500001")
    assert encounter["reasonReference"] == [{"reference": "Condition/" + condition["id"]}]
    assert encounter["class"]["code"] == "EMER"
    assert encounter["class"]["system"] == "http://terminology.hl7.org/CodeSystem/v3-ActCode"
    assert encounter["status"] == "finished"
    # winter: +01:00 (2023-02-10), summer: +02:00 (2026-09-22)
    assert encounter["period"]["start"].endswith("+01:00")
    open_care = only(tolvan["carecontacts"], record="C-500002")
    assert open_care["class"]["code"] == "AMB"
    assert open_care["period"]["start"].endswith("+02:00")
    assert open_care["reasonReference"] == [
        {"reference": "Condition/" + only(tolvan["diagnoses"], record="D-100001")["id"]}
    ]


async def test_mapped_resources_carry_their_references_and_clinical_time(tolvan: Mapped) -> None:
    mapped = next(r for r in tolvan["carecontacts"] if r.origin_key.endswith("|C-500001"))
    encounter = mapped.resource
    condition = only(tolvan["diagnoses"], record="D-100003")
    assert set(mapped.refs) == {encounter["subject"]["reference"], "Condition/" + condition["id"]}
    assert mapped.clinical_time == datetime.fromisoformat(encounter["period"]["start"]).timestamp()


async def test_encounter_without_reason_has_no_reference(client: Any) -> None:
    mapped = await fetch_and_map(client, pop.LENNART)
    encounter = only(mapped["carecontacts"], record="C-520001")
    assert encounter["class"]["code"] == "IMP"
    assert "reasonReference" not in encounter


async def test_lab_values_lose_the_decimal_comma(tolvan: Mapped) -> None:
    kalium = only(tolvan["labresults"], record="L-400002")
    assert kalium["valueQuantity"]["value"] == 4.1
    assert kalium["valueQuantity"]["unit"] == "mmol/L"
    assert kalium["referenceRange"][0]["low"]["value"] == 3.5
    assert kalium["referenceRange"][0]["high"]["value"] == 4.4
    assert kalium["code"]["coding"][0] == {
        "system": "urn:oid:1.2.752.108.1",
        "code": "NPU03429",
        "display": "P-Kalium",
    }
    assert kalium["category"][0]["coding"][0]["code"] == "laboratory"
    assert kalium["status"] == "final"
    assert INSTANT.match(kalium["issued"])
    assert INSTANT.match(kalium["effectiveDateTime"])
    assert kalium["interpretation"][0]["coding"][0]["code"] == "N"
    kreatinin = only(tolvan["labresults"], record="L-400004")
    assert kreatinin["valueQuantity"] == {
        "value": 118,
        "unit": "µmol/L",
        "system": "http://unitsofmeasure.org",
        "code": "umol/L",
    }
    assert kreatinin["interpretation"][0]["coding"][0]["code"] == "A"


async def test_generated_lab_values_are_numbers(client: Any) -> None:
    for person in GENERATED[:3]:
        mapped = await fetch_and_map(client, person)
        raw = {rec["resultId"]: rec for rec in RAW_DATA[person.pnr]["labresults"]}
        for r in mapped["labresults"]:
            record_id = r.origin_key.rsplit("|", 1)[1]
            expected = float(raw[record_id]["resultValue"].replace(",", "."))
            assert r.resource["valueQuantity"]["value"] == pytest.approx(expected)


async def test_notes_decode_to_the_original_text(tolvan: Mapped) -> None:
    raw = {n["noteId"]: n for n in RAW_DATA[pop.TOLVAN.pnr]["notes"]}
    assert len(tolvan["notes"]) == len(raw) == 3
    for r in tolvan["notes"]:
        doc = r.resource
        note = raw[r.origin_key.rsplit("|", 1)[1]]
        (content,) = doc["content"]
        attachment = content["attachment"]
        assert attachment["contentType"] == "text/plain; charset=utf-8"
        assert base64.b64decode(attachment["data"]).decode("utf-8") == note["text"]
        assert attachment["title"] == note["title"]
        assert doc["status"] == "current"
        assert doc["docStatus"] == "final"
        assert doc["type"]["text"]
        assert INSTANT.match(doc["date"])
        assert doc["author"][0]["display"] == note["signedBy"]["name"]


async def test_medications(tolvan: Mapped) -> None:
    ramipril = only(tolvan["medications"], record="M-200001")
    assert ramipril["status"] == "active"
    # the ATC display is the substance; the product name stays the text
    assert ramipril["medicationCodeableConcept"]["coding"] == [
        {"system": ATC, "code": "C09AA05", "display": "ramipril"}
    ]
    assert ramipril["medicationCodeableConcept"]["text"] == "Ramipril 5 mg tablett"
    assert ramipril["dosage"] == [{"text": "1 tablett 1 gång dagligen"}]
    assert "end" not in ramipril["effectivePeriod"]
    salbutamol = only(tolvan["medications"], record="M-200002")
    assert salbutamol["status"] == "completed"
    assert re.match(r"^\d{4}-\d{2}-\d{2}$", salbutamol["effectivePeriod"]["end"])
    assert INSTANT.match(salbutamol["meta"]["lastUpdated"])


async def test_vaccination(tolvan: Mapped) -> None:
    (r,) = tolvan["vaccinations"]
    imm = r.resource
    assert imm["status"] == "completed"
    assert imm["vaccineCode"]["coding"] == [
        {
            "system": ATC,
            "code": "J07BB02",
            "display": "influenza, inactivated, split virion or surface antigen",
        }
    ]
    assert imm["lotNumber"] == "FLU-24-118"
    assert imm["protocolApplied"] == [{"doseNumberPositiveInt": 1}]
    assert INSTANT.match(imm["occurrenceDateTime"])


async def test_sanna_patient_is_restricted(client: Any, tolvan: Mapped) -> None:
    mapped = await fetch_and_map(client, pop.SANNA)
    (r,) = mapped["patient"]
    assert {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}.items() <= (
        labels(r.resource)[0].items()
    )
    (t,) = tolvan["patient"]
    assert labels(t.resource) == []
    assert t.resource["identifier"] == [{"system": pop.PNR_SYSTEM, "value": pop.TOLVAN.pnr}]


async def test_mapping_is_deterministic(client: Any) -> None:
    first = await fetch_and_map(client, pop.TOLVAN)
    second = await fetch_and_map(client, pop.TOLVAN)
    assert {k: [r.resource for r in v] for k, v in first.items()} == {
        k: [r.resource for r in v] for k, v in second.items()
    }


async def test_diagnoses_on_the_problem_list_with_an_end_only_when_ended(tolvan: Mapped) -> None:
    conditions = {r.resource["code"]["coding"][0]["code"]: r.resource for r in tolvan["diagnoses"]}
    for c in conditions.values():
        validate(c)
        assert c["category"] == [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-category",
                        "code": "problem-list-item",
                    }
                ]
            }
        ]
    fracture = conditions["S52.5"]  # RES, with the date Cosmic gives for its end
    assert fracture["clinicalStatus"]["coding"][0]["code"] == "resolved"
    raw = next(d for d in RAW_DATA[pop.TOLVAN.pnr]["diagnoses"] if d["diagnosisId"] == "D-100003")
    end = datetime.strptime(raw["resolvedAt"], "%Y-%m-%d %H:%M")
    assert fracture["abatementDateTime"].startswith(end.strftime("%Y-%m-%dT%H:%M:00"))
    assert INSTANT.match(fracture["abatementDateTime"])
    assert "abatementDateTime" not in conditions["I10"]
    # an end date beside a status that does not say it ended is not shown as an abatement (R4 con-4)
    record = {**raw, "diagnosisId": "D-X", "state": "ACT"}
    out, _ = map_records(
        BY_NAME["diagnoses"], {"items": [record]}, context(pop.TOLVAN), source_uri=SOURCE_URI, priority=1
    )
    (still,) = out
    assert still.resource["clinicalStatus"]["coding"][0]["code"] == "active"
    assert "abatementDateTime" not in still.resource
    record = {**raw, "diagnosisId": "D-Y", "state": "INACT"}
    out, _ = map_records(
        BY_NAME["diagnoses"], {"items": [record]}, context(pop.TOLVAN), source_uri=SOURCE_URI, priority=1
    )
    (inactive,) = out
    assert inactive.resource["abatementDateTime"] == fracture["abatementDateTime"]
    validate(inactive.resource)
