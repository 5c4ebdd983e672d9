"""The R4 validator of the tests (tests/r4.py) rejects what R4 rejects: one broken copy of a valid
resource per rule, each named by the check that must catch it — so a 0-error answer elsewhere means
something."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from tests.r4 import SCHEMA_SHA256, resources_in, schema_path, validate

PATIENT = "Patient/kremj5bexrrkx4tqbkshl4dvai"
OBSERVATION_ID = "kremj5bexrrkx4tqbkshl4dvai-npo-2e9c95b77f4aace5"
BASE = "https://fhir.example.org/fhir"
UCUM = "http://unitsofmeasure.org"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
LITERAL = "references.html#literal"


def observation() -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": OBSERVATION_ID,
        "meta": {"lastUpdated": "2026-10-27T09:45:00+01:00", "source": "urn:fhir-facade:source:npo"},
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7", "display": "Glukos"}]},
        "subject": {"reference": PATIENT},
        "effectiveDateTime": "2026-10-27T09:45:00+01:00",
        "valueQuantity": {
            "value": 5.4,
            "unit": "mmol/L",
            "system": "http://unitsofmeasure.org",
            "code": "mmol/L",
        },
        "note": [{"text": "Fastande."}],
    }


def bundle(*resources: dict[str, Any]) -> dict[str, Any]:
    base = BASE
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "total": len(resources),
        "link": [{"relation": "self", "url": f"{base}/Observation?patient=x"}],
        "entry": [
            {"fullUrl": f"{base}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": "match"}}
            for r in resources
        ],
    }


def test_the_schema_is_the_pinned_one() -> None:
    import hashlib

    assert hashlib.sha256(schema_path().read_bytes()).hexdigest() == SCHEMA_SHA256


def test_a_valid_resource_and_bundle_have_no_errors() -> None:
    assert validate(observation()) == []
    b = bundle(observation())
    assert validate(b) == []
    assert [r["resourceType"] for _, r in resources_in(b)] == ["Bundle", "Observation"]


Mutation = Callable[[dict[str, Any]], Any]


def _set(path: str, value: Any) -> Mutation:
    def mutate(r: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = r
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        node[int(last) if last.isdigit() else last] = value

    return mutate


def _drop(key: str) -> Mutation:
    return lambda r: r.pop(key)


# (what is broken, how, the check that names it)
BROKEN: list[tuple[str, Mutation, str]] = [
    ("an unknown element", _set("colour", "red"), "[R4 schema]"),
    ("an unknown element, to the second parser", _set("colour", "red"), "Superfluous"),
    ("a code outside a required binding", _set("status", "done"), "[R4 schema]"),
    ("a missing required element", _drop("code"), "[R4 schema]"),
    ("a missing required element, to the second parser", _drop("code"), "[fhirclient]"),
    ("a list where one value is allowed", _set("status", ["final"]), "[R4 schema]"),
    ("one value where a list is required", _set("note", {"text": "x"}), "[R4 schema]"),
    ("a wrong JSON type", _set("valueQuantity.value", "5,4"), "[R4 schema]"),
    ("an id with a space", _set("id", "a b"), "[R4 schema]"),
    ("an id over 64 characters", _set("id", "a" * 65), "[R4 schema]"),
    ("a code with leading whitespace", _set("code.coding.0.code", " 2345-7"), "[R4 schema]"),
    ("a uri with a space", _set("code.coding.0.system", "http://loinc .org"), "[R4 schema]"),
    ("a dateTime with a time and no zone", _set("effectiveDateTime", "2026-10-27T09:45:00"), "[R4 schema]"),
    ("a dateTime without seconds", _set("effectiveDateTime", "2026-10-27T09:45+01:00"), "[R4 schema]"),
    ("an impossible date", _set("effectiveDateTime", "2026-02-30"), "[fhirclient]"),
    ("an instant without a time", _set("meta.lastUpdated", "2026-10-27"), "[R4 schema]"),
    ("an empty string", _set("note.0.text", ""), "[R4 schema]"),
    ("a null", _set("note.0.text", None), "json.html: no nulls"),
    ("an empty array", _set("note", []), "json.html: arrays are never empty"),
    ("an empty object", _set("valueQuantity", {}), "ele-1"),
    ("two values of one choice element", _set("valueString", "5,4"), "formats.html#choice"),
    ("a unit code without a system", lambda r: r["valueQuantity"].pop("system"), "qty-3"),
    (
        "a reference that is not type/id",
        _set("subject.reference", "kremj5bexrrkx4tqbkshl4dvai"),
        "references.html#literal",
    ),
    ("a reference to no R4 type", _set("subject.reference", "Brukare/1"), LITERAL),
    ("a reference type that disagrees", _set("subject.type", "Group"), "Reference.type"),
    ("a local reference with nothing contained", _set("subject.reference", "#p1"), "ref-1"),
    (
        "a period that ends before it starts",
        _set("effectivePeriod", {"start": "2026-10-28", "end": "2026-10-27"}),
        "per-1",
    ),
    ("a value with a data-absent reason", _set("dataAbsentReason", {"text": "x"}), "obs-6"),
    ("a resource type R4 does not have", _set("resourceType", "Bundle_Entry"), "not an R4 resource type"),
]


@pytest.mark.parametrize(("what", "mutate", "named"), BROKEN, ids=[b[0] for b in BROKEN])
def test_each_broken_observation_is_rejected(
    what: str, mutate: Callable[[dict[str, Any]], None], named: str
) -> None:
    r = observation()
    mutate(r)
    errors = validate(r)
    assert any(named in e for e in errors), (what, errors)
    # and the same resource inside a Bundle is rejected too, by its entry
    if r["resourceType"] == "Observation":
        assert any(named in e and "entry[0]" in e for e in validate(bundle(r))) or named in (
            "Superfluous",
            "[fhirclient]",
        ), what


def _broken_bundle(mutate: Mutation) -> list[str]:
    b = bundle(observation(), {**observation(), "id": "other"})
    mutate(b)
    return validate(b)


def _retype(kind: str) -> Mutation:
    def mutate(b: dict[str, Any]) -> None:
        b.update(type=kind)
        b.pop("total")
        for e in b["entry"]:
            e.pop("search")

    return mutate


@pytest.mark.parametrize(
    ("mutate", "named"),
    [
        (_set("type", "collection"), "bdl-1"),
        (lambda b: b.update(type="collection") or b.pop("total"), "bdl-2"),
        (
            _set(
                "entry.1.fullUrl",
                "https://fhir.example.org/fhir/Observation/kremj5bexrrkx4tqbkshl4dvai-npo-2e9c95b77f4aace5",
            ),
            "bdl-7",
        ),
        (_set("entry.1.fullUrl", "https://fhir.example.org/fhir/Observation/other/_history/1"), "bdl-8"),
        (_set("entry.1.fullUrl", "https://fhir.example.org/fhir/Observation/else"), "Bundle.entry.fullUrl"),
        (_set("entry.1.fullUrl", "Observation/other"), "Bundle.entry.fullUrl"),
        (_set("entry.1.search", {"mode": "hit"}), "[R4 schema]"),
        (
            lambda b: b.update(type="document") or b.pop("total") or [e.pop("search") for e in b["entry"]],
            "bdl-11",
        ),
        (
            lambda b: b.update(type="transaction") or b.pop("total") or [e.pop("search") for e in b["entry"]],
            "bdl-3",
        ),
    ],
    ids=[
        "total",
        "search",
        "unique",
        "versioned",
        "disagrees",
        "relative",
        "mode",
        "document",
        "transaction",
    ],
)
def test_each_broken_bundle_is_rejected(mutate: Mutation, named: str) -> None:
    errors = _broken_bundle(mutate)
    assert any(named in e for e in errors), errors


def test_resource_invariants_the_facade_relies_on() -> None:
    ma = {
        "resourceType": "MedicationAdministration",
        "status": "completed",
        "medicationCodeableConcept": {"text": "Apixaban"},
        "subject": {"reference": PATIENT},
        "effectiveDateTime": "2026-11-01T20:00:00+01:00",
        "dosage": {"text": "1 tablett"},
    }
    assert any("[mad-1]" in e for e in validate(ma))
    ma["dosage"]["dose"] = {"value": 1, "unit": "tablett"}
    assert validate(ma) == []

    condition = {
        "resourceType": "Condition",
        "clinicalStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}
            ]
        },
        "code": {"text": "Fraktur"},
        "subject": {"reference": PATIENT},
        "abatementDateTime": "2026-01-01",
    }
    assert any("[con-4]" in e for e in validate(condition))
    condition["clinicalStatus"]["coding"][0]["code"] = "resolved"
    assert validate(condition) == []

    allergy = {"resourceType": "AllergyIntolerance", "patient": {"reference": PATIENT}}
    assert any("[ait-1]" in e for e in validate(allergy))

    contained = copy.deepcopy(observation())
    contained["contained"] = [{"resourceType": "Patient", "id": "p1"}]
    assert any("[dom-3]" in e for e in validate(contained))
    contained["subject"] = {"reference": "#p1"}
    assert validate(contained) == []

    flag = {
        "resourceType": "Flag",
        "status": "active",
        "code": {"text": "x"},
        "subject": {"reference": PATIENT},
    }
    flag["text"] = {"status": "generated", "div": "<p>no div</p>"}
    assert any("txt-1" in e for e in validate(flag))
    flag["text"]["div"] = '<div xmlns="http://www.w3.org/1999/xhtml"><p>Hot</p></div>'
    assert validate(flag) == []
    for bad, rule in (
        ('<div xmlns="http://www.w3.org/1999/xhtml"><p>Hot</div>', "txt-1"),  # not well-formed
        ('<div xmlns="http://www.w3.org/1999/xhtml"><script>x()</script></div>', "txt-1"),
        ('<div xmlns="http://www.w3.org/1999/xhtml"><p onclick="x()">Hot</p></div>', "txt-1"),
        ("<div><p>Hot</p></div>", "txt-1"),  # not in the XHTML namespace
        ('<div xmlns="http://www.w3.org/1999/xhtml"><p> </p></div>', "txt-2"),
    ):
        flag["text"]["div"] = bad
        assert any(f"[{rule}]" in e for e in validate(flag)), bad
    flag["text"]["div"] = '<div xmlns="http://www.w3.org/1999/xhtml"><p>Hot</p></div>'
    flag["extension"] = [{"url": "urn:x"}]
    assert any("[ext-1]" in e for e in validate(flag))


def test_integers_are_whole_and_in_range() -> None:
    imm = {
        "resourceType": "Immunization",
        "status": "completed",
        "vaccineCode": {"text": "x"},
        "patient": {"reference": PATIENT},
        "occurrenceDateTime": "2026-01-01",
        "protocolApplied": [{"doseNumberPositiveInt": 1}],
    }
    assert validate(imm) == []
    for bad in (0, 1.5, True):
        imm["protocolApplied"][0]["doseNumberPositiveInt"] = bad
        assert any("positiveInt" in e for e in validate(imm)), bad


def test_what_r4_allows_is_not_an_error() -> None:
    r = observation()
    # json.html: a repeating primitive's null where its _x list has that position's extension
    r["code"]["coding"][0]["extension"] = [{"url": "urn:x", "valueString": "y"}]
    patient = {
        "resourceType": "Patient",
        "name": [
            {"given": ["Tolvan", None], "_given": [None, {"extension": [{"url": "urn:x", "valueCode": "z"}]}]}
        ],
    }
    assert validate(patient) == []
    # an absolute reference, to a RESTful server or not, and a urn
    for ref in (
        "https://fhir.example.org/fhir/Patient/1",
        "https://example.org/records/1",
        f"urn:uuid:{'0' * 8}-0000-0000-0000-{'0' * 12}",
    ):
        r["subject"] = {"reference": ref}
        assert validate(r) == [], ref
    r["subject"] = {"reference": "urn:uuid:not-a-uuid"}
    assert any("references.html#literal" in e for e in validate(r))
    # the same precision compared only: a day and a time of that day are not out of order
    r.pop("effectiveDateTime")
    r["effectivePeriod"] = {"start": "2026-10-27T09:45:00+01:00", "end": "2026-10-27"}
    r["subject"] = {"reference": PATIENT}
    assert validate(r) == []
