"""Care limitations and allergies mean the same whatever the source (issue 23).

Over the Cosmic and NPÖ simulators' real answers, through the real mappings:

* every care limitation ("Ej HLR", VILSAD) is a Flag with one category (flag-category
  ``advance-directive``) and a SNOMED CT coding beside the source's local code — the same from
  every source for the same limitation;
* an allergy says what its source says: ``verificationStatus`` from the certainty (suspected →
  unconfirmed, confirmed → confirmed, none → left out), ``clinicalStatus`` from the source's status
  or validity period, ``reaction.severity`` from the severity — and no ``criticality``, which
  neither source records;
* an unknown source value leaves its element out; the record is never lost.

Validated with the R4B models: fhir.resources 8 ships no plain R4 models, and R4B's Flag and
AllergyIntolerance are R4's unchanged; R4's invariant ait-1 (clinicalStatus unless entered in error)
is checked here, as the models check no invariants.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class

from proxy.mapping import validate as validate_module
from proxy.mapping.engine import map_records
from proxy.simulators import cosmic, npo
from proxy.simulators import population as pop
from proxy.timeutil import SWEDEN
from proxy.types import MappedResource
from tests import contract, r4
from tests.mapping import test_cosmic_mappings as cm
from tests.mapping import test_npo_mappings as nm

FLAG_CATEGORY = "http://terminology.hl7.org/CodeSystem/flag-category"
SNOMED = "http://snomed.info/sct"
CARE_LIMITATION_CATEGORY = [
    {"coding": [{"system": FLAG_CATEGORY, "code": "advance-directive", "display": "Advance Directive"}]}
]
SNOMED_OF = {  # the limitation (Cosmic alertCode / NPÖ restrictionOfCareCode) → its SNOMED CT coding
    "EJHLR": {"system": SNOMED, "code": "304253006", "display": "Not for resuscitation"},
    "VILSAD": {"system": SNOMED, "code": "182964004", "display": "Terminal care"},
}
CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
VERIFICATION = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"


# ---- the sources' answers, mapped ---------------------------------------------------------------


@pytest.fixture
async def cosmic_mapped(cosmic_client: Any) -> dict[str, cm.Mapped]:
    return {p.pnr: await cm.fetch_and_map(cosmic_client, p) for p in cm.COSMIC_PEOPLE}


@pytest.fixture
def npo_mapped(npo_everyone: contract.Everyone) -> nm.Mapped:
    mapped, skipped, _ = npo_everyone
    assert skipped == dict.fromkeys(skipped, 0)
    return mapped


def by_record(resources: list[MappedResource]) -> dict[str, dict[str, Any]]:
    """Resources by their source record id (the last part of the origin key)."""
    return {r.origin_key.rsplit("|", 1)[1]: r.resource for r in resources}


def validate(resource: dict[str, Any]) -> None:
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)
    assert r4.validate(resource) == [], r4.validate(resource)  # and against R4 itself (tests/r4.py)
    if resource["resourceType"] == "AllergyIntolerance":  # R4 ait-1
        codes = [c.get("code") for c in resource.get("verificationStatus", {}).get("coding", [])]
        assert "entered-in-error" in codes or resource.get("clinicalStatus", {}).get("coding"), resource


def categories(flag: dict[str, Any]) -> list[dict[str, Any]]:
    """The category codings (NPÖ adds its own type's name as text; the coding is what readers match)."""
    return [{"coding": cat["coding"]} for cat in flag.get("category", [])]


def snomed(flag: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for c in flag["code"]["coding"] if c["system"] == SNOMED]


def code_of(concept: dict[str, Any] | None, system: str) -> str | None:
    codes = [c["code"] for c in (concept or {}).get("coding", []) if c.get("system") == system]
    assert len(codes) <= 1, concept
    return codes[0] if codes else None


def severity(allergy: dict[str, Any]) -> str | None:
    found = [r["severity"] for r in allergy.get("reaction", []) if "severity" in r]
    assert len(found) <= 1
    return found[0] if found else None


# ---- care limitations -----------------------------------------------------------------------------


async def test_every_sources_care_limitation_is_coded_the_same(
    cosmic_mapped: dict[str, cm.Mapped], npo_mapped: nm.Mapped
) -> None:
    seen: dict[str, list[tuple[str, dict[str, Any]]]] = {}  # limitation → [(source, flag)]
    for pnr, mapped in cosmic_mapped.items():
        flags = by_record(mapped["alerts"])
        for rec in cm.RAW_DATA[pnr]["alerts"]:
            if rec["alertKind"] == "CARE_LIMITATION":
                flag = flags[rec["alertId"]]
                local = {"system": "urn:fhir-facade:cosmic:alert-code", "code": rec["alertCode"]}
                assert local in flag["code"]["coding"]
                seen.setdefault(rec["alertCode"], []).append(("cosmic", flag))
    for pnr, per in npo_mapped.items():
        flags = {r.resource["identifier"][0]["value"]: r.resource for r in per["alerts-flag"]}
        for rec in nm.RAW.get(pnr, {}).get("alertInformation", []):
            body = rec["alertInformationBody"]
            if body["typeOfAlertInformation"]["code"] == "VBG":
                flag = flags[rec["alertInformationHeader"]["documentId"]]
                assert any(c["code"] == "VBG" for c in flag["code"]["coding"])  # the local code stays
                kind = body["restrictionOfCare"]["restrictionOfCareCode"]["code"]
                seen.setdefault(kind, []).append(("npo", flag))
    assert {src for flags in seen.values() for src, _ in flags} == {"cosmic", "npo"}
    assert {src for src, _ in seen["EJHLR"]} == {"cosmic", "npo"}  # the same limitation from both sources
    assert set(seen) == {"EJHLR", "VILSAD"}
    for limitation, flags in seen.items():
        for _, flag in flags:
            validate(flag)
            assert categories(flag) == CARE_LIMITATION_CATEGORY
            assert snomed(flag) == [SNOMED_OF[limitation]]
            assert flag["code"]["text"]
        assert len({json.dumps((categories(f), snomed(f)), sort_keys=True) for _, f in flags}) == 1


async def test_only_care_limitations_are_advance_directives(
    cosmic_mapped: dict[str, cm.Mapped], npo_mapped: nm.Mapped
) -> None:
    flags = [r.resource for m in cosmic_mapped.values() for name in ("alerts", "threats") for r in m[name]]
    flags += [r.resource for per in npo_mapped.values() for r in per["alerts-flag"]]
    limitations = [f for f in flags if categories(f) == CARE_LIMITATION_CATEGORY]
    assert len(limitations) == 3  # Tolvan's Ej HLR and Lennart's VILSAD (Cosmic), Lennart's Ej HLR (NPÖ)
    for f in flags:
        if f not in limitations:
            assert all(c["code"] != "advance-directive" for cat in f["category"] for c in cat["coding"])
            assert snomed(f) == []


def test_npo_care_limitation_without_a_code_keeps_its_category() -> None:
    """The RIVTA contract's restrictionOfCare has a comment only: no SNOMED CT guessed from text."""
    rec = npo.alert(pop.LENNART.pnr, "X-1", datetime(2026, 5, 4, 10, 0), "VBG", "Ej HLR enligt beslut.")
    rec["alertInformationBody"]["restrictionOfCare"] = {"restrictionOfCareComment": "Ej HLR enligt beslut."}
    body = {"Envelope": {"Body": {"GetAlertInformationResponse": {"alertInformation": npo._drop_none(rec)}}}}
    (out,), bad = map_records(
        nm.BY_NAME["alerts-flag"], body, nm.context(pop.LENNART), source_uri=nm.SOURCE_URI, priority=2
    )
    assert bad == 0
    flag = out.resource
    validate(flag)
    assert categories(flag) == CARE_LIMITATION_CATEGORY
    assert snomed(flag) == []
    assert [c["code"] for c in flag["code"]["coding"]] == ["VBG"]
    assert flag["code"]["text"] == "Ej HLR enligt beslut."


# ---- allergies ------------------------------------------------------------------------------------


async def test_cosmic_allergies_say_what_cosmic_says(cosmic_mapped: dict[str, cm.Mapped]) -> None:
    want = {  # record → (verificationStatus, clinicalStatus, reaction.severity)
        "A-300002": ("confirmed", "active", "severe"),  # Tolvan's penicillin
        "A-320002": ("unconfirmed", "active", "mild"),  # Lennart's suspected amoxicillin
        "A-320003": ("confirmed", "inactive", "moderate"),  # Lennart's ended codeine
    }
    got: dict[str, tuple[str | None, str | None, str | None]] = {}
    for pnr, mapped in cosmic_mapped.items():
        allergies = by_record(mapped["hypersensitivity"])
        for rec in cm.RAW_DATA[pnr]["alerts"]:
            if rec["alertKind"] != "HYPERSENSITIVITY":
                continue
            a = allergies.pop(rec["alertId"])  # every hypersensitivity record comes out
            validate(a)
            assert "criticality" not in a  # Cosmic records no criticality; severity is not one
            got[rec["alertId"]] = (
                code_of(a.get("verificationStatus"), VERIFICATION),
                code_of(a.get("clinicalStatus"), CLINICAL),
                severity(a),
            )
        assert allergies == {}
    assert {k: got[k] for k in want} == want
    generated = {k: v for k, v in got.items() if k not in want}
    assert generated and set(generated.values()) == {(None, "active", "mild")}  # certainty not recorded


async def test_npo_allergies_say_what_npo_says(npo_mapped: nm.Mapped) -> None:
    want = {  # documentId → (verificationStatus, clinicalStatus, reaction.severity)
        "KAR-U-309278-1": ("confirmed", "active", "severe"),  # ACE inhibitors, Allvarlig, Konstaterad
        "KAR-U-309278-3": ("unconfirmed", "active", "moderate"),  # ASA, Måttlig, Misstänkt
        "KAR-U-309278-4": ("confirmed", "inactive", "mild"),  # morphine, validity ended
        "KAR-U-309278-5": (None, "active", None),  # contrast media: neither certainty nor severity
    }
    lennart = npo_mapped[pop.LENNART.pnr]["alerts-allergy"]
    allergies = {r.resource["identifier"][0]["value"]: r.resource for r in lennart}
    assert set(allergies) == set(want)
    for doc, (verification, clinical, sev) in want.items():
        a = allergies[doc]
        validate(a)
        assert "criticality" not in a, doc  # Allvarlig/Måttlig/Lindrig is the reaction's severity
        assert code_of(a.get("verificationStatus"), VERIFICATION) == verification, doc
        assert code_of(a.get("clinicalStatus"), CLINICAL) == clinical, doc
        assert severity(a) == sev, doc
    every = [r.resource for per in npo_mapped.values() for r in per["alerts-allergy"]]
    assert all("criticality" not in a for a in every)


def _npo_allergy(**hyper: Any) -> dict[str, Any]:
    rec = npo.alert(
        pop.LENNART.pnr,
        "X-2",
        datetime(2026, 5, 4, 10, 0),
        "OVE",
        "Överkänslighet.",
        hypersensitivity=npo.drug_hypersensitivity("N02BE01", "Paracetamol", "LIN"),
        end=hyper.pop("end", None),
    )
    rec["alertInformationBody"]["hypersensitivity"].update(hyper)
    body = {"Envelope": {"Body": {"GetAlertInformationResponse": {"alertInformation": npo._drop_none(rec)}}}}
    (out,), bad = map_records(
        nm.BY_NAME["alerts-allergy"], body, nm.context(pop.LENNART), source_uri=nm.SOURCE_URI, priority=2
    )
    assert bad == 0
    validate(out.resource)
    return out.resource


def test_npo_unknown_values_leave_the_element_out_never_the_record() -> None:
    a = _npo_allergy(
        degreeOfCertainty={"code": "XYZ", "codeSystem": npo.KV_CERTAINTY_OID, "displayName": "Okänd"},
        degreeOfSeverity={"code": "LIVS", "codeSystem": npo.KV_SEVERITY_OID, "displayName": "Livshotande"},
    )
    assert "verificationStatus" not in a and "reaction" not in a and "criticality" not in a
    assert code_of(a["clinicalStatus"], CLINICAL) == "active"
    assert a["code"]["coding"][0]["code"] == "N02BE01"


def test_npo_validity_ending_in_the_future_is_still_active(monkeypatch: pytest.MonkeyPatch) -> None:
    end = datetime(2026, 6, 1, 12, 0)
    monkeypatch.setattr(validate_module, "now", lambda: datetime(2026, 5, 31, 12, 0, tzinfo=SWEDEN))
    assert code_of(_npo_allergy(end=end)["clinicalStatus"], CLINICAL) == "active"
    monkeypatch.setattr(validate_module, "now", lambda: datetime(2026, 6, 1, 12, 0, tzinfo=SWEDEN))
    assert code_of(_npo_allergy(end=end)["clinicalStatus"], CLINICAL) == "inactive"
    # an unreadable end is no proof of an end: the allergy stays active (the safe reading)
    a = _npo_allergy()
    assert code_of(a["clinicalStatus"], CLINICAL) == "active"


def _cosmic_allergy(**fields: Any) -> dict[str, Any]:
    rec = {
        "alertId": "A-9",
        "alertKind": "HYPERSENSITIVITY",
        "alertCode": "LAKEMEDEL",
        "substanceAtc": "N02BE01",
        "substanceName": "Paracetamol",
        "reactionText": "Utslag",
        "validFrom": "2020-01-01 10:00",
        "state": "ACTIVE",
        "careUnit": cosmic.unit("vc-norr"),
        **fields,
    }
    rec = {k: v for k, v in rec.items() if v is not None}
    (out,), bad = map_records(
        cm.BY_NAME["hypersensitivity"],
        {"items": [rec]},
        cm.context(pop.TOLVAN),
        source_uri=cm.SOURCE_URI,
        priority=1,
    )
    assert bad == 0
    validate(out.resource)
    return out.resource


def test_cosmic_refuted_unknown_and_missing_values() -> None:
    a = _cosmic_allergy(certainty="REFUTED", severity="SEVERE")
    assert code_of(a["verificationStatus"], VERIFICATION) == "refuted" and severity(a) == "severe"
    # unknown certainty and severity: left out; the record and its reaction text stay
    a = _cosmic_allergy(certainty="MAYBE", severity="HIGH")
    assert "verificationStatus" not in a and "criticality" not in a and severity(a) is None
    assert a["reaction"][0]["manifestation"][0]["text"] == "Utslag"
    # an unknown state falls back to the validity period, never to a code without a value
    a = _cosmic_allergy(state="ARCHIVED", validTo="2021-01-01 10:00")
    assert a["clinicalStatus"]["coding"] == [{"system": CLINICAL, "code": "inactive", "display": "Inactive"}]
    a = _cosmic_allergy(state="ARCHIVED")
    assert a["clinicalStatus"]["coding"] == [{"system": CLINICAL, "code": "active", "display": "Active"}]
    # a severity without a described reaction: the manifestation is marked unknown, not invented
    a = _cosmic_allergy(severity="MODERATE", reactionText=None)
    (reaction,) = a["reaction"]
    assert reaction["severity"] == "moderate"
    absent = {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "unknown"}
    assert reaction["manifestation"] == [{"extension": [absent]}]


def test_npo_care_limitation_whose_validity_ended_is_not_active(monkeypatch: pytest.MonkeyPatch) -> None:
    """An Ej HLR that has expired must never read as an active limitation (Cosmic says so by state)."""
    end = datetime(2026, 6, 1, 12, 0)
    rec = npo.alert(
        pop.LENNART.pnr, "X-3", datetime(2026, 1, 4, 10, 0), "VBG", "Ej HLR.", restriction="EJHLR", end=end
    )
    body = {"Envelope": {"Body": {"GetAlertInformationResponse": {"alertInformation": npo._drop_none(rec)}}}}

    def status_at(moment: datetime) -> str:
        monkeypatch.setattr(validate_module, "now", lambda: moment.replace(tzinfo=SWEDEN))
        (out,), _ = map_records(
            nm.BY_NAME["alerts-flag"], body, nm.context(pop.LENNART), source_uri=nm.SOURCE_URI, priority=2
        )
        validate(out.resource)
        assert snomed(out.resource) == [SNOMED_OF["EJHLR"]]
        return str(out.resource["status"])

    assert status_at(datetime(2026, 5, 31, 12, 0)) == "active"
    assert status_at(datetime(2026, 6, 1, 12, 0)) == "inactive"
