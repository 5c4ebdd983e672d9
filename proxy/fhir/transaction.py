"""A home-visit transaction Bundle, checked before anything is accepted (the write path, issue 22).

``validate_transaction`` checks everything a write needs before it is stored or sent and lists
*every* problem it finds (a client fixes a Bundle in one round, not one problem a round):
the JSON and the Bundle's envelope, each entry's resource against its FHIR model (fhir.resources'
R4B models, as elsewhere in the facade; fhir.resources 8 ships no plain R4 ones), the entry's
request, fullUrls and the references between entries, one facade patient for the whole Bundle,
times with a zone and not in the future, and codes from the systems the write mappings know
(``HOME_VISIT_CODES``: data, so a new vital sign is a line in the table, not new logic).

Diagnostics never echo what the client sent (a personnummer, a note's text, a name): they say
which element (``expression``, a FHIRPath from ``Bundle``) and what the element needs.

What it returns is what the rest of the write path works on: each entry with an identifier the
facade minted (``WRITTEN_SYSTEM``) and its ``urn:uuid:`` references rewritten to logical
references by those identifiers, since neither backend knows the Bundle's fullUrls.
"""

from __future__ import annotations

import base64
import hashlib
import re
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from proxy.fhir.errors import issue, outcome
from proxy.settings import WRITABLE_TYPES
from proxy.types import FhirDict

WRITTEN_SYSTEM = "urn:fhir-facade:written"
# How far ahead of the facade's clock a time may be and still count as "now": the nurse's device
# and the facade's clock disagree by seconds to minutes; a visit hours ahead is a mistake.
CLOCK_SKEW_S = 300.0
EARLIEST = datetime(1900, 1, 1, tzinfo=UTC)  # (a time before it is a typing error, not care documented now)
MAX_DEPTH = 64  # JSON levels; a home visit's deepest element is about 10 down from the Bundle

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
ATC = "http://www.whocc.no/atc"


@dataclass(frozen=True)
class VitalSign:
    """What an Observation with this LOINC code carries: a quantity in ``unit`` (UCUM), its
    ``components`` (LOINC → UCUM, each once), or a coded value (``concept``)."""

    unit: str | None = None
    components: Mapping[str, str] = field(default_factory=dict)
    concept: bool = False


@dataclass(frozen=True)
class KnownCodes:
    """The codes a written resource may carry: what the write mappings can express."""

    status: Mapping[str, frozenset[str]]  # resource type → the statuses accepted
    encounter_class: frozenset[tuple[str, str]]  # (system, code)
    observation_category: tuple[str, str]
    vital_signs: Mapping[str, VitalSign]  # LOINC code →
    note_types: frozenset[tuple[str, str]]  # DocumentReference.type (system, code)
    medication: Mapping[str, str]  # system → a regular expression of its codes
    # resource type → the elements (paths without indices) the write mappings carry to a target, or
    # the facade itself checks (the subject); a value under any other element would be lost on the
    # way, so it is refused — a security label, a note, a second attachment, a logical reference
    carried: Mapping[str, frozenset[str]]


def _concept(at: str) -> tuple[str, ...]:
    """A CodeableConcept's leaves the mappings read (its codings' system, code and display; its text)."""
    return (f"{at}.coding.system", f"{at}.coding.code", f"{at}.coding.display", f"{at}.text")


def _quantity(at: str) -> tuple[str, ...]:
    """A Quantity's leaves the mappings read: not a ``comparator`` ("< 90" written as 90 would lie)."""
    return (f"{at}.value", f"{at}.unit", f"{at}.system", f"{at}.code")


_PERIOD = ("period.start", "period.end")


