"""Reading and checking a ``Patient/{id}/$summary`` document as a receiver would (README "Patient
summary", mappings/README.md "Patient summary"): the IPS structure rules, written out here so that a
test states them rather than trusting the code that builds the document."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

LOINC = "http://loinc.org"
EMPTY_REASON = "http://terminology.hl7.org/CodeSystem/list-empty-reason"
XHTML = "http://www.w3.org/1999/xhtml"
SOURCES_SECTION = "urn:fhir-facade:summary-section"

# IPS section LOINC codes (HL7 IPS, Composition-uv-ips) and the types their entries may be
PROBLEMS, ALLERGIES, MEDICATIONS = "11450-4", "48765-2", "10160-0"
PAST_ILLNESS, IMMUNIZATIONS, RESULTS, PROCEDURES = "11348-0", "11369-6", "30954-2", "47519-4"
ADVANCE_DIRECTIVES, ALERTS, FUNCTIONAL, PLAN_OF_CARE, VITAL_SIGNS = (
    "42348-3",
    "104605-1",
    "47420-5",
    "18776-5",
    "8716-3",
)
MANDATORY = (PROBLEMS, ALLERGIES, MEDICATIONS)
ENTRY_TYPES = {
    PROBLEMS: {"Condition"},
    PAST_ILLNESS: {"Condition"},
    ALLERGIES: {"AllergyIntolerance"},
    MEDICATIONS: {"MedicationStatement", "MedicationRequest"},
    IMMUNIZATIONS: {"Immunization"},
    RESULTS: {"Observation", "DiagnosticReport"},
    PROCEDURES: {"Procedure"},
    ADVANCE_DIRECTIVES: {"Consent", "Flag"},
    ALERTS: {"Flag"},
    FUNCTIONAL: {"Observation", "Condition", "ClinicalImpression"},
    PLAN_OF_CARE: {"CarePlan"},
    VITAL_SIGNS: {"Observation"},
}
ALL_SECTIONS = tuple(ENTRY_TYPES)
_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")


def composition(bundle: dict[str, Any]) -> dict[str, Any]:
    comp = bundle["entry"][0]["resource"]
    assert comp["resourceType"] == "Composition"
    return comp


def sections(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{LOINC code (or the facade's own section code): section}"""
    out = {}
    for s in composition(bundle)["section"]:
        (code,) = [c["code"] for c in s["code"]["coding"]]
        assert code not in out, f"section {code} twice"
        out[code] = s
    return out


def by_full_url(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["fullUrl"]: e["resource"] for e in bundle["entry"]}


def entries(bundle: dict[str, Any], code: str) -> list[dict[str, Any]]:
    """The resources a section's entries point at, in the section's order."""
    urls = by_full_url(bundle)
    return [urls[e["reference"]] for e in sections(bundle)[code].get("entry", [])]


def empty_reason(section: dict[str, Any]) -> str | None:
    reason = section.get("emptyReason")
    if reason is None:
        return None
    (code,) = [c["code"] for c in reason["coding"] if c["system"] == EMPTY_REASON]
    return str(code)


def narrative_text(section: dict[str, Any]) -> str:
    """The section's narrative as text (parsed as XML: it must be well-formed XHTML)."""
    div = ET.fromstring(section["text"]["div"])
    return " ".join(" ".join(div.itertext()).split())


def source_outcomes(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """The OperationOutcomes the Composition's source section points at (one per source asked,
    and the PDL hint for care staff when records are withheld)."""
    urls = by_full_url(bundle)
    return [urls[e["reference"]] for e in sections(bundle)["sources"].get("entry", [])]


def check_document(bundle: dict[str, Any], base: str, patient_id: str) -> None:
    """The document Bundle and its Composition hold to FHIR R4 documents and the IPS structure."""
    # Bundle: a document (bdl-9, bdl-10, bdl-11), no search/request parts, no total or paging
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "document"
    assert bundle["identifier"]["system"] and bundle["identifier"]["value"]
    assert _INSTANT.match(bundle["timestamp"]), bundle["timestamp"]
    assert "total" not in bundle and "link" not in bundle
    full_urls = [e["fullUrl"] for e in bundle["entry"]]
    assert len(full_urls) == len(set(full_urls)), "each resource once"
    for e in bundle["entry"]:
        assert set(e) == {"fullUrl", "resource"}, e.keys()
        r = e["resource"]
        if e["fullUrl"].startswith("urn:uuid:"):
            assert r.get("id") == e["fullUrl"].removeprefix("urn:uuid:")
        else:  # a resource the facade serves: its fullUrl is where it is read
            assert e["fullUrl"] == f"{base}/{r['resourceType']}/{r['id']}"
    comp = composition(bundle)
    # Composition: required elements (R4 + IPS)
    assert comp["status"] == "final"
    assert {"system": LOINC, "code": "60591-5", "display": "Patient summary Document"} in comp["type"][
        "coding"
    ]
    assert comp["subject"]["reference"] == f"{base}/Patient/{patient_id}"
    assert _INSTANT.match(comp["date"])
    assert comp["title"] == "International Patient Summary"
    assert comp["confidentiality"] in ("N", "R", "V")
    assert comp["author"], "an author"
    for author in comp["author"]:
        assert by_full_url(bundle)[author["reference"]]["resourceType"] in ("Device", "Organization")
    # every reference — from the Composition and from every resource in it — resolves in the Bundle
    urls = by_full_url(bundle)
    for e in bundle["entry"]:
        contained = {f"#{c.get('id')}" for c in e["resource"].get("contained", ())}
        for ref in _references(e["resource"]):
            if ref.startswith("#"):  # a contained resource (dom-3)
                assert ref in contained, f"{ref} from {e['fullUrl']} does not resolve"
                continue
            assert _resolve(ref, base) in urls, f"{ref} from {e['fullUrl']} does not resolve"
    # sections: each with title, code, narrative; entries or an emptyReason, never both
    found = sections(bundle)
    for code in MANDATORY:
        assert code in found, f"mandatory section {code} missing"
    for code, s in found.items():
        assert s["title"]
        assert s["text"]["status"] in ("generated", "additional")
        div = ET.fromstring(s["text"]["div"])
        assert div.tag == f"{{{XHTML}}}div"
        assert not any(el.tag.split("}")[-1] in ("script", "form", "iframe", "object") for el in div.iter())
        assert not any(a.lower().startswith("on") for el in div.iter() for a in el.attrib)
        if code == "sources":
            continue
        (coding,) = s["code"]["coding"]
        assert coding["system"] == LOINC and code in ENTRY_TYPES
        if s.get("entry"):
            assert "emptyReason" not in s  # cmp-2
            for ref in s["entry"]:
                assert urls[ref["reference"]]["resourceType"] in ENTRY_TYPES[code], (code, ref)
        else:
            assert empty_reason(s) in ("nilknown", "unavailable", "withheld"), s
            assert narrative_text(s).startswith("No information")
    # each source's outcome, from the facade's own section
    outcomes = source_outcomes(bundle)
    assert outcomes and all(o["resourceType"] == "OperationOutcome" for o in outcomes)


def _references(node: Any) -> list[str]:
    found = []
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str):
            found.append(ref)
        for v in node.values():
            found.extend(_references(v))
    elif isinstance(node, list):
        for v in node:
            found.extend(_references(v))
    return found


def _resolve(ref: str, base: str) -> str:
    """FHIR R4 bundle reference resolution: an absolute URL or urn as it is; a relative one against
    the server's base (the base of every fullUrl that is not a urn here)."""
    if ref.startswith(("urn:", "http://", "https://")):
        return ref
    return f"{base}/{ref}"
