"""The Viva mappings: simulator answers in, valid FHIR R4 out — and social-care (SoL) data never out."""

from __future__ import annotations

import base64
from datetime import date, datetime, timedelta
from typing import Any

import orjson
import pytest
from fhir.resources.R4B import get_fhir_model_class

from proxy.hsa import HSA_SYSTEM
from proxy.mapping.compiler import CompiledMapping
from proxy.mapping.engine import map_records
from proxy.simulators import viva
from proxy.simulators.population import (
    DEMO_PEOPLE,
    GRETA,
    MUNICIPALITY_PROVIDER,
    PNR_SYSTEM,
    TOLVAN,
    UNITS,
    VIVA_SYSTEM,
    Person,
    make_pnr,
    population,
)
from proxy.types import MappedResource
from tests import contract, r4

MAPPINGS = contract.MAPPINGS_DIR
SOL_PHRASE = "Biståndsbeslut hemtjänst SoL-anteckning"
SOURCE_URI = contract.VIVA.source_uri
HSA = HSA_SYSTEM  # HL7 Sweden's (proxy.hsa)
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"

# A protected person (skyddad identitet) in Viva: none of the demo patients is one.
PROTECTED = Person(
    pnr=make_pnr(date(1941, 6, 30), 402),
    given="Signe",
    family="Skyddad",
    gender="female",
    address=("Hemlig adress 2", "10000", "Okänd ort"),
    protected=True,
    in_cosmic=False,
    in_viva=True,
    in_npo=False,
    generated=True,
    rng_seed="test:protected",
)
PEOPLE = [*population(40), PROTECTED]
DEMO = [*DEMO_PEOPLE, PROTECTED]

EXPECTED_KINDS = {
    "viva/brukare": "Patient",
    "viva/vardplaner": "CarePlan",
    "viva/funktionsbedomningar": "Observation",
    "viva/anteckningar": "DocumentReference",
    "viva/lakemedelslista": "MedicationStatement",
    "viva/lakemedelsadministreringar": "MedicationAdministration",
    "viva/hembesok": "Encounter",
}
# the kinds only the facade's writes fill (issue 22; tests/simulators/test_writes.py reads them back)
WRITTEN_KINDS = {
    "viva/matvarden": "Observation",
    "viva/administreringar": "MedicationAdministration",
}


VIVA_MAPPINGS = contract.VIVA.mappings
BY_NAME = {m.name: m for m in VIVA_MAPPINGS}
context = contract.VIVA.context


@pytest.fixture
async def client(aiohttp_client: Any) -> Any:
    return await aiohttp_client(contract.VIVA.create_app(PEOPLE))


async def fetch(client: Any, mapping: CompiledMapping, person: Person) -> Any:
    return await contract.fetch(contract.VIVA, client, mapping, context(person))


async def run(client: Any, mapping: CompiledMapping, person: Person) -> list[MappedResource]:
    ctx = context(person)
    return contract.run(contract.VIVA, mapping, await fetch(client, mapping, person), ctx)


async def run_all(client: Any, person: Person) -> contract.Mapped:
    return await contract.map_all(contract.VIVA, client, person)


def validate(resource: dict[str, Any]) -> None:
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    assert r4.validate(resource) == [], r4.validate(resource)  # and against R4 itself (tests/r4.py)


def raw_id(mr: MappedResource) -> str:
    """The Viva record id, from the origin key ``<type>|<system HSA-id>|<record id>``."""
    rtype, system, rid = mr.origin_key.split("|")
    assert (rtype, system) == (mr.resource["resourceType"], VIVA_SYSTEM)
    return rid


def all_text(resources: list[dict[str, Any]]) -> str:
    """The JSON text of the resources plus every base64 attachment, decoded."""
    parts = [orjson.dumps(resources).decode()]
    for r in resources:
        for content in r.get("content", []):
            data = content.get("attachment", {}).get("data")
            if data:
                parts.append(base64.b64decode(data).decode("utf-8"))
    return "\n".join(parts)


# ---- the mapping set ----------------------------------------------------------------------------


def test_one_mapping_per_kind_and_none_for_sol_decisions() -> None:
    assert {m.name: m.resource_type for m in VIVA_MAPPINGS} == EXPECTED_KINDS | WRITTEN_KINDS
    assert not (MAPPINGS / "viva" / "beslut.yaml").exists()
    for m in VIVA_MAPPINGS:
        assert "beslut" not in m.request.path
        assert m.request.path.startswith("/viva/api/v2/")
        _, query, _, _ = m.request.render(context(TOLVAN))
        assert query == [("personnummer", TOLVAN.pnr)]