HOME_VISIT_CODES = KnownCodes(
    status={
        "Encounter": frozenset({"finished", "in-progress"}),
        "Observation": frozenset({"final"}),  # (no target carries a status: a measurement is final)
        "DocumentReference": frozenset({"current"}),
        "MedicationAdministration": frozenset({"completed", "not-done"}),
    },
    encounter_class=frozenset({(ACT_CODE, "HH")}),
    observation_category=(OBSERVATION_CATEGORY, "vital-signs"),
    vital_signs={
        "85354-9": VitalSign(components={"8480-6": "mm[Hg]", "8462-4": "mm[Hg]"}),  # blood pressure
        "8867-4": VitalSign(unit="/min"),  # heart rate
        "9279-1": VitalSign(unit="/min"),  # respiratory rate
        "8310-5": VitalSign(unit="Cel"),  # body temperature
        "59408-5": VitalSign(unit="%"),  # SpO2 by pulse oximetry
        "2708-6": VitalSign(unit="%"),  # SaO2
        "80288-4": VitalSign(concept=True),  # level of consciousness (ACVPU)
    },
    note_types=frozenset({(LOINC, "34746-8")}),  # Nurse Note
    medication={ATC: r"[A-Z][0-9]{2}[A-Z]{2}[0-9]{2}"},  # a substance (ATC level 5)
    carried={
        "Encounter": frozenset({"status", "class.system", "class.code", "class.display", *_PERIOD}),
        "Observation": frozenset(
            {
                "status",
                *_concept("category"),
                *_concept("code"),
                "effectiveDateTime",
                "encounter.reference",
                *_quantity("valueQuantity"),
                *_concept("valueCodeableConcept"),
                *_concept("component.code"),
                *_quantity("component.valueQuantity"),
            }
        ),
        "DocumentReference": frozenset(
            {
                "status",
                "docStatus",
                *_concept("type"),
                "date",
                "description",
                "content.attachment.contentType",
                "content.attachment.data",
                "context.encounter.reference",
            }
        ),
        "MedicationAdministration": frozenset(
            {
                "status",
                *_concept("statusReason"),
                *_concept("medicationCodeableConcept"),
                "effectiveDateTime",
                "context.reference",
                *_quantity("dosage.dose"),
            }
        ),
    },
)
# ... and in every written resource: what the facade reads itself (its profile claims nothing a target
# must carry; a narrative generated from the data says nothing the data does not)
# (and the client's own identifiers: not content, and the record is found by the facade's minted one)
CARRIED_BY_ALL = frozenset({"resourceType", "id", "identifier", "meta.profile", "text", "subject.reference"})
# arrays of which the mappings carry one item only (a second would be lost)
ONE_ONLY: Mapping[str, frozenset[str]] = {
    "DocumentReference": frozenset({"content", "context.encounter"}),
    "MedicationAdministration": frozenset({"statusReason"}),
}

# R4's target types of the reference elements of the writable types that allow fewer than all
# (an element not named here may point at any entry).
TARGET_TYPES: Mapping[tuple[str, str], frozenset[str]] = {
    ("Encounter", "partOf"): frozenset({"Encounter"}),
    ("Encounter", "episodeOfCare"): frozenset({"EpisodeOfCare"}),
    ("Encounter", "diagnosis.condition"): frozenset({"Condition", "Procedure"}),
    ("Observation", "encounter"): frozenset({"Encounter"}),
    ("Observation", "hasMember"): frozenset({"Observation", "QuestionnaireResponse", "MolecularSequence"}),
    ("Observation", "derivedFrom"): frozenset(
        {
            "DocumentReference",
            "ImagingStudy",
            "Media",
            "QuestionnaireResponse",
            "Observation",
            "MolecularSequence",
        }
    ),
    ("Observation", "partOf"): frozenset(
        {
            "MedicationAdministration",
            "MedicationDispense",
            "MedicationStatement",
            "Procedure",
            "Immunization",
            "ImagingStudy",
        }
    ),
    ("DocumentReference", "context.encounter"): frozenset({"Encounter", "EpisodeOfCare"}),
    ("DocumentReference", "relatesTo.target"): frozenset({"DocumentReference"}),
    ("MedicationAdministration", "context"): frozenset({"Encounter", "EpisodeOfCare"}),
    ("MedicationAdministration", "partOf"): frozenset({"MedicationAdministration", "Procedure"}),
}

_UUID_URL = re.compile(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_ELEMENT_NAME = re.compile(r"_?[a-z][A-Za-z0-9]{0,63}")  # how a FHIR element is spelt
_PATIENT_REF = re.compile(r"Patient/([A-Za-z0-9\-.]{1,64})")
# R4 dateTime/instant with a time: seconds and a zone are part of it (a zone-less one is refused)
_TIME_WITH_ZONE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?(?:Z|[+-](?:0[0-9]|1[0-4]):[0-5][0-9])"
)
_REGEX_ERROR = re.compile(r"Value error, ([A-Za-z]+) value string does not match spec regex")
_CHOICE_NAMES = re.compile(r"'([a-z][A-Za-z0-9]*)'")
# The times of each type, as paths: (path, required). A required one missing is an error.
TIMES: Mapping[str, tuple[tuple[tuple[str, ...], bool], ...]] = {
    "Encounter": ((("period", "start"), True), (("period", "end"), False)),
    "Observation": ((("effectiveDateTime",), True), (("issued",), False)),
    "DocumentReference": (
        (("date",), True),
        (("context", "period", "start"), False),
        (("context", "period", "end"), False),
    ),
    "MedicationAdministration": (
        (("effectiveDateTime",), False),
        (("effectivePeriod", "start"), False),
        (("effectivePeriod", "end"), False),
    ),
}
_TYPE_TEXT = {
    "string_type": "must be a string",
    "list_type": "must be an array",
    "dict_type": "must be an object",
    "model_type": "must be an object",
    "model_attributes_type": "must be an object",
    "json_invalid": "must be an object",  # (a string where a complex type belongs: parsed as JSON)
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "decimal_type": "must be a number",
    "decimal_parsing": "must be a number",
}


