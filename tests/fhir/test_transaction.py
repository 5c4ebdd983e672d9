"""A home-visit transaction Bundle, checked before anything is accepted (proxy/fhir/transaction.py):
the ready example passes, each check refuses what it is there for, every problem is listed at
once and named by where it is, nothing personal is echoed, and what comes out is what the write
path renders (minted identifiers, references between entries rewritten)."""

from __future__ import annotations

import base64
import copy
import hashlib
import itertools
import json
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from proxy.fhir.transaction import (
    CLOCK_SKEW_S,
    HOME_VISIT_CODES,
    MAX_DEPTH,
    WRITTEN_SYSTEM,
    TransactionInvalid,
    ValidTransaction,
    VitalSign,
    validate_transaction,
)
from proxy.simulators.population import LENNART, TOLVAN
from tests.conftest import IDS, pid, validate

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "home-visit.json"
NOW = datetime.fromisoformat("2025-03-14T12:00:00+01:00").timestamp()  # after the example's visit
TOLVAN_ID = pid(TOLVAN.pnr)
ENC = "urn:uuid:5b0c6a3e-8f2d-4c1a-9e7b-1d2f3a4b5c60"  # the example's Encounter
E = "Bundle.entry"
# the example's entries: 0 Encounter, 1 blood pressure, 2 heart rate, 3 respiratory rate,
# 4 temperature, 5 SpO2, 6 level of consciousness, 7 nursing note, 8 dose given, 9 dose not given


def example() -> dict[str, Any]:
    bundle: dict[str, Any] = json.loads(EXAMPLE.read_bytes())
    return bundle


def is_ours(patient_id: str) -> bool:
    return IDS.decode(patient_id) is not None


def check(body: bytes | dict[str, Any], now: float = NOW, **kw: Any) -> ValidTransaction:
    return validate_transaction(body, patient_ids=is_ours, now=now, **kw)


def problems(body: bytes | dict[str, Any], now: float = NOW) -> list[tuple[str | None, str]]:
    """The (expression, code) of every issue the Bundle gets; [] if it is accepted."""
    try:
        check(body, now)
    except TransactionInvalid as exc:
        for i in exc.issues:
            assert i["severity"] == "error" and i["diagnostics"], i
        return [(i.get("expression", [None])[0], i["code"]) for i in exc.issues]
    return []


def res(bundle: dict[str, Any], i: int) -> dict[str, Any]:
    entry: dict[str, Any] = bundle["entry"][i]["resource"]
    return entry


def counter() -> Callable[[], str]:
    numbers = itertools.count(1)
    return lambda: f"{next(numbers):032x}"


# -- the example -----------------------------------------------------------------------------------


def test_the_example_is_a_valid_home_visit_for_tolvan() -> None:
    raw = EXAMPLE.read_bytes()
    txn = check(raw, mint=counter())
    assert txn.identifier == "urn:ietf:rfc:3986|urn:uuid:0e7f3c2a-6b1d-4e8f-a5c4-93d2b1a0f7e6"
    assert txn.patient_id == TOLVAN_ID  # the demo deployment's id for 19121212-1212
    assert txn.digest == hashlib.sha256(raw).hexdigest()
    assert [e.resource_type for e in txn.entries] == [
        "Encounter",
        *["Observation"] * 6,
        "DocumentReference",
        "MedicationAdministration",
        "MedicationAdministration",
    ]
    assert [e.full_url for e in txn.entries] == [e["fullUrl"] for e in example()["entry"]]
    assert [e.identifier for e in txn.entries] == [f"{n:032x}" for n in range(1, 11)]
    loinc = {res(example(), i)["code"]["coding"][0]["code"] for i in range(1, 7)}
    assert loinc == {"85354-9", "8867-4", "9279-1", "8310-5", "59408-5", "80288-4"}
    statuses = [e.resource["status"] for e in txn.entries[8:]]
    assert statuses == ["completed", "not-done"]
    for entry in txn.entries:
        validate(entry.resource)  # what the write path renders is valid R4 (both validators)


def test_the_example_is_valid_now_too() -> None:
    """Its times are fixed and past: it stays valid on the real clock (the README's curl)."""
    assert check(EXAMPLE.read_bytes(), now=datetime.now().timestamp()).patient_id == TOLVAN_ID