# ---- every mapping, every demo patient ----------------------------------------------------------


@pytest.mark.parametrize("person", DEMO, ids=lambda p: p.given)
@pytest.mark.parametrize("name", sorted(EXPECTED_KINDS))
async def test_mapping_output_validates(client: Any, name: str, person: Person) -> None:
    mapping = BY_NAME[name]
    out = await run(client, mapping, person)
    if not person.in_viva:
        assert out == []
        return
    assert out, f"{name} yields nothing for {person.given}"
    ctx = context(person)
    for mr in out:
        r = mr.resource
        validate(r)
        assert r["resourceType"] == mapping.resource_type
        assert r["meta"]["source"] == SOURCE_URI
        assert mr.source == "viva"
        if mapping.resource_type == "Patient":
            assert r["id"] == ctx["patient_id"]
            assert r["identifier"] == [{"system": PNR_SYSTEM, "value": person.pnr}]
            continue
        assert r["id"].startswith(f"{ctx['patient_id']}-viva-")
        raw_id(mr)
        assert mr.care_provider == MUNICIPALITY_PROVIDER
        assert mr.care_unit == UNITS["hemsjukvard"][0]
        assert r["subject"] == {"reference": f"Patient/{ctx['patient_id']}"}
        if mapping.resource_type != "Encounter":  # Viva's visits carry no change time
            assert r["meta"]["lastUpdated"].endswith(("+01:00", "+02:00"))


async def test_generated_population_validates(client: Any) -> None:
    seen: set[str] = set()
    for person in PEOPLE:
        if not person.generated or not person.in_viva:
            continue
        for out in (await run_all(client, person)).values():
            for mr in out:
                validate(mr.resource)
                seen.add(mr.resource["resourceType"])
    assert seen == set(EXPECTED_KINDS.values())


async def test_ids_are_stable_and_unique(client: Any) -> None:
    first = await run_all(client, GRETA)
    second = await run_all(client, GRETA)
    ids = [mr.resource["id"] for out in first.values() for mr in out]
    assert ids == [mr.resource["id"] for out in second.values() for mr in out]
    assert len(ids) == len(set(ids))


# ---- social care (SoL) never leaves the municipality --------------------------------------------


async def test_no_output_contains_sol_data(client: Any) -> None:
    checked = 0
    for person in PEOPLE:
        if not person.in_viva:
            continue
        raw = await fetch(client, BY_NAME["viva/anteckningar"], person)
        has_sol = any(n["lagrum"] == "SoL" for n in raw["anteckningar"])
        resources = [mr.resource for out in (await run_all(client, person)).values() for mr in out]
        text = all_text(resources)
        assert SOL_PHRASE not in text
        assert "SoL 4 kap" not in text
        assert "Hembesök hemtjänst" not in text
        checked += has_sol
    assert checked >= 3, "the population should hold several people with SoL notes"


@pytest.mark.parametrize("person", [TOLVAN, GRETA], ids=["tolvan", "greta"])
async def test_only_hsl_notes_are_mapped(client: Any, person: Person) -> None:
    mapping = BY_NAME["viva/anteckningar"]
    raw = (await fetch(client, mapping, person))["anteckningar"]
    out = await run(client, mapping, person)
    assert sorted(raw_id(mr) for mr in out) == sorted(n["anteckningId"] for n in raw if n["lagrum"] == "HSL")
    assert any(n["lagrum"] == "SoL" for n in raw)
    for mr in out:
        att = mr.resource["content"][0]["attachment"]
        assert att["contentType"] == "text/plain; charset=utf-8"
        (note,) = [n for n in raw if n["anteckningId"] == raw_id(mr)]
        assert base64.b64decode(att["data"]).decode("utf-8") == note["text"]


