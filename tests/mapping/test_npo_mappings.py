"""The NPÖ mappings (mappings/npo/*.yaml) over the NPÖ simulator's real SOAP answers.

Each mapping's request is rendered from its template, POSTed to the simulator, the XML read with
``proxy.mapping.xml.parse_xml`` (as the facade reads it) and mapped. Every resource must validate
against the R4B models, and the rules must hold: nullified records never come out, records not
approved for the patient carry NOPAT (and only those), NPÖ's copy of a Cosmic diagnosis has the
origin key the Cosmic mapping gives the original, hypersensitivity goes to AllergyIntolerance and
every other alert to Flag, and every dateTime carries the Swedish offset of its day.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from proxy.hsa import HSA_SYSTEM
from proxy.mapping.compiler import CompiledMapping
from proxy.mapping.engine import map_records
from proxy.mapping.registry import REQUEST_CONTEXT, load_backend_mappings, load_code_maps
from proxy.mapping.xml import parse_xml
from proxy.simulators import cosmic, npo
from proxy.simulators import population as pop
from proxy.types import MappedResource
from tests import contract, r4
from tests.conftest import RESOURCE_IDS, walk

MAPPINGS_DIR = contract.MAPPINGS_DIR
SOURCE_URI = contract.NPO.source_uri
LOGICAL_ADDRESS = contract.NPO_LOGICAL_ADDRESS
PEOPLE = contract.PEOPLE["npo"]
NOPAT = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
    "code": "NOPAT",
    "display": "no disclosure to patient, family or caregivers without attending provider's authorization",
}
HSA = HSA_SYSTEM  # HL7 Sweden's (proxy.hsa)
EXPECTED = {  # mapping → (resource type, contract, record element)
    "diagnoses": ("Condition", "GetDiagnosis", "diagnosis"),
    "care-documentation": ("DocumentReference", "GetCareDocumentation", "careDocumentation"),
    "alerts-flag": ("Flag", "GetAlertInformation", "alertInformation"),
    "alerts-allergy": ("AllergyIntolerance", "GetAlertInformation", "alertInformation"),
    "medication-history": ("MedicationStatement", "GetMedicationHistory", "medicationMedicalRecord"),
    "functional-status": ("Observation", "GetFunctionalStatus", "functionalStatusAssessment"),
    "laboratory-outcomes": ("Observation", "GetLaboratoryOrderOutcome", "laboratoryOrderOutcome"),
    "care-contacts": ("Encounter", "GetCareContacts", "careContact"),
}
DATETIME_KEYS = {
    "lastUpdated",
    "date",
    "onsetDateTime",
    "recordedDate",
    "effectiveDateTime",
    "issued",
    "start",
    "end",
    "dateAsserted",
    "creation",
}
ZONED = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\+0[12]:00$")
DAY = re.compile(r"^\d{4}-\d{2}-\d{2}$")

MAPPINGS: tuple[CompiledMapping, ...] = contract.NPO.mappings
BY_NAME = contract.NPO.by_name
RAW = npo.build_data(PEOPLE)

Mapped = dict[str, dict[str, list[MappedResource]]]  # pnr → mapping name → resources
context = contract.NPO.context


@pytest.fixture(scope="module")
def results(npo_everyone: contract.Everyone) -> contract.Everyone:
    return npo_everyone


@pytest.fixture(scope="module")
def mapped(results: contract.Everyone) -> Mapped:
    return results[0]


def all_resources(mapped: Mapped, pnr: str | None = None) -> Iterator[MappedResource]:
    for who, per in mapped.items():
        if pnr is None or who == pnr:
            for resources in per.values():
                yield from resources


def raw_records(pnr: str, record: str) -> list[dict[str, Any]]:
    return RAW.get(pnr, {}).get(record, [])


def raw_header(rec: dict[str, Any]) -> dict[str, Any]:
    return next(v for k, v in rec.items() if k.endswith("Header"))


def document_id(resource: dict[str, Any]) -> tuple[str, str]:
    ident = resource["identifier"][0]
    return ident["assigner"]["identifier"]["value"], ident["value"]


def attachment_text(resource: dict[str, Any]) -> str:
    return "".join(base64.b64decode(c["attachment"]["data"]).decode() for c in resource.get("content", []))


# ---- the mapping files ----------------------------------------------------------------------------


def test_every_contract_has_its_mapping_and_requests_are_soap_posts() -> None:
    assert {name: m.resource_type for name, m in BY_NAME.items()} == {k: v[0] for k, v in EXPECTED.items()}
    for name, m in BY_NAME.items():
        contract = next(c for c in npo.CONTRACTS if c.operation == EXPECTED[name][1])
        assert (m.request.method, m.request.format, m.request.path) == ("POST", "xml", contract.path)
        headers = dict(m.request.headers)
        assert headers["Content-Type"] == "text/xml; charset=utf-8"
        assert headers["SOAPAction"] == f'"{contract.soap_action}"'
        _, _, _, data = m.request.render(context(pop.TOLVAN))
        assert data is not None
        envelope = parse_xml(data)["Envelope"]
        assert envelope["Header"]["LogicalAddress"] == LOGICAL_ADDRESS
        assert envelope["Body"][contract.operation]["patientId"] == {
            "id": pop.TOLVAN.pnr,
            "type": npo.PNR_OID,
        }
        assert m.care_provider is not None and m.care_unit is not None
        assert [r.label for r in m.security] == [NOPAT]


def test_flag_and_allergy_share_one_fetch(results: tuple[Mapped, dict[str, int], dict[str, int]]) -> None:
    assert BY_NAME["alerts-flag"].request.key == BY_NAME["alerts-allergy"].request.key
    assert results[2][pop.TOLVAN.pnr] == len(npo.CONTRACTS)  # 8 mappings, 7 contracts, 7 fetches


# ---- every resource ------------------------------------------------------------------------------


def test_every_resource_validates_and_nothing_is_skipped(
    results: tuple[Mapped, dict[str, int], dict[str, int]],
) -> None:
    mapped, skipped, _ = results
    assert skipped == dict.fromkeys(skipped, 0)
    count = 0
    for mr in all_resources(mapped):
        model = get_fhir_model_class(mr.resource["resourceType"])
        model.model_validate(mr.resource)
        assert r4.validate(mr.resource) == [], r4.validate(mr.resource)  # and against R4 itself
        count += 1
    assert count > 100


@pytest.mark.parametrize("person", PEOPLE, ids=lambda p: p.pnr)
def test_each_live_record_becomes_one_resource(mapped: Mapped, person: pop.Person) -> None:
    for name, (_, _, record) in EXPECTED.items():
        live = [r for r in raw_records(person.pnr, record) if raw_header(r)["nullified"] == "false"]
        if name.startswith("alerts-"):
            want_hyper = name == "alerts-allergy"
            live = [r for r in live if ("hypersensitivity" in r["alertInformationBody"]) is want_hyper]
        got = mapped[person.pnr][name]
        assert sorted(document_id(mr.resource) for mr in got) == sorted(
            (raw_header(r)["sourceSystemHSAId"], raw_header(r)["documentId"]) for r in live
        ), (person.pnr, name)


def test_unknown_and_greta_get_nothing(mapped: Mapped) -> None:
    for pnr in (pop.UNKNOWN_PNR, pop.GRETA.pnr):
        assert list(all_resources(mapped, pnr)) == []


def test_ids_origins_and_pdl_owners(mapped: Mapped) -> None:
    for pnr in mapped:
        ids = [mr.resource["id"] for mr in all_resources(mapped, pnr)]
        assert len(ids) == len(set(ids)), pnr
    for mr in all_resources(mapped):
        system, doc = document_id(mr.resource)
        assert mr.origin_key == f"{mr.resource['resourceType']}|{system}|{doc}"
        assert mr.resource["meta"]["source"] == SOURCE_URI
        assert mr.care_provider in (pop.OTHER_REGION_PROVIDER, pop.REGION_PROVIDER)
        assert mr.care_unit and mr.care_unit.startswith(mr.care_provider.split("-")[0])
        subject = mr.resource.get("subject") or mr.resource.get("patient")
        assert subject is not None
        pnr = next(who for who, per in mapped.items() if any(mr in v for v in per.values()))
        assert subject == {"reference": f"Patient/pat{pnr}"}


def test_nopat_exactly_on_records_not_approved_for_the_patient(mapped: Mapped) -> None:
    approved: dict[tuple[str, str], str] = {}
    for entry in RAW.values():
        for recs in entry.values():
            for r in recs:
                h = raw_header(r)
                approved[(h["sourceSystemHSAId"], h["documentId"])] = h["approvedForPatient"]
    assert "false" in approved.values()
    for mr in all_resources(mapped):
        labelled = NOPAT in mr.resource["meta"].get("security", [])
        assert labelled is (approved[document_id(mr.resource)] == "false"), mr.resource["id"]


def test_dates_carry_the_swedish_offset(mapped: Mapped) -> None:
    offsets = set()
    for mr in all_resources(mapped):
        for key, value in walk(mr.resource):
            if key in DATETIME_KEYS:
                assert ZONED.match(value) or (DAY.match(value) and key in ("start", "end")), (key, value)
                offsets.add(value[-6:])
    assert {"+01:00", "+02:00"} <= offsets  # winter and summer time both occur


# ---- the demo patients -------------------------------------------------------------------------


def test_tolvan_nopat_only_on_the_undisclosed_note(mapped: Mapped) -> None:
    notes = mapped[pop.TOLVAN.pnr]["care-documentation"]
    labelled = [mr for mr in notes if NOPAT in mr.resource["meta"].get("security", [])]
    assert len(labelled) == 1
    hidden = labelled[0].resource
    assert hidden["description"] == "Utredning pågår"
    assert "Misstänkt malignitet, ej delgivet patienten" in attachment_text(hidden)
    others = [mr for mr in all_resources(mapped, pop.TOLVAN.pnr) if mr is not labelled[0]]
    assert others and not any("security" in mr.resource["meta"] for mr in others)
    for mr in notes:
        att = mr.resource["content"][0]["attachment"]
        assert att["contentType"] == "text/plain; charset=utf-8"
        assert mr.resource["status"] == "current"
        assert mr.resource["date"] == mr.resource["meta"]["lastUpdated"]


def test_nullified_record_is_dropped(mapped: Mapped) -> None:
    nullified = [
        raw_header(r)["documentId"]
        for r in raw_records(pop.TOLVAN.pnr, "careDocumentation")
        if raw_header(r)["nullified"] == "true"
    ]
    assert len(nullified) == 1
    for mr in all_resources(mapped):
        assert document_id(mr.resource)[1] not in nullified
        assert "MAKULERAD-ANTECKNING" not in json.dumps(mr.resource, ensure_ascii=False)
        if mr.resource["resourceType"] == "DocumentReference":
            assert "MAKULERAD-ANTECKNING" not in attachment_text(mr.resource)


def test_hypertension_copy_has_the_cosmic_origin(mapped: Mapped) -> None:
    conditions = mapped[pop.TOLVAN.pnr]["diagnoses"]
    (copy,) = [mr for mr in conditions if mr.resource["code"]["coding"][0]["code"] == "I10"]
    assert copy.origin_key == "Condition|" + pop.COSMIC_SYSTEM + "|D-100001"
    assert copy.care_provider == pop.REGION_PROVIDER
    assert copy.resource["clinicalStatus"]["coding"][0]["code"] == "active"
    assert copy.resource["code"]["coding"][0]["system"] == "urn:oid:1.2.752.116.1.1.1.1.3"
    # the Cosmic mapping gives the original the same origin key, so merge sees one fact
    cosmic_mapping = next(
        m
        for m in load_backend_mappings(
            MAPPINGS_DIR / "cosmic",
            "cosmic",
            load_code_maps(MAPPINGS_DIR),
            REQUEST_CONTEXT | {"system_hsa_id", "ambulance_service_hsa_id"},
            ids=RESOURCE_IDS,
        )
        if m.name == "cosmic/diagnoses"
    )
    ctx = {**context(pop.TOLVAN), "system_hsa_id": pop.COSMIC_SYSTEM}
    body = {"items": cosmic.build_data([pop.TOLVAN])[pop.TOLVAN.pnr]["diagnoses"]}
    originals, _ = map_records(cosmic_mapping, body, ctx, source_uri="urn:cosmic", priority=1)
    assert copy.origin_key in {mr.origin_key for mr in originals}


def test_flag_vs_allergy_split(mapped: Mapped) -> None:
    lennart = mapped[pop.LENNART.pnr]
    allergy = lennart["alerts-allergy"][0]
    assert len(lennart["alerts-allergy"]) == 4
    a = allergy.resource
    assert a["code"]["coding"][0] == {
        "system": "http://www.whocc.no/atc",
        "code": "C09AA",
        "display": "ACE-hämmare, omodifierade",
    }
    assert a["category"] == ["medication"] and a["reaction"][0]["severity"] == "severe"
    assert "criticality" not in a  # "Allvarlig" is the reaction's severity, not a criticality
    assert a["patient"] == {"reference": f"Patient/pat{pop.LENNART.pnr}"}
    by_type = {mr.resource["code"]["coding"][0]["code"]: mr for mr in lennart["alerts-flag"]}
    assert set(by_type) == {"BEH", "VBG"}
    flag, limitation = by_type["BEH"], by_type["VBG"]
    assert limitation.resource["category"][0]["coding"][0]["code"] == "advance-directive"
    f = flag.resource
    assert f["status"] == "active"
    assert f["code"]["coding"][0]["code"] == "BEH"
    assert "CRT-D" in f["code"]["text"]
    assert f["category"][0]["coding"][0]["code"] == "clinical"  # never `safety`: that is the threat flag
    for mr in all_resources(mapped):
        if mr.resource["resourceType"] == "Flag":
            assert "C09AA" not in json.dumps(mr.resource)
            assert all(c["code"] != "safety" for cat in mr.resource["category"] for c in cat["coding"])


def test_lennart_labs(mapped: Mapped) -> None:
    labs = [mr.resource for mr in mapped[pop.LENNART.pnr]["laboratory-outcomes"]]
    assert len(labs) >= 30
    for obs in labs:
        assert obs["category"][0]["coding"][0]["code"] == "laboratory"
        assert obs["code"]["coding"][0]["system"] == "urn:oid:1.2.752.108.1"
        assert isinstance(obs["valueQuantity"]["value"], int | float)
        assert obs["valueQuantity"]["system"] == "http://unitsofmeasure.org"
        assert obs["status"] == "final"
    by_code: dict[str, list[dict[str, Any]]] = {}
    for obs in labs:
        by_code.setdefault(obs["code"]["coding"][0]["code"], []).append(obs)
    bnp = by_code["NPU21571"][0]
    assert bnp["referenceRange"] == [
        {
            "high": {"value": 300, "unit": "ng/L", "system": "http://unitsofmeasure.org", "code": "ng/L"},
            "text": "<300",
        }
    ]
    kalium = by_code["NPU03429"][0]
    assert kalium["referenceRange"][0]["low"]["value"] == 3.5
    assert kalium["referenceRange"][0]["high"]["value"] == 4.4
    creatinine = by_code["NPU04998"][0]
    assert creatinine["valueQuantity"]["unit"] == "µmol/L" and creatinine["valueQuantity"]["code"] == "umol/L"
    for obs in labs:
        value = obs["valueQuantity"]["value"]
        rng = obs["referenceRange"][0]
        low, high = rng.get("low", {}).get("value"), rng["high"]["value"]
        abnormal = (low is not None and value < low) or value > high
        assert obs["interpretation"][0]["coding"][0]["code"] == ("A" if abnormal else "N")


def test_lennart_medication_encounters_and_functional_status(mapped: Mapped) -> None:
    lennart = mapped[pop.LENNART.pnr]
    meds = {
        mr.resource["medicationCodeableConcept"]["coding"][0]["code"]: mr.resource
        for mr in lennart["medication-history"]
    }
    assert meds["C03CA01"]["status"] == "active"
    assert (
        meds["C03CA01"]["medicationCodeableConcept"]["coding"][1]["system"] == "urn:oid:1.2.752.129.2.1.5.1"
    )
    assert meds["C09AA02"]["status"] == "completed" and "end" in meds["C09AA02"]["effectivePeriod"]
    assert DAY.match(meds["C09AA02"]["effectivePeriod"]["end"])
    assert len(meds["C07AB07"]["medicationCodeableConcept"]["coding"]) == 2
    encounters = [mr.resource for mr in lennart["care-contacts"]]
    assert {e["class"]["code"] for e in encounters} == {"IMP", "AMB"}
    assert all(e["status"] == "finished" for e in encounters)
    assert all(e["serviceProvider"]["identifier"]["system"] == HSA for e in encounters)
    functional = {
        mr.resource["code"]["coding"][0]["code"]: mr.resource for mr in lennart["functional-status"]
    }
    padl = functional["d510"]
    assert padl["category"][0]["coding"][0] == {
        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
        "code": "survey",
        "display": "Survey",
    }
    assert padl["category"][1]["text"] == "PADL-bedömning"
    assert "dusch" in padl["valueString"]
    # assessed (documentTime, "bedömningstidpunkt": what a date search and NPÖ's datePeriod go by)
    # at 10:00, registered (authorTime) three days later at 08:30: that is when it was issued, and
    # when the record last changed
    assert padl["effectiveDateTime"].endswith("T10:00:00" + padl["effectiveDateTime"][19:])
    assert padl["issued"].endswith("T08:30:00" + padl["issued"][19:])
    assert padl["issued"][:10] > padl["effectiveDateTime"][:10]
    assert padl["meta"]["lastUpdated"] == padl["issued"]
    assert "rollator" in functional["d450"]["valueString"]
    # ICF (the contract's OID 1.2.752.116.1.1.3) as the URI receivers know, as Viva's is written
    assert {c["system"] for r in functional.values() for c in r["code"]["coding"]} == {
        "http://hl7.org/fhir/sid/icf"
    }


def test_sanna_gets_her_one_record(mapped: Mapped) -> None:
    (only,) = list(all_resources(mapped, pop.SANNA.pnr))
    assert only.resource["resourceType"] == "Encounter"


# ---- parse_xml ----------------------------------------------------------------------------------


def test_parse_xml_strips_prefixes_and_namespace_declarations() -> None:
    doc = parse_xml(
        b'<a:Root xmlns:a="urn:a" xmlns="urn:d" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        b'<a:item xsi:type="T">1</a:item><item>2</item><b:other xmlns:b="urn:b">x</b:other></a:Root>'
    )
    assert doc == {"Root": {"item": [{"@type": "T", "#text": "1"}, "2"], "other": "x"}}


@pytest.mark.parametrize(
    "data",
    [b"", b"<a>", b"<a></b>", b"plain text", b'<!DOCTYPE a [<!ENTITY e "boom">]><a>&e;</a>'],
)
def test_parse_xml_rejects_malformed_xml(data: bytes) -> None:
    with pytest.raises(ValueError):
        parse_xml(data)


def test_diagnosis_is_on_the_problem_list_unless_it_names_its_care_contact() -> None:
    (mapping,) = [m for m in MAPPINGS if m.name.endswith("/diagnoses")]
    t = datetime(2024, 3, 1, 10, 0)
    plain = npo.diagnosis(pop.LENNART.pnr, "D-1", t, "I50.9", "Hjärtsvikt", main=True, chronic=True)
    at_contact = npo.diagnosis(pop.LENNART.pnr, "D-2", t, "J18.9", "Pneumoni", main=True, chronic=False)
    at_contact["diagnosisHeader"]["careContactId"] = "KK-1"
    body = {"Envelope": {"Body": {"GetDiagnosisResponse": {"diagnosis": [plain, at_contact]}}}}
    out, skipped = map_records(mapping, body, context(pop.LENNART), source_uri=SOURCE_URI, priority=2)
    assert skipped == 0
    category = {
        document_id(mr.resource)[1]: [c["code"] for cat in mr.resource["category"] for c in cat["coding"]]
        for mr in out
    }
    assert category == {"D-1": ["problem-list-item"], "D-2": ["encounter-diagnosis"]}
    for mr in out:
        get_fhir_model_class("Condition").model_validate(mr.resource)
        assert "abatementDateTime" not in mr.resource  # NPÖ's contract gives no end date