def test_minted_identifiers_are_uuid4_hex_and_added_to_each_resource() -> None:
    txn = check(example())
    minted = [e.identifier for e in txn.entries]
    assert len(set(minted)) == len(minted)
    for entry in txn.entries:
        assert re.fullmatch(r"[0-9a-f]{32}", entry.identifier)
        assert entry.resource["identifier"][-1] == {"system": WRITTEN_SYSTEM, "value": entry.identifier}
    assert check(example()).entries[0].identifier not in minted  # fresh each time


def test_a_clients_own_identifiers_are_kept_beside_the_minted_one() -> None:
    bundle = example()
    res(bundle, 0)["identifier"] = [{"system": "urn:oid:1.2.752.1", "value": "visit-17"}]
    txn = check(bundle, mint=counter())
    assert txn.entries[0].resource["identifier"] == [
        {"system": "urn:oid:1.2.752.1", "value": "visit-17"},
        {"system": WRITTEN_SYSTEM, "value": f"{1:032x}"},
    ]


def test_references_between_entries_become_logical_references_by_the_minted_identifier() -> None:
    txn = check(example(), mint=counter())
    encounter = {"identifier": {"system": WRITTEN_SYSTEM, "value": f"{1:032x}"}, "type": "Encounter"}
    for entry in txn.entries[1:7]:
        assert entry.resource["encounter"] == encounter
        assert entry.resource["subject"] == {"reference": f"Patient/{TOLVAN_ID}"}  # stays literal
    assert txn.entries[7].resource["context"]["encounter"] == [encounter]
    assert txn.entries[8].resource["context"] == encounter
    assert txn.entries[9].resource["context"] == encounter
    assert "urn:uuid:" not in json.dumps([e.resource for e in txn.entries])


def test_the_bundle_given_is_not_modified() -> None:
    bundle = example()
    before = copy.deepcopy(bundle)
    check(bundle)
    assert bundle == before


def test_the_digest_is_of_the_bytes_as_received() -> None:
    raw = EXAMPLE.read_bytes()
    assert check(raw).digest == check(raw).digest == hashlib.sha256(raw).hexdigest()
    compact = json.dumps(example(), separators=(",", ":"), ensure_ascii=False).encode()
    assert check(compact).digest == hashlib.sha256(compact).hexdigest() != check(raw).digest
    # a dict: its compact key-sorted JSON, whatever order its keys were built in
    reordered = dict(reversed(list(example().items())))
    assert check(example()).digest == check(reordered).digest
    changed = example()
    res(changed, 2)["valueQuantity"]["value"] = 79
    assert check(changed).digest != check(example()).digest


# -- every problem at once ---------------------------------------------------------------------------


def test_a_bundle_with_many_problems_lists_each_of_them() -> None:
    bundle = example()
    bundle["type"] = "batch"
    del bundle["identifier"]["value"]
    bundle["entry"][1]["request"]["method"] = "PUT"
    res(bundle, 0)["class"]["code"] = "AMB"
    res(bundle, 2)["effectiveDateTime"] = "2025-03-14T09:40:00"  # no zone
    res(bundle, 3)["valueQuantity"]["code"] = "Cel"  # a respiratory rate in degrees
    res(bundle, 4)["subject"] = {"reference": f"Patient/{pid(LENNART.pnr)}"}
    res(bundle, 5)["encounter"] = {"reference": "urn:uuid:00000000-0000-4000-8000-000000000000"}
    res(bundle, 6)["bodySite"] = "arm"  # not a CodeableConcept
    res(bundle, 7)["content"][0]["attachment"]["contentType"] = "text/html"
    del res(bundle, 9)["statusReason"]
    assert problems(bundle) == [
        ("Bundle.type", "value"),
        ("Bundle.identifier.value", "required"),
        (f"{E}[0].resource.class", "code-invalid"),
        (f"{E}[1].request.method", "not-supported"),
        (f"{E}[2].resource.effectiveDateTime", "value"),
        (f"{E}[3].resource.valueQuantity", "code-invalid"),
        (f"{E}[4].resource.subject.reference", "business-rule"),
        (f"{E}[5].resource.encounter.reference", "not-found"),
        (f"{E}[6].resource.bodySite", "structure"),
        (f"{E}[7].resource.content[0].attachment.contentType", "value"),
        (f"{E}[9].resource.statusReason", "required"),
    ]