@pytest.mark.parametrize("lagrum", ["SoL", "SOL", "sol", " SoL", "LSS", None, ""])
def test_notes_under_any_other_law_or_none_are_never_mapped(lagrum: str | None) -> None:
    note = {
        "anteckningId": "AN-X-1",
        "datum": "202607041030",
        "rubrik": "Biståndsbedömning",
        "text": f"{SOL_PHRASE}: test.",
        "signeradAv": {"namn": "Berit", "hsaId": "SE2120001520-BH01"},
        "enhet": viva.enhet(),
    }
    if lagrum is not None:
        note["lagrum"] = lagrum
    out, skipped = map_records(
        BY_NAME["viva/anteckningar"],
        {"anteckningar": [note]},
        context(TOLVAN),
        source_uri=SOURCE_URI,
        priority=1,
    )
    assert (out, skipped) == ([], 0)
    hsl, _ = map_records(
        BY_NAME["viva/anteckningar"],
        {"anteckningar": [note | {"lagrum": "HSL"}]},
        context(TOLVAN),
        source_uri=SOURCE_URI,
        priority=1,
    )
    assert len(hsl) == 1


@pytest.mark.parametrize("person", [TOLVAN, GRETA], ids=["tolvan", "greta"])
async def test_only_home_health_visits_are_mapped(client: Any, person: Person) -> None:
    mapping = BY_NAME["viva/hembesok"]
    raw = (await fetch(client, mapping, person))["hembesok"]
    out = await run(client, mapping, person)
    assert any(v["besokstyp"] == "HEMTJANST" for v in raw)
    assert sorted(raw_id(mr) for mr in out) == sorted(
        v["besokId"] for v in raw if v["besokstyp"] == "HEMSJUKVARD"
    )
    for mr in out:
        r = mr.resource
        assert r["class"]["system"] == "http://terminology.hl7.org/CodeSystem/v3-ActCode"
        assert r["class"]["code"] == "HH"
    statuses = {raw_id(mr): mr.resource["status"] for mr in out}
    expected = {"UTFORT": "finished", "PLANERAT": "planned", "INSTALLT": "cancelled"}
    for v in raw:
        if v["besokId"] in statuses:
            assert statuses[v["besokId"]] == expected[v["status"]]


# ---- protected identity -------------------------------------------------------------------------


async def test_protected_person_carries_the_restricted_label(client: Any) -> None:
    (mr,) = await run(client, BY_NAME["viva/brukare"], PROTECTED)
    assert mr.resource["meta"]["security"] == [
        {"system": CONFIDENTIALITY, "code": "R", "display": "restricted"}
    ]


@pytest.mark.parametrize("person", [TOLVAN, GRETA], ids=["tolvan", "greta"])
async def test_unprotected_person_has_no_label(client: Any, person: Person) -> None:
    (mr,) = await run(client, BY_NAME["viva/brukare"], person)
    assert "security" not in mr.resource["meta"]


async def test_patient_demographics(client: Any) -> None:
    (mr,) = await run(client, BY_NAME["viva/brukare"], GRETA)
    r = mr.resource
    assert r["gender"] == "female"
    assert r["name"] == [{"use": "official", "family": "Gustafsson", "given": ["Greta"]}]
    assert r["address"][0]["line"] == ["Hemtjänstvägen 4"]
    (phone,) = r["telecom"]
    assert phone["system"] == "phone" and phone["value"].startswith("08-")


# ---- compact dates and the Swedish offset -------------------------------------------------------


async def test_compact_timestamps_get_the_swedish_offset(client: Any) -> None:
    obs = {raw_id(mr): mr.resource for mr in await run(client, BY_NAME["viva/funktionsbedomningar"], TOLVAN)}
    # 2026-07-04 is summer time (CEST), 2026-01-05 and 2026-10-27 winter time (CET).
    assert obs["FB-100000-2"]["effectiveDateTime"] == "2026-07-04T10:30:00+02:00"
    assert obs["FB-100000-1"]["effectiveDateTime"] == "2026-01-05T10:15:00+01:00"
    assert obs["FB-100000-5"]["effectiveDateTime"] == "2026-10-27T09:45:00+01:00"

    visits = {raw_id(mr): mr.resource for mr in await run(client, BY_NAME["viva/hembesok"], TOLVAN)}
    # 2026-10-22, three days before the clocks go back: still summer time.
    assert visits["HB-100000-1"]["period"] == {
        "start": "2026-10-22T08:30:00+02:00",
        "end": "2026-10-22T09:00:00+02:00",
    }
    # 2026-11-04: winter time.
    assert visits["HB-100000-3"]["period"]["start"] == "2026-11-04T08:30:00+01:00"