@dataclass(frozen=True)
class ValidEntry:
    full_url: str  # urn:uuid:... as the Bundle named it
    resource_type: str
    identifier: str  # the minted id (uuid4 hex): identifier WRITTEN_SYSTEM|<it>
    resource: FhirDict  # with that identifier added and its urn:uuid references rewritten


@dataclass(frozen=True)
class ValidTransaction:
    identifier: str  # Bundle.identifier as "system|value": the idempotency key
    patient_id: str  # the facade's opaque Patient id every entry is about
    digest: str  # sha256 hex of the body as received
    entries: tuple[ValidEntry, ...]  # in Bundle order


class TransactionInvalid(Exception):
    """Every problem found, as OperationOutcome issues: the answer is a 400 with ``outcome()``."""

    status = 400

    def __init__(self, issues: list[FhirDict]) -> None:
        super().__init__(f"{len(issues)} problem(s) in the transaction Bundle")
        self.issues = issues

    def outcome(self) -> FhirDict:
        return outcome(self.issues)


def mint_id() -> str:
    return uuid.uuid4().hex


def validate_transaction(
    body: bytes | FhirDict,
    *,
    patient_ids: Callable[[str], bool],
    now: float,
    known_codes: KnownCodes = HOME_VISIT_CODES,
    mint: Callable[[], str] = mint_id,
) -> ValidTransaction:
    """The Bundle, checked, with identifiers minted and references resolved; else
    ``TransactionInvalid`` with every problem. ``patient_ids`` says whether an id is one of the
    facade's Patient ids; ``now`` (epoch seconds) is what "not in the future" is measured against.
    The digest is of the bytes as received (of a dict: its compact, key-sorted JSON)."""
    if isinstance(body, bytes | bytearray):
        raw = bytes(body)
        try:
            bundle: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise TransactionInvalid([issue("structure", "The body is not JSON (UTF-8)")]) from None
    else:
        raw = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
        bundle = body
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise TransactionInvalid(
            [issue("structure", "The body must be a FHIR Bundle (resourceType Bundle)", expression="Bundle")]
        )
    if _depth(bundle) > MAX_DEPTH:  # (orjson parses 1024 levels: more than the walks below recurse)
        raise TransactionInvalid([issue("structure", f"The Bundle is nested deeper than {MAX_DEPTH} levels")])
    check = _Check(patient_ids, now, known_codes)
    check.bundle(bundle)
    if check.issues:
        raise TransactionInvalid(check.issues)
    assert check.patient is not None  # (no issue: every entry named the one patient)
    ident = bundle["identifier"]
    entries = list(bundle["entry"])
    minted = {e["fullUrl"]: (mint(), e["resource"]["resourceType"]) for e in entries}
    return ValidTransaction(
        identifier=f"{ident['system']}|{ident['value']}",
        patient_id=check.patient,
        digest=hashlib.sha256(raw).hexdigest(),
        entries=tuple(
            ValidEntry(
                full_url=e["fullUrl"],
                resource_type=e["resource"]["resourceType"],
                identifier=minted[e["fullUrl"]][0],
                resource=_written(e["resource"], minted[e["fullUrl"]][0], minted),
            )
            for e in entries
        ),
    )