def test_the_answer_is_an_operation_outcome() -> None:
    bundle = example()
    bundle["type"] = "batch"
    with pytest.raises(TransactionInvalid) as caught:
        check(bundle)
    assert caught.value.status == 400
    outcome = caught.value.outcome()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"] == [
        {
            "severity": "error",
            "code": "value",
            "diagnostics": "Bundle.type must be transaction",
            "expression": ["Bundle.type"],
        }
    ]
    validate(outcome)


# -- each check refuses what it is there for --------------------------------------------------------

Mutation = Callable[[dict[str, Any]], Any]


def _set(i: int, path: str, value: Any) -> Mutation:
    def mutate(bundle: dict[str, Any]) -> None:
        node = bundle["entry"][i]
        *steps, last = path.split(".")
        for step in steps:
            node = node[int(step)] if step.isdigit() else node[step]
        node[int(last) if last.isdigit() else last] = value

    return mutate


def _del(i: int, path: str) -> Mutation:
    def mutate(bundle: dict[str, Any]) -> None:
        node = bundle["entry"][i]
        *steps, last = path.split(".")
        for step in steps:
            node = node[int(step)] if step.isdigit() else node[step]
        del node[last]

    return mutate


def _many(*mutations: Mutation) -> Mutation:
    def mutate(bundle: dict[str, Any]) -> None:
        for m in mutations:
            m(bundle)

    return mutate