async def test_compact_dates_become_fhir_dates(client: Any) -> None:
    (plan,) = [mr.resource for mr in await run(client, BY_NAME["viva/vardplaner"], TOLVAN)]
    assert plan["period"] == {"start": "2025-09-27"}  # open-ended: slutdatum is null
    meds = {raw_id(mr): mr.resource for mr in await run(client, BY_NAME["viva/lakemedelslista"], GRETA)}
    assert meds["OR-100001-4"]["effectivePeriod"] == {"start": "2026-06-24", "end": "2026-06-29"}
    assert meds["OR-100001-4"]["status"] == "stopped"
    assert meds["OR-100001-1"]["status"] == "active"


def eu_summer_time(local: datetime) -> bool:
    """EU rule, worked out by hand: summer time from the last Sunday of March 02:00 to the last
    Sunday of October 03:00 (local)."""

    def last_sunday(year: int, month: int) -> date:
        d = date(year, month + 1, 1) - timedelta(days=1)
        return d - timedelta(days=(d.weekday() - 6) % 7)

    start = datetime.combine(last_sunday(local.year, 3), datetime.min.time()).replace(hour=2)
    end = datetime.combine(last_sunday(local.year, 10), datetime.min.time()).replace(hour=3)
    return start <= local < end


async def test_every_timestamp_matches_its_raw_value(client: Any) -> None:
    mapping = BY_NAME["viva/funktionsbedomningar"]
    offsets = set()
    for person in PEOPLE:
        if not person.in_viva:
            continue
        raw = {r["bedomningId"]: r for r in (await fetch(client, mapping, person))["funktionsbedomningar"]}
        for mr in await run(client, mapping, person):
            local = datetime.strptime(raw[raw_id(mr)]["datum"], "%Y%m%d%H%M")
            offset = "+02:00" if eu_summer_time(local) else "+01:00"
            assert mr.resource["effectiveDateTime"] == local.strftime("%Y-%m-%dT%H:%M:00") + offset
            offsets.add(offset)
    assert offsets == {"+01:00", "+02:00"}


# ---- the content of each kind -------------------------------------------------------------------


@pytest.mark.parametrize("person", [TOLVAN, GRETA], ids=["tolvan", "greta"])
async def test_care_plan_activities_come_from_insatser(client: Any, person: Person) -> None:
    mapping = BY_NAME["viva/vardplaner"]
    raw = {p["planId"]: p for p in (await fetch(client, mapping, person))["vardplaner"]}
    out = await run(client, mapping, person)
    assert len(out) == len(raw)
    detail_status = {"AKTIV": "in-progress", "AVSLUTAD": "completed", "UTKAST": "not-started"}
    plan_status = {"AKTIV": "active", "AVSLUTAD": "completed", "UTKAST": "draft"}
    for mr in out:
        r = mr.resource
        plan = raw[raw_id(mr)]
        assert r["status"] == plan_status[plan["status"]]
        assert r["intent"] == "plan"
        assert r["title"] == plan["titel"]
        assert r["author"]["identifier"] == {"system": HSA, "value": plan["upprattadAv"]["hsaId"]}
        details = [a["detail"] for a in r["activity"]]
        assert [(d["description"], d["scheduledString"]) for d in details] == [
            (i["text"], i["frekvens"]) for i in plan["insatser"]
        ]
        assert {d["status"] for d in details} == {detail_status[plan["status"]]}
    if person is GRETA:
        assert {mr.resource["status"] for mr in out} == {"active", "completed", "draft"}


async def test_functional_status_is_an_icf_survey_observation(client: Any) -> None:
    mapping = BY_NAME["viva/funktionsbedomningar"]
    raw = {r["bedomningId"]: r for r in (await fetch(client, mapping, TOLVAN))["funktionsbedomningar"]}
    out = await run(client, mapping, TOLVAN)
    assert len(out) == len(raw)
    for mr in out:
        r, rec = mr.resource, raw[raw_id(mr)]
        assert r["status"] == "final"
        assert r["category"][0]["coding"][0]["system"] == (
            "http://terminology.hl7.org/CodeSystem/observation-category"
        )
        assert r["category"][0]["coding"][0]["code"] == "survey"
        (code,) = r["code"]["coding"]
        assert (code["system"], code["code"], code["display"]) == (
            "http://hl7.org/fhir/sid/icf",
            rec["omrade"],
            rec["omradesText"],
        )
        assert r["valueCodeableConcept"]["coding"][0]["code"] == f"{rec['omrade']}.{rec['niva']}"
        assert r["valueCodeableConcept"]["text"]
        assert r["note"] == [{"text": rec["beskrivning"]}]