def _written(resource: FhirDict, minted: str, by_url: Mapping[str, tuple[str, str]]) -> FhirDict:
    """The resource as the facade renders it: its minted identifier added, references between
    entries as logical references by the referenced entry's minted identifier."""

    def rewrite(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("reference")
            if isinstance(ref, str) and ref in by_url:
                target, kind = by_url[ref]
                return {"identifier": {"system": WRITTEN_SYSTEM, "value": target}, "type": kind}
            return {k: rewrite(v) for k, v in node.items()}
        if isinstance(node, list):
            return [rewrite(v) for v in node]
        return node

    out: FhirDict = rewrite(resource)  # (new dicts and lists all through: the Bundle given is not changed)
    out["identifier"] = [*out.get("identifier", []), {"system": WRITTEN_SYSTEM, "value": minted}]
    return out


# -- the checks ------------------------------------------------------------------------------------


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _codings(concept: Any) -> list[tuple[Any, Any]]:
    return [
        (c.get("system"), c.get("code")) for c in _items(_obj(concept).get("coding")) if isinstance(c, dict)
    ]


def _depth(root: Any) -> int:
    """How deep the JSON value nests (without recursing: the value may be arbitrarily deep)."""
    deepest, todo = 0, [(root, 1)]
    while todo:
        node, level = todo.pop()
        deepest = max(deepest, level)
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        todo.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return deepest


def _parse_time(value: str) -> datetime | None:
    if not _TIME_WITH_ZONE.fullmatch(value):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None


def _path(loc: tuple[int | str, ...]) -> str:
    """A pydantic location as FHIRPath steps. A key the client sent is named only if it is spelt
    like a FHIR element: a personnummer or a sentence used as a key is never echoed."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += "." + (part if _ELEMENT_NAME.fullmatch(part) else "(an element not in FHIR)")
    return out


def _walk(node: Any, path: str, element: str) -> Iterator[tuple[str, str, Any]]:
    """Every value under ``node``: its FHIRPath, its element path without indices, the value."""
    yield path, element, node
    if isinstance(node, dict):
        for k, v in node.items():
            name = k if isinstance(k, str) and _ELEMENT_NAME.fullmatch(k) else "(an element not in FHIR)"
            yield from _walk(v, f"{path}.{name}", f"{element}.{name}" if element else name)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f"{path}[{i}]", element)


CHECK, MODEL, LOST = 0, 1, 2  # who found an issue (``_Check.issues`` prefers them in this order)


class _Check:
    """One Bundle's checks, collecting issues (each check goes on after a problem where it can)."""

    def __init__(self, patient_ids: Callable[[str], bool], now: float, codes: KnownCodes) -> None:
        self.patient_ids = patient_ids
        self.now = now
        self.codes = codes
        # (issue, who found it: CHECK, MODEL — R4's structure — or LOST, an element no target carries)
        self.found: list[tuple[FhirDict, int]] = []
        self.patient: str | None = None
        self.patient_at = ""

    @property
    def issues(self) -> list[FhirDict]:
        """What was found, in Bundle order, one issue an element: where both the model and a check
        below find fault with an element, the check's (its text says what the element needs here);
        an element no target carries only when nothing else is wrong in or around it (what is wrong
        there says more)."""
        first: dict[str, FhirDict] = {}
        for found, _by in sorted(self.found, key=lambda f: f[1]):  # (stable: checks, model, lost)
            first.setdefault(found["expression"][0], found)
        kept = {id(i) for i in first.values()}
        said = [i["expression"][0] for i, by in self.found if by != LOST and id(i) in kept]

        def overlaps(a: str, b: str) -> bool:  # (one element is the other, or inside it)
            inner, outer = (a, b) if len(a) >= len(b) else (b, a)
            return inner.startswith(outer) and (len(inner) == len(outer) or inner[len(outer)] in ".[")

        return [
            i
            for i, by in self.found
            if id(i) in kept and (by != LOST or not any(overlaps(i["expression"][0], s) for s in said))
        ]

    def fail(self, code: str, where: str, text: str, by: int = CHECK) -> None:
        self.found.append((issue(code, text, expression=where), by))

    def bundle(self, bundle: FhirDict) -> None:
        if bundle.get("type") != "transaction":
            self.fail("value", "Bundle.type", "Bundle.type must be transaction")
        ident = bundle.get("identifier")
        if not isinstance(ident, dict):
            self.fail(
                "required",
                "Bundle.identifier",
                "Bundle.identifier (system and value) is required: it is the idempotency key",
            )
        else:
            for part in ("system", "value"):
                if not isinstance(ident.get(part), str) or not ident[part].strip():
                    self.fail(
                        "required",
                        f"Bundle.identifier.{part}",
                        f"Bundle.identifier.{part} (a string) is required",
                    )
            if isinstance(ident.get("system"), str) and "|" in ident["system"]:
                self.fail("value", "Bundle.identifier.system", "Bundle.identifier.system may not contain '|'")
        entries = bundle.get("entry")
        envelope = dict(bundle)
        if isinstance(entries, list):
            envelope["entry"] = [
                {k: v for k, v in e.items() if k != "resource"} if isinstance(e, dict) else e for e in entries
            ]
        self._model("Bundle", envelope, "Bundle")
        if not isinstance(entries, list) or not entries:
            self.fail("required", "Bundle.entry", "A transaction needs at least one entry")
            return
        urls: dict[str, str] = {}  # fullUrl → resource type
        for i, entry in enumerate(entries):
            url = _obj(entry).get("fullUrl")
            kind = _obj(_obj(entry).get("resource")).get("resourceType")
            if isinstance(url, str) and _UUID_URL.fullmatch(url) and url not in urls:
                urls[url] = kind if isinstance(kind, str) else ""
            elif isinstance(url, str) and url in urls:
                self.fail(
                    "invariant", f"Bundle.entry[{i}].fullUrl", "fullUrl is used by an earlier entry (bdl-7)"
                )
        for i, entry in enumerate(entries):
            self.entry(i, entry, urls)
        if self.patient is None and not self.found:
            self.fail("required", "Bundle.entry", "No entry names its patient (subject)")

    def entry(self, i: int, entry: Any, urls: Mapping[str, str]) -> None:
        at = f"Bundle.entry[{i}]"
        if not isinstance(entry, dict):
            self.fail("structure", at, "An entry must be an object")
            return
        url = entry.get("fullUrl")
        if url is None:
            self.fail("required", f"{at}.fullUrl", "fullUrl (urn:uuid:<uuid>) is required")
        elif not isinstance(url, str) or not _UUID_URL.fullmatch(url):
            self.fail("value", f"{at}.fullUrl", "fullUrl must be urn:uuid:<uuid> (lower case)")
        resource = entry.get("resource")
        kind = _obj(resource).get("resourceType")
        request = entry.get("request")
        if not isinstance(request, dict):
            self.fail("required", f"{at}.request", "request (method POST, url the resource type) is required")
        else:
            if request.get("method") != "POST":
                self.fail("not-supported", f"{at}.request.method", "Only POST (create) is supported")
            if not isinstance(kind, str) or request.get("url") != kind:
                self.fail("value", f"{at}.request.url", "request.url must be the resource's type")
            for name in sorted(set(request) - {"method", "url"}):  # conditional requests: ifNoneExist ...
                where = (
                    f"{at}.request.{name if _ELEMENT_NAME.fullmatch(name) else '(an element not in FHIR)'}"
                )
                self.fail("not-supported", where, "Conditional requests are not supported")
        if not isinstance(resource, dict):
            self.fail("required", f"{at}.resource", "Each entry needs a resource")
            return
        at = f"{at}.resource"
        if kind not in WRITABLE_TYPES:
            self.fail(
                "not-supported",
                f"{at}.resourceType",
                f"Only {', '.join(WRITABLE_TYPES)} can be written",
            )
            return
        assert isinstance(kind, str)
        self._model(kind, resource, at)
        self.resource(kind, resource, at, urls)

    def _model(self, kind: str, resource: FhirDict, at: str) -> None:
        """The resource against its fhir.resources model: one issue per element it finds wrong."""
        from fhir.resources.R4B import get_fhir_model_class  # (the models load slowly: on first use)
        from pydantic import ValidationError

        try:
            get_fhir_model_class(kind).model_validate(resource)
        except ValidationError as exc:
            for error in exc.errors():
                loc = tuple(error["loc"])
                if loc == ("resource_type",):
                    continue  # (the resource type is checked by name above)
                self.found.append(
                    (self._model_issue(at + _path(loc), error["type"], str(error["msg"])), MODEL)
                )

    @staticmethod
    def _model_issue(where: str, kind: str, msg: str) -> FhirDict:
        if kind == "missing":
            return issue("required", "A required element is missing", expression=where)
        if kind == "extra_forbidden":
            return issue("structure", "Not an element of this type in FHIR R4", expression=where)
        if kind in _TYPE_TEXT:
            return issue("structure", f"The element {_TYPE_TEXT[kind]} here", expression=where)
        if kind == "base64_decode":
            return issue("value", "Not valid base64", expression=where)
        regex = _REGEX_ERROR.match(msg)
        if regex:
            return issue("value", f"Not a valid FHIR {regex.group(1)}", expression=where)
        names = _CHOICE_NAMES.findall(msg)
        stem = names[0] if names else ""
        for name in names[1:]:
            while not name.startswith(stem):
                stem = stem[:-1]
        if kind == "value_error" and stem:  # a choice element [x]: none where one is required, or two
            what = (
                "one value is required"
                if msg.startswith("Value error, Expect")
                else "only one value may be given"
            )
            return issue("structure", f"{stem}[x]: {what}", expression=f"{where}.{stem}")
        return issue("invalid", "Not valid FHIR R4 here", expression=where)

    # -- per resource --------------------------------------------------------------------------------

    def resource(self, kind: str, r: FhirDict, at: str, urls: Mapping[str, str]) -> None:
        statuses = self.codes.status.get(kind, frozenset())
        if r.get("status") not in statuses:
            self.fail(
                "code-invalid", f"{at}.status", f"{kind}.status must be one of {', '.join(sorted(statuses))}"
            )
        if "contained" in r:
            self.fail("not-supported", f"{at}.contained", "Contained resources are not accepted")
        for i, ident in enumerate(_items(r.get("identifier"))):
            if _obj(ident).get("system") == WRITTEN_SYSTEM:
                self.fail(
                    "invalid", f"{at}.identifier[{i}]", f"The facade mints {WRITTEN_SYSTEM} identifiers"
                )
        self.structure(r, at)
        self.carried(kind, r, at)
        self.references(kind, r, at, urls)
        self.subject(r, at)
        self.times(kind, r, at)
        {
            "Encounter": self.encounter,
            "Observation": self.observation,
            "DocumentReference": self.document_reference,
            "MedicationAdministration": self.medication_administration,
        }[kind](r, at)

    def structure(self, r: FhirDict, at: str) -> None:
        """JSON as FHIR has it (json.html): no null, no empty string, array or object (ele-1); and
        no modifier extension, which no mapping reads and which could change what the rest means."""
        for path, element, value in _walk(r, at, ""):
            if value is None or value == [] or value == {} or (isinstance(value, str) and not value.strip()):
                self.fail("structure", path, "Empty values and null are not allowed in FHIR JSON")
            elif element.split(".")[-1] == "modifierExtension" and isinstance(value, list):
                self.fail("not-supported", path, "Modifier extensions are not accepted")

    def carried(self, kind: str, r: FhirDict, at: str) -> None:
        """Every element is one a target carries (``KnownCodes.carried``): anything else would be
        lost on the way while the answer says written — refused, each at the outermost element."""
        carried = self.codes.carried.get(kind, frozenset()) | CARRIED_BY_ALL

        def visit(node: Any, path: str, element: str) -> None:
            if isinstance(node, list) and element in ONE_ONLY.get(kind, ()) and len(node) > 1:
                one = f"{kind}.{element}: the targets carry one only"
                self.fail("not-supported", f"{path}[1]", one, LOST)
            if element in carried or any(element.startswith(c + ".") for c in carried):
                return  # (all of it is carried)
            if not any(c.startswith(element + ".") for c in carried):
                self.fail("not-supported", path, "No target carries this element: it would be lost", LOST)
            elif isinstance(node, list):
                for i, item in enumerate(node):
                    visit(item, f"{path}[{i}]", element)
            elif isinstance(node, dict):  # (parts of it are carried)
                for k, v in node.items():
                    name = k if _ELEMENT_NAME.fullmatch(k) else "(an element not in FHIR)"
                    visit(v, f"{path}.{name}", f"{element}.{name}")

        if any(by == MODEL and i["expression"][0].startswith(at + ".") for i, by in self.found):
            return  # (not R4 as it is: what the model found comes first)
        for k, v in r.items():
            visit(v, f"{at}.{k if _ELEMENT_NAME.fullmatch(k) else '(an element not in FHIR)'}", k)
        narrative = _obj(r.get("text"))
        if narrative and narrative.get("status") != "generated":
            self.fail(
                "not-supported",
                f"{at}.text.status",
                "Only a narrative generated from the data is accepted: the targets carry the data only",
            )

    def references(self, kind: str, r: FhirDict, at: str, urls: Mapping[str, str]) -> None:
        for path, element, node in _walk(r, at, ""):
            ref = node.get("reference") if isinstance(node, dict) else None
            if not isinstance(ref, str):
                continue
            if ref.startswith("#"):
                self.fail(
                    "not-found",
                    f"{path}.reference",
                    "A local reference (#) needs a contained resource: those are not accepted",
                )
            elif ref.startswith("urn:uuid:"):
                if ref not in urls:
                    self.fail("not-found", f"{path}.reference", "Refers to no entry of this Bundle (fullUrl)")
                    continue
                allowed = TARGET_TYPES.get((kind, element))
                if allowed is not None and urls[ref] not in allowed:
                    self.fail(
                        "invalid",
                        f"{path}.reference",
                        f"{kind}.{element} must refer to {' or '.join(sorted(allowed))}",
                    )
            elif (patient := _PATIENT_REF.fullmatch(ref)) and element != "subject":
                self.patient_is(patient.group(1), f"{path}.reference")  # (the subject: below)
            elif element != "subject":  # (a target carries a link to an entry of this Bundle only)
                self.fail(
                    "not-supported",
                    f"{path}.reference",
                    "Only a reference to an entry of this Bundle (its fullUrl) is carried to the targets",
                    LOST,
                )

    def subject(self, r: FhirDict, at: str) -> None:
        subject = r.get("subject")
        if subject is None:
            self.fail("required", f"{at}.subject", "subject (the Patient) is required")
            return
        ref = _obj(subject).get("reference")
        if not isinstance(subject, dict) or ("reference" in subject and not isinstance(ref, str)):
            return  # (the model says what is wrong with it)
        found = _PATIENT_REF.fullmatch(ref) if isinstance(ref, str) else None
        if found is None:
            self.fail("value", f"{at}.subject", "subject must be a reference Patient/<id> (the facade's id)")
            return
        self.patient_is(found.group(1), f"{at}.subject.reference")

    def patient_is(self, pid: str, where: str) -> None:
        if not self.patient_ids(pid):
            self.fail(
                "not-found", where, "Not a Patient id of this facade (use Patient?identifier= to find it)"
            )
        elif self.patient is None:
            self.patient, self.patient_at = pid, where
        elif pid != self.patient:
            self.fail(
                "business-rule",
                where,
                f"Every entry must be about one patient: not the one of {self.patient_at}",
            )

    def times(self, kind: str, r: FhirDict, at: str) -> None:
        found: dict[tuple[str, ...], datetime] = {}
        for path, required in TIMES.get(kind, ()):
            node: Any = r
            for step in path:
                node = _obj(node).get(step)
            where = f"{at}.{'.'.join(path)}"
            if node is None:
                if required:
                    self.fail("required", where, f"{kind}.{'.'.join(path)} (a time with a zone) is required")
                continue
            when = _parse_time(node) if isinstance(node, str) else None
            if when is None:
                self.fail(
                    "value", where, "Must be a time to the second with a zone (2025-03-14T09:30:00+01:00)"
                )
            elif when.timestamp() > self.now + CLOCK_SKEW_S:
                self.fail("business-rule", where, "Is in the future")
            elif when < EARLIEST:
                self.fail("business-rule", where, f"Is before {EARLIEST.year}")
            else:
                found[path] = when
        for start, end in (
            (("period", "start"), ("period", "end")),
            (("effectivePeriod", "start"), ("effectivePeriod", "end")),
        ):
            if start in found and end in found and found[end] < found[start]:
                self.fail("invalid", f"{at}.{'.'.join(end)}", "The period ends before it starts")

    # -- per type (the method named after it) ----------------------------------------------------------

    def encounter(self, r: FhirDict, at: str) -> None:
        klass = r.get("class")
        if (
            not isinstance(klass, dict)
            or (klass.get("system"), klass.get("code")) not in self.codes.encounter_class
        ):
            self.fail(
                "code-invalid",
                f"{at}.class",
                f"Encounter.class must be one of {_codes(self.codes.encounter_class)}",
            )

    def observation(self, r: FhirDict, at: str) -> None:
        category = self.codes.observation_category
        if not any(category in _codings(c) for c in _items(r.get("category"))):
            self.fail(
                "code-invalid", f"{at}.category", f"Observation.category must include {_codes({category})}"
            )
        known = [c for s, c in _codings(r.get("code")) if s == LOINC and c in self.codes.vital_signs]
        if not known:
            self.fail(
                "code-invalid",
                f"{at}.code",
                "Observation.code must be a LOINC vital sign the mappings know: "
                + ", ".join(sorted(self.codes.vital_signs)),
            )
            return
        sign = self.codes.vital_signs[known[0]]
        if "dataAbsentReason" in r:
            return
        if sign.unit is not None:
            self.quantity(r, at, sign.unit)
        if sign.concept:
            value = _obj(r.get("valueCodeableConcept"))
            if not _codings(value) and not value.get("text"):
                self.fail(
                    "required",
                    f"{at}.valueCodeableConcept",
                    "valueCodeableConcept (coded or text) is required",
                )
        if sign.components:
            seen: dict[str, int] = {}
            for i, comp in enumerate(_items(r.get("component"))):
                codes = [
                    c for s, c in _codings(_obj(comp).get("code")) if s == LOINC and c in sign.components
                ]
                if not codes:
                    self.fail(
                        "code-invalid",
                        f"{at}.component[{i}].code",
                        f"A component must be LOINC {', '.join(sorted(sign.components))}",
                    )
                    continue
                if codes[0] in seen:
                    self.fail("invalid", f"{at}.component[{i}].code", "The same component twice")
                seen[codes[0]] = i
                if "dataAbsentReason" not in comp:
                    self.quantity(_obj(comp), f"{at}.component[{i}]", sign.components[codes[0]])
            missing = sorted(set(sign.components) - set(seen))
            if missing:
                self.fail(
                    "required", f"{at}.component", f"Components LOINC {', '.join(missing)} are required"
                )

    def quantity(self, r: FhirDict, at: str, unit: str) -> None:
        value = r.get("valueQuantity")
        if value is None:
            self.fail(
                "required", f"{at}.valueQuantity", f"valueQuantity (a value in UCUM {unit}) is required"
            )
        elif not isinstance(value, dict):
            return  # (the model says what is wrong with it)
        elif "value" not in value:
            self.fail("required", f"{at}.valueQuantity.value", "The quantity's value is required")
        elif value.get("system") != UCUM or value.get("code") != unit:
            self.fail("code-invalid", f"{at}.valueQuantity", f"The unit must be UCUM ({UCUM}) code {unit}")

    def document_reference(self, r: FhirDict, at: str) -> None:
        if not any(c in self.codes.note_types for c in _codings(r.get("type"))):
            self.fail(
                "code-invalid",
                f"{at}.type",
                f"DocumentReference.type must be one of {_codes(self.codes.note_types)}",
            )
        for i, content in enumerate(_items(r.get("content"))):
            attachment = _obj(_obj(content).get("attachment"))
            where = f"{at}.content[{i}].attachment"
            media = attachment.get("contentType")
            if not isinstance(media, str) or media.split(";")[0].strip().lower() != "text/plain":
                self.fail("value", f"{where}.contentType", "The note must be text/plain")
            data = attachment.get("data")
            if not isinstance(data, str):
                self.fail("required", f"{where}.data", "The note's text is required, in data (base64)")
                continue
            try:
                base64.b64decode(data, validate=True).decode("utf-8")
            except ValueError:  # (binascii.Error, UnicodeDecodeError; a str not ASCII)
                self.fail("value", f"{where}.data", "data must be UTF-8 text in base64")

    def medication_administration(self, r: FhirDict, at: str) -> None:
        if "medicationReference" in r:
            self.fail(
                "not-supported",
                f"{at}.medicationReference",
                "Name the medication in medicationCodeableConcept (ATC), not by reference",
            )
        elif not any(
            s in self.codes.medication and isinstance(c, str) and re.fullmatch(self.codes.medication[s], c)
            for s, c in _codings(r.get("medicationCodeableConcept"))
        ):
            self.fail(
                "code-invalid",
                f"{at}.medicationCodeableConcept",
                f"The medication must be coded in {', '.join(sorted(self.codes.medication))}",
            )
        if "effectiveDateTime" not in r and "effectivePeriod" not in r:
            self.fail("required", f"{at}.effective", "effectiveDateTime is required")
        if r.get("status") == "not-done":
            reasons = _items(r.get("statusReason"))
            first = _obj(reasons[0]) if reasons else {}
            if not _codings(first) and not first.get("text"):
                self.fail(
                    "required", f"{at}.statusReason", "A dose not given needs its reason (statusReason)"
                )
        elif r.get("status") == "completed":
            dose = _obj(_obj(r.get("dosage")).get("dose"))
            if not isinstance(dose.get("value"), int | float):
                self.fail("required", f"{at}.dosage.dose", "A dose given needs dosage.dose")
            if "statusReason" in r:  # (the targets carry a reason for a dose not given only)
                self.fail("not-supported", f"{at}.statusReason", "A dose given carries no statusReason", LOST)


def _codes(pairs: frozenset[tuple[str, str]] | set[tuple[str, str]]) -> str:
    return ", ".join(f"{s}#{c}" for s, c in sorted(pairs))