R = "resource"
CASES: list[tuple[str, Mutation, list[tuple[str, str]]]] = [
    ("not transaction", lambda b: b.update(type="batch"), [("Bundle.type", "value")]),
    ("no identifier", lambda b: b.pop("identifier"), [("Bundle.identifier", "required")]),
    (
        "no identifier.system",
        lambda b: b["identifier"].pop("system"),
        [("Bundle.identifier.system", "required")],
    ),
    ("empty Bundle", lambda b: b.update(entry=[]), [("Bundle.entry", "required")]),
    ("an unknown Bundle element", lambda b: b.update(total=3, foo=1), [("Bundle.foo", "structure")]),
    ("entry not an object", lambda b: b["entry"].append("x"), [(f"{E}[10]", "structure")]),
    ("no fullUrl", _del(2, "fullUrl"), [(f"{E}[2].fullUrl", "required")]),
    (
        "fullUrl not urn:uuid",
        _set(2, "fullUrl", "http://example.org/Observation/1"),
        [(f"{E}[2].fullUrl", "value")],
    ),
    ("fullUrl twice", _set(2, "fullUrl", ENC), [(f"{E}[2].fullUrl", "invariant")]),
    ("no request", _del(2, "request"), [(f"{E}[2].request", "required")]),
    ("PUT", _set(2, "request.method", "PUT"), [(f"{E}[2].request.method", "not-supported")]),
    ("url not the type", _set(2, "request.url", "Encounter"), [(f"{E}[2].request.url", "value")]),
    (
        "a conditional create",
        _set(2, "request.ifNoneExist", "identifier=x"),
        [(f"{E}[2].request.ifNoneExist", "not-supported")],
    ),
    ("no resource", _del(2, R), [(f"{E}[2].request.url", "value"), (f"{E}[2].resource", "required")]),
    (
        "a type not written",
        _many(_set(2, "request.url", "Condition"), _set(2, f"{R}.resourceType", "Condition")),
        [(f"{E}[2].resource.resourceType", "not-supported")],
    ),
    ("an element not in R4", _set(2, f"{R}.foo", 1), [(f"{E}[2].resource.foo", "structure")]),
    ("a list expected", _set(2, f"{R}.note", "text"), [(f"{E}[2].resource.note", "structure")]),
    (
        "not a decimal",
        _set(2, f"{R}.valueQuantity.value", "x"),
        [(f"{E}[2].resource.valueQuantity.value", "value")],
    ),
    ("two values", _set(2, f"{R}.valueString", "x"), [(f"{E}[2].resource.value", "structure")]),
    ("empty string", _set(2, f"{R}.code.text", ""), [(f"{E}[2].resource.code.text", "structure")]),
    ("blank string", _set(2, f"{R}.code.text", " \n"), [(f"{E}[2].resource.code.text", "structure")]),
    ("null", _set(2, f"{R}.code.text", None), [(f"{E}[2].resource.code.text", "structure")]),
    # what no target carries: refused at the outermost element, not lost on the way
    (
        "a security label",
        _set(7, f"{R}.meta", {"security": [{"system": "urn:x", "code": "NOPAT"}], "profile": ["urn:p"]}),
        [(f"{E}[7].resource.meta.security", "not-supported")],
    ),
    ("a note", _set(2, f"{R}.note", [{"text": "x"}]), [(f"{E}[2].resource.note", "not-supported")]),
    (
        "a second attachment",
        lambda b: b["entry"][7]["resource"]["content"].append(b["entry"][7]["resource"]["content"][0]),
        [(f"{E}[7].resource.content[1]", "not-supported")],
    ),
    (
        "a reference by identifier",
        _set(2, f"{R}.encounter", {"identifier": {"system": "urn:x", "value": "v"}}),
        [(f"{E}[2].resource.encounter.identifier", "not-supported")],
    ),
    (
        "a reference outside the Bundle",
        _set(2, f"{R}.encounter", {"reference": "Encounter/abc"}),
        [(f"{E}[2].resource.encounter.reference", "not-supported")],
    ),
    (
        "a second encounter of a note",
        lambda b: b["entry"][7]["resource"]["context"]["encounter"].append({"reference": ENC}),
        [(f"{E}[7].resource.context.encounter[1]", "not-supported")],
    ),
    (
        "a comparator",
        _set(2, f"{R}.valueQuantity.comparator", "<"),
        [(f"{E}[2].resource.valueQuantity.comparator", "not-supported")],
    ),
    (
        "an extension inside a carried element",
        _set(0, f"{R}.period.extension", [{"url": "urn:x", "valueString": "x"}]),
        [(f"{E}[0].resource.period.extension", "not-supported")],
    ),
    (
        "a preliminary measurement",
        _set(2, f"{R}.status", "preliminary"),
        [(f"{E}[2].resource.status", "code-invalid")],
    ),
    (
        "a reason for a dose given",
        _set(8, f"{R}.statusReason", [{"text": "x"}]),
        [(f"{E}[8].resource.statusReason", "not-supported")],
    ),
    (
        "an attachment's title",
        _set(7, f"{R}.content.0.attachment.title", "x"),
        [(f"{E}[7].resource.content[0].attachment.title", "not-supported")],
    ),
    (
        "a narrative not generated",
        _set(
            2,
            f"{R}.text",
            {"status": "additional", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'},
        ),
        [(f"{E}[2].resource.text.status", "not-supported")],
    ),
    (
        "contained",
        _set(2, f"{R}.contained", [{"resourceType": "Patient"}]),
        [(f"{E}[2].resource.contained", "not-supported")],
    ),
    (
        "modifier extension",
        _set(2, f"{R}.modifierExtension", [{"url": "urn:x", "valueBoolean": True}]),
        [(f"{E}[2].resource.modifierExtension", "not-supported")],
    ),
    (
        "the facade's identifier sent",
        _set(2, f"{R}.identifier", [{"system": WRITTEN_SYSTEM, "value": "0" * 32}]),
        [(f"{E}[2].resource.identifier[0]", "invalid")],
    ),
    (
        "an unresolved urn:uuid",
        _set(2, f"{R}.encounter.reference", "urn:uuid:00000000-0000-4000-8000-000000000000"),
        [(f"{E}[2].resource.encounter.reference", "not-found")],
    ),
    (
        "a reference to the wrong type",
        _set(2, f"{R}.encounter.reference", "urn:uuid:5b0c6a3e-8f2d-4c1a-9e7b-1d2f3a4b5c63"),
        [(f"{E}[2].resource.encounter.reference", "invalid")],
    ),
    (
        "a contained reference",
        _set(2, f"{R}.encounter.reference", "#enc"),
        [(f"{E}[2].resource.encounter.reference", "not-found")],
    ),
    ("no subject", _del(2, f"{R}.subject"), [(f"{E}[2].resource.subject", "required")]),
    (
        "subject by personnummer",
        _set(
            2,
            f"{R}.subject",
            {
                "identifier": {
                    "system": "http://electronichealth.se/identifier/personnummer",
                    "value": "191212121212",
                }
            },
        ),
        [(f"{E}[2].resource.subject", "value")],
    ),
    (
        "subject not ours",
        _set(2, f"{R}.subject.reference", "Patient/abc"),
        [(f"{E}[2].resource.subject.reference", "not-found")],
    ),
    (
        "another patient",
        _set(2, f"{R}.subject.reference", f"Patient/{pid(LENNART.pnr)}"),
        [(f"{E}[2].resource.subject.reference", "business-rule")],
    ),
    (
        "another patient as performer",
        _set(2, f"{R}.performer", [{"reference": f"Patient/{pid(LENNART.pnr)}"}]),
        [(f"{E}[2].resource.performer[0].reference", "business-rule")],
    ),
    (
        "a time without a zone",
        _set(2, f"{R}.effectiveDateTime", "2025-03-14T09:40:00"),
        [(f"{E}[2].resource.effectiveDateTime", "value")],
    ),
    (
        "a date without a time",
        _set(2, f"{R}.effectiveDateTime", "2025-03-14"),
        [(f"{E}[2].resource.effectiveDateTime", "value")],
    ),
    ("no time", _del(2, f"{R}.effectiveDateTime"), [(f"{E}[2].resource.effectiveDateTime", "required")]),
    (
        "in the future",
        _set(2, f"{R}.effectiveDateTime", "2025-03-14T13:00:00+01:00"),
        [(f"{E}[2].resource.effectiveDateTime", "business-rule")],
    ),
    (
        "issued in the future",
        _set(2, f"{R}.issued", "2025-03-14T13:00:00+01:00"),
        [(f"{E}[2].resource.issued", "business-rule")],
    ),
    (
        "an Encounter ending before it starts",
        _set(0, f"{R}.period.end", "2025-03-14T09:00:00+01:00"),
        [(f"{E}[0].resource.period.end", "invalid")],
    ),
    (
        "an Encounter without start",
        _del(0, f"{R}.period.start"),
        [(f"{E}[0].resource.period.start", "required")],
    ),
    ("not home health", _set(0, f"{R}.class.code", "AMB"), [(f"{E}[0].resource.class", "code-invalid")]),
    ("an Encounter status", _set(0, f"{R}.status", "planned"), [(f"{E}[0].resource.status", "code-invalid")]),
    ("an Observation status", _set(2, f"{R}.status", "bogus"), [(f"{E}[2].resource.status", "code-invalid")]),
    ("not a vital sign", _del(2, f"{R}.category"), [(f"{E}[2].resource.category", "code-invalid")]),
    (
        "an unknown LOINC code",
        _set(2, f"{R}.code.coding.0.code", "2345-7"),
        [(f"{E}[2].resource.code", "code-invalid")],
    ),
    (
        "not LOINC",
        _set(2, f"{R}.code.coding.0.system", "http://snomed.info/sct"),
        [(f"{E}[2].resource.code", "code-invalid")],
    ),
    (
        "the wrong unit",
        _set(2, f"{R}.valueQuantity.code", "Cel"),
        [(f"{E}[2].resource.valueQuantity", "code-invalid")],
    ),
    (
        "a unit not UCUM",
        _del(2, f"{R}.valueQuantity.system"),
        [(f"{E}[2].resource.valueQuantity", "code-invalid")],
    ),
    ("no value", _del(2, f"{R}.valueQuantity"), [(f"{E}[2].resource.valueQuantity", "required")]),
    ("no diastolic", lambda b: res(b, 1)["component"].pop(), [(f"{E}[1].resource.component", "required")]),
    (
        "an unknown component",
        _set(1, f"{R}.component.1.code.coding.0.code", "8867-4"),
        [(f"{E}[1].resource.component[1].code", "code-invalid"), (f"{E}[1].resource.component", "required")],
    ),
    (
        "a component's unit",
        _set(1, f"{R}.component.0.valueQuantity.code", "%"),
        [(f"{E}[1].resource.component[0].valueQuantity", "code-invalid")],
    ),
    (
        "no consciousness level",
        _del(6, f"{R}.valueCodeableConcept"),
        [(f"{E}[6].resource.valueCodeableConcept", "required")],
    ),
    (
        "a note not text",
        _set(7, f"{R}.content.0.attachment.contentType", "application/pdf"),
        [(f"{E}[7].resource.content[0].attachment.contentType", "value")],
    ),
    (
        "a note without text",
        _del(7, f"{R}.content.0.attachment.data"),
        [(f"{E}[7].resource.content[0].attachment.data", "required")],
    ),
    (
        "a note not UTF-8",
        _set(7, f"{R}.content.0.attachment.data", base64.b64encode("Hembesök".encode("latin-1")).decode()),
        [(f"{E}[7].resource.content[0].attachment.data", "value")],
    ),
    (
        "not a nurse note",
        _set(7, f"{R}.type.coding.0.code", "11506-3"),
        [(f"{E}[7].resource.type", "code-invalid")],
    ),
    (
        "a note not current",
        _set(7, f"{R}.status", "superseded"),
        [(f"{E}[7].resource.status", "code-invalid")],
    ),
    ("a note without date", _del(7, f"{R}.date"), [(f"{E}[7].resource.date", "required")]),
    (
        "a note in the future",
        _set(7, f"{R}.date", "2030-01-01T10:00:00+01:00"),
        [(f"{E}[7].resource.date", "business-rule")],
    ),
    (
        "a note to a wrong encounter",
        _set(7, f"{R}.context.encounter.0.reference", "urn:uuid:5b0c6a3e-8f2d-4c1a-9e7b-1d2f3a4b5c68"),
        [(f"{E}[7].resource.context.encounter[0].reference", "invalid")],
    ),
    (
        "a dose not given without reason",
        _del(9, f"{R}.statusReason"),
        [(f"{E}[9].resource.statusReason", "required")],
    ),
    ("a dose given without dose", _del(8, f"{R}.dosage"), [(f"{E}[8].resource.dosage.dose", "required")]),
    (
        "an administration status",
        _set(8, f"{R}.status", "in-progress"),
        [(f"{E}[8].resource.status", "code-invalid")],
    ),
    (
        "a medication not ATC",
        _set(8, f"{R}.medicationCodeableConcept.coding.0.system", "http://snomed.info/sct"),
        [(f"{E}[8].resource.medicationCodeableConcept", "code-invalid")],
    ),
    (
        "an ATC group, not a substance",
        _set(8, f"{R}.medicationCodeableConcept.coding.0.code", "N02BE"),
        [(f"{E}[8].resource.medicationCodeableConcept", "code-invalid")],
    ),
    (
        "a medication by reference",
        _many(
            _del(8, f"{R}.medicationCodeableConcept"),
            _set(8, f"{R}.medicationReference", {"reference": "Medication/1"}),
        ),
        [(f"{E}[8].resource.medicationReference", "not-supported")],
    ),
    (
        "an administration without time",
        _del(8, f"{R}.effectiveDateTime"),
        [(f"{E}[8].resource.effective", "required")],
    ),
    (
        "an administration period in the future",
        _many(
            _del(8, f"{R}.effectiveDateTime"),
            _set(
                8,
                f"{R}.effectivePeriod",
                {"start": "2025-03-14T09:50:00+01:00", "end": "2025-03-15T09:00:00+01:00"},
            ),
        ),
        [(f"{E}[8].resource.effectivePeriod.end", "business-rule")],
    ),
]


@pytest.mark.parametrize(
    ("mutate", "expected"), [(m, x) for _n, m, x in CASES], ids=[n for n, _m, _x in CASES]
)
def test_each_check_refuses_what_it_is_for(mutate: Mutation, expected: list[tuple[str, str]]) -> None:
    bundle = example()
    mutate(bundle)
    assert problems(bundle) == expected


def test_the_body_must_be_json() -> None:
    assert problems(b"{not json") == [(None, "structure")]
    assert problems(b"\xff\xfe") == [(None, "structure")]
    assert problems(b'{"resourceType": "Bundle", "total": NaN}') == [(None, "structure")]


@pytest.mark.parametrize("body", [b"[]", b'{"resourceType": "Patient"}', b'"Bundle"'])
def test_the_body_must_be_a_bundle(body: bytes) -> None:
    assert problems(body) == [("Bundle", "structure")]


def nested_extensions(levels: int) -> bytes:
    """The example with ``levels`` extensions nested in entry 1 (valid FHIR: extensions nest)."""
    deep = b'{"url":"urn:x","extension":[' * levels + b'{"url":"urn:x","valueString":"x"}' + b"]}" * levels
    marker = b'"status": "final"'
    return json.dumps(example()).encode().replace(marker, b'"extension": [' + deep + b"], " + marker, 1)


def test_a_bundle_nested_too_deeply_is_refused_not_a_crash() -> None:
    # (ten levels are R4, but no target carries an extension: refused as that, not as too deep)
    assert problems(nested_extensions(10)) == [(f"{E}[1].resource.extension", "not-supported")]
    assert problems(nested_extensions(MAX_DEPTH // 2)) == [(None, "structure")]
    # 400 extensions are 800 JSON levels: under orjson's limit of 1024, past Python's recursion's
    assert problems(nested_extensions(400)) == [(None, "structure")]


def test_the_clock_may_be_a_little_behind() -> None:
    bundle = example()
    res(bundle, 2)["effectiveDateTime"] = (
        datetime.fromtimestamp(NOW + CLOCK_SKEW_S - 60).astimezone().isoformat(timespec="seconds")
    )
    assert problems(bundle) == []
    res(bundle, 2)["effectiveDateTime"] = (
        datetime.fromtimestamp(NOW + CLOCK_SKEW_S + 60).astimezone().isoformat(timespec="seconds")
    )
    assert problems(bundle) == [(f"{E}[2].resource.effectiveDateTime", "business-rule")]


def test_oxygen_saturation_may_be_either_loinc_code() -> None:
    bundle = example()
    res(bundle, 5)["code"]["coding"][0]["code"] = "2708-6"
    assert problems(bundle) == []


def test_a_code_is_added_as_data() -> None:
    """A new vital sign is an entry in the table, not new logic."""
    bundle = example()
    res(bundle, 2)["code"]["coding"][0]["code"] = "29463-7"  # body weight
    res(bundle, 2)["valueQuantity"].update(value=71, code="kg")
    assert problems(bundle) == [(f"{E}[2].resource.code", "code-invalid")]
    weight = replace(
        HOME_VISIT_CODES, vital_signs={**HOME_VISIT_CODES.vital_signs, "29463-7": VitalSign(unit="kg")}
    )
    assert check(bundle, known_codes=weight).entries[2].resource["code"]["coding"][0]["code"] == "29463-7"
    res(bundle, 2)["valueQuantity"]["code"] = "[lb_av]"
    with pytest.raises(TransactionInvalid) as caught:
        check(bundle, known_codes=weight)
    assert [i["expression"] for i in caught.value.issues] == [[f"{E}[2].resource.valueQuantity"]]


# -- nothing personal is echoed -----------------------------------------------------------------------

NOTE = "Tolvan har ont i bröstet sedan i går"


def test_no_personal_data_in_any_diagnostics() -> None:
    bundle = example()
    res(bundle, 0)["subject"] = {"reference": "Patient/191212121212"}
    res(bundle, 1)["subject"] = {"identifier": {"value": "19121212-1212"}}
    res(bundle, 2)["code"]["coding"][0]["code"] = "191212121212"
    res(bundle, 2)["valueQuantity"]["value"] = NOTE
    res(bundle, 3)["191212121212"] = NOTE
    res(bundle, 3)["note"] = NOTE
    res(bundle, 4)["effectiveDateTime"] = NOTE
    res(bundle, 5)["status"] = NOTE
    res(bundle, 6)["valueCodeableConcept"] = NOTE
    res(bundle, 7)["content"][0]["attachment"]["data"] = NOTE
    res(bundle, 7)["content"][0]["attachment"]["contentType"] = NOTE
    res(bundle, 8)["medicationCodeableConcept"]["coding"][0]["code"] = "191212121212"
    res(bundle, 9)["statusReason"] = [{"text": NOTE, "coding": "191212121212"}]
    bundle["entry"][1]["fullUrl"] = "urn:uuid:191212121212"
    bundle["entry"][2]["request"]["url"] = NOTE
    bundle["identifier"]["system"] = "191212121212|"
    with pytest.raises(TransactionInvalid) as caught:
        check(bundle)
    text = json.dumps(caught.value.outcome(), ensure_ascii=False)
    assert len(caught.value.issues) >= 15
    assert not re.search(r"[0-9]{8}-?[0-9]{4}", text), text
    assert "Tolvan" not in text and "bröstet" not in text and NOTE not in text
    assert any("(an element not in FHIR)" in i["expression"][0] for i in caught.value.issues)