ATC = "http://www.whocc.no/atc"
NOT_GIVEN_REASON = "http://terminology.hl7.org/CodeSystem/reason-medication-not-given"
SNOMED = "http://snomed.info/sct"


async def test_medication_statement_carries_atc_substance_and_no_administration_notes(client: Any) -> None:
    mapping = BY_NAME["viva/lakemedelslista"]
    (mr,) = await run(client, mapping, TOLVAN)
    r = mr.resource
    assert r["medicationCodeableConcept"] == {
        "coding": [{"system": ATC, "code": "C09AA05", "display": "ramipril"}],
        "text": "Ramipril 5 mg tablett",
    }
    assert r["status"] == "active"
    assert "note" not in r  # the administrations are MedicationAdministrations of their own


def administrations(raw: dict[str, Any]) -> list[dict[str, Any]]:
    return [a for med in raw["lakemedelslista"] for a in med["administreringar"]]


async def test_every_administration_comes_out_exactly_once(client: Any) -> None:
    mapping = BY_NAME["viva/lakemedelsadministreringar"]
    statements = BY_NAME["viva/lakemedelslista"]
    expected_status = {"GIVEN": "completed", "EJ_GIVEN": "not-done", "VAGRAT": "not-done"}
    seen = {"completed": 0, "not-done": 0}
    for person in PEOPLE:
        if not person.in_viva:
            continue
        raw = await fetch(client, mapping, person)
        ctx = context(person)
        stmt_ids = {raw_id(mr): mr.resource["id"] for mr in await run(client, statements, person)}
        out = await run(client, mapping, person)
        got = sorted(
            (
                mr.resource["supportingInformation"][0]["reference"],
                mr.resource["effectiveDateTime"],
                mr.resource["status"],
                mr.resource["performer"][0]["actor"]["display"],
            )
            for mr in out
        )
        want = sorted(
            (
                f"MedicationStatement/{stmt_ids[med['ordinationId']]}",
                local_time(a["tidpunkt"]),
                expected_status[a["status"]],
                a["givenAv"],
            )
            for med in raw["lakemedelslista"]
            for a in med["administreringar"]
        )
        assert got == want, person.given
        assert len({mr.resource["id"] for mr in out}) == len(out)
        for mr in out:
            validate(mr.resource)
            assert mr.resource["subject"] == {"reference": f"Patient/{ctx['patient_id']}"}
            seen[mr.resource["status"]] += 1
        for mr in await run(client, statements, person):
            assert "note" not in mr.resource
    assert seen["completed"] > 20 and seen["not-done"] >= 3


def local_time(stamp: str) -> str:
    local = datetime.strptime(stamp, "%Y%m%d%H%M")
    return local.strftime("%Y-%m-%dT%H:%M:00") + ("+02:00" if eu_summer_time(local) else "+01:00")


async def greta_administrations(client: Any) -> dict[str, list[dict[str, Any]]]:
    """Greta's administrations per ordination id, oldest first."""
    stmts = {
        mr.resource["id"]: raw_id(mr) for mr in await run(client, BY_NAME["viva/lakemedelslista"], GRETA)
    }
    out: dict[str, list[dict[str, Any]]] = {}
    for mr in await run(client, BY_NAME["viva/lakemedelsadministreringar"], GRETA):
        ref = mr.resource["supportingInformation"][0]["reference"].split("/", 1)[1]
        out.setdefault(stmts[ref], []).append(mr.resource)
    for items in out.values():
        items.sort(key=lambda r: r["effectiveDateTime"])
    return out


async def test_last_nights_apixaban_not_given_is_a_not_done_administration(client: Any) -> None:
    apixaban = (await greta_administrations(client))["OR-100001-3"]
    assert [r["status"] for r in apixaban] == ["completed", "completed", "not-done"]
    last = apixaban[-1]
    assert last["medicationCodeableConcept"] == {
        "coding": [{"system": ATC, "code": "B01AF02", "display": "apixaban"}],
        "text": "Apixaban 2,5 mg tablett",
    }
    assert last["effectiveDateTime"] == "2026-11-01T20:00:00+01:00"
    (reason,) = last["statusReason"]
    assert reason["coding"] == [{"system": NOT_GIVEN_REASON, "code": "b", "display": "Away"}]
    assert reason["text"] == "Ej given"
    assert "ej hemma" in last["note"][0]["text"]
    assert "dosage" not in last  # nothing was given
    # who gave it, acting for the care unit (R4 allows no Organization as the actor)
    (performer,) = last["performer"]
    assert performer["actor"]["display"] == "Omar Undersköterska"
    (unit,) = performer["actor"]["extension"]
    assert unit["url"] == "urn:fhir-facade:on-behalf-of"
    assert unit["valueReference"]["type"] == "Organization"
    assert unit["valueReference"]["identifier"] == {"system": HSA, "value": UNITS["hemsjukvard"][0]}
    assert last["category"]["coding"][0]["code"] == "community"
    given = apixaban[0]
    assert "statusReason" not in given
    # R4 mad-1: a dosage has a dose (or a rate), not only text
    assert given["dosage"] == {"text": "1 tablett", "dose": {"value": 1, "unit": "tablett"}}


def test_a_dose_given_only_in_words_is_a_note_not_a_dosage_without_a_dose() -> None:
    med = viva.build_data([GRETA])[GRETA.pnr]["lakemedelslista"][0]
    given = next(a for a in med["administreringar"] if a["status"] == "GIVEN")
    words = {k: v for k, v in given.items() if k not in ("dosMangd", "dosEnhet")} | {"dos": "en halv"}
    out, skipped = map_records(
        BY_NAME["viva/lakemedelsadministreringar"],
        {"lakemedelslista": [dict(med, administreringar=[words])]},
        context(GRETA),
        source_uri=SOURCE_URI,
        priority=1,
    )
    assert skipped == 0
    (mr,) = out
    assert "dosage" not in mr.resource  # R4 mad-1 allows no dosage without a dose or rate
    assert {"text": "Dos: en halv"} in mr.resource["note"]  # the dose in words is kept, not dropped
    assert r4.validate(mr.resource) == []


async def test_a_refused_dose_is_not_done_declined_by_patient(client: Any) -> None:
    furosemide = (await greta_administrations(client))["OR-100001-1"]
    assert [r["status"] for r in furosemide] == ["completed"] * 3 + ["not-done"]
    (reason,) = furosemide[-1]["statusReason"]
    assert reason["coding"] == [
        {"system": SNOMED, "code": "182895007", "display": "Drug declined by patient"}
    ]
    assert reason["text"] == "Vägrat (patienten avböjde)"
    assert furosemide[-1]["medicationCodeableConcept"]["coding"][0]["display"] == "furosemide"


async def test_a_not_given_dose_without_a_coded_reason_keeps_its_text(client: Any) -> None:
    found = 0
    for person in PEOPLE:
        if not person.generated or not person.in_viva:
            continue
        for mr in await run(client, BY_NAME["viva/lakemedelsadministreringar"], person):
            r = mr.resource
            if r["status"] == "not-done":
                assert r["statusReason"] == [{"text": "Ej given"}]
                found += 1
    assert found >= 1


def test_an_unknown_administration_status_is_shown_as_unknown_not_dropped() -> None:
    med = viva.build_data([TOLVAN])[TOLVAN.pnr]["lakemedelslista"][0]
    odd = dict(med, administreringar=[dict(med["administreringar"][0], status="FORSENAD")])
    out, skipped = map_records(
        BY_NAME["viva/lakemedelsadministreringar"],
        {"lakemedelslista": [odd]},
        context(TOLVAN),
        source_uri=SOURCE_URI,
        priority=1,
    )
    assert skipped == 0
    (mr,) = out
    assert mr.resource["status"] == "unknown"
    validate(mr.resource)


def test_a_record_without_id_is_skipped_not_raised() -> None:
    rec = viva.build_data([TOLVAN])[TOLVAN.pnr]["vardplaner"][0]
    broken = {k: v for k, v in rec.items() if k != "planId"}
    out, skipped = map_records(
        BY_NAME["viva/vardplaner"],
        {"vardplaner": [broken, rec]},
        context(TOLVAN),
        source_uri=SOURCE_URI,
        priority=1,
    )
    assert (len(out), skipped) == (1, 1)
