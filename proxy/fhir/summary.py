"""``Patient/{id}/$summary``: an International Patient Summary (HL7 IPS) as a FHIR R4 document.

The document is built from the pipeline's ``Answer`` — the same merged, PDL-filtered and redacted
records ``$everything`` gives this asker — and from nothing else: it cannot show what the asker may
not see, and its narrative is written from the entries it lists.

* ``Bundle.type = document``: an identifier, a timestamp, the Composition first, then the Patient,
  the author (the facade, a Device), every section's entries, whatever those reference, and one
  OperationOutcome per source. Each resource once; a resource the facade serves has its read URL as
  ``fullUrl`` (the Composition points at it by that URL), the rest (Composition, Device,
  OperationOutcomes) ``urn:uuid:``.
* The Composition: status final, LOINC 60591-5, the patient, now, the facade as author, title
  "International Patient Summary", confidentiality R when anything in it is labelled R (protected
  identity), else N. Its sections (``SECTIONS``, in that order: alerts first, the ambulance's threat
  flag first among them) are always all there, so that a section with only hidden records is the
  same as a section with none.
* An empty section has an ``emptyReason`` (list-empty-reason) and the narrative "No information…"
  saying why — the first that holds: ``unavailable`` when a source that holds the section's kind of
  record failed (named) or no source holds it; ``withheld`` when the scopes leave its type out, or
  records are withheld from this asker under PDL (the hint: the same for every section, as for
  ``$everything``, so it says nothing about which); else ``nilknown`` — every source that holds
  such records answered and none has one for this patient (that is all it claims: no record, not a
  clinical "no known allergies"). A section with entries says, likewise, when it may be incomplete.
* The sources' statuses travel in a section of the facade's own (code
  ``urn:fhir-facade:summary-section#sources``) whose entries are the OperationOutcomes
  ``$everything`` carries (``proxy.fhir.bundle.source_outcome``, and the PDL hint for care staff):
  a document Bundle has no ``search.mode = outcome`` entries.
"""

from __future__ import annotations

import html
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from proxy import __version__
from proxy.fhir.marks import POSSIBLE_DUPLICATE
from proxy.types import FhirDict, SourceOutcome, SourceStatus

LOINC = "http://loinc.org"
EMPTY_REASON = "http://terminology.hl7.org/CodeSystem/list-empty-reason"
SECTION_SYSTEM = "urn:fhir-facade:summary-section"
OPERATION_DEFINITION = "http://hl7.org/fhir/uv/ips/OperationDefinition/summary"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
FLAG_CATEGORY = "http://terminology.hl7.org/CodeSystem/flag-category"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
ICF = "http://hl7.org/fhir/sid/icf"
_DEVICE_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "urn:fhir-facade:device:fhir-facade"))


def _codes(cc: Any, system: str) -> set[str]:
    items = cc if isinstance(cc, list) else [cc] if isinstance(cc, dict) else []
    return {
        str(c.get("code"))
        for x in items
        if isinstance(x, dict)
        for c in x.get("coding", ())
        if isinstance(c, dict) and c.get("system") == system
    }


def _flag_kind(r: FhirDict) -> set[str]:
    return _codes(r.get("category"), FLAG_CATEGORY)


def _functional(r: FhirDict) -> bool:
    return bool(_codes(r.get("code"), ICF))


def _vital(r: FhirDict) -> bool:
    return "vital-signs" in _codes(r.get("category"), OBS_CATEGORY)


_PAST = {"resolved", "inactive", "remission"}


def _past(r: FhirDict) -> bool:
    return bool(
        _codes(r.get("clinicalStatus"), "http://terminology.hl7.org/CodeSystem/condition-clinical") & _PAST
    )


@dataclass(frozen=True, slots=True)
class Section:
    code: str  # LOINC
    display: str  # the LOINC display
    title: str
    types: frozenset[str]  # the resource types its entries come from
    takes: Callable[[FhirDict], bool]  # whether a resource of those types belongs here
    columns: tuple[tuple[str, str], ...]  # narrative table: (heading, key in _cells)
    mandatory: bool = False


# In document order. A resource goes to the first section that takes it.
SECTIONS: tuple[Section, ...] = (
    Section(
        "104605-1",
        "Alert",
        "Alerts",
        frozenset({"Flag"}),
        lambda r: "advance-directive" not in _flag_kind(r),
        (("Alert", "name"), ("Category", "category"), ("Status", "status"), ("Period", "period")),
    ),
    Section(
        "42348-3",
        "Advance healthcare directives",
        "Advance Directives",
        frozenset({"Flag"}),
        lambda r: "advance-directive" in _flag_kind(r),
        (("Care limitation", "name"), ("Status", "status"), ("Period", "period")),
    ),
    Section(
        "48765-2",
        "Allergies and adverse reactions Document",
        "Allergies and Intolerances",
        frozenset({"AllergyIntolerance"}),
        lambda r: True,
        (
            ("Substance", "name"),
            ("Clinical status", "status"),
            ("Verification", "verification"),
            ("Reaction severity", "severity"),
            ("Recorded", "date"),
        ),
        mandatory=True,
    ),
    Section(
        "11450-4",
        "Problem list - Reported",
        "Problems",
        frozenset({"Condition"}),
        lambda r: not _past(r),
        (("Problem", "name"), ("Clinical status", "status"), ("Onset", "date")),
        mandatory=True,
    ),
    Section(
        "10160-0",
        "History of Medication use Narrative",
        "Medication Summary",
        frozenset({"MedicationStatement", "MedicationRequest"}),
        lambda r: True,
        (("Medication", "name"), ("Status", "status"), ("Dosage", "dosage"), ("Period", "period")),
        mandatory=True,
    ),
    Section(
        "11369-6",
        "History of Immunization Narrative",
        "Immunizations",
        frozenset({"Immunization"}),
        lambda r: True,
        (("Vaccine", "name"), ("Status", "status"), ("Date", "date")),
    ),
    Section(
        "30954-2",
        "Relevant diagnostic tests/laboratory data Narrative",
        "Results",
        frozenset({"Observation", "DiagnosticReport"}),
        lambda r: not _functional(r) and not _vital(r),
        (("Test", "name"), ("Result", "result"), ("Interpretation", "interpretation"), ("Date", "date")),
    ),
    Section(
        "8716-3",
        "Vital signs",
        "Vital Signs",
        frozenset({"Observation"}),
        _vital,
        (("Vital sign", "name"), ("Result", "result"), ("Date", "date")),
    ),
    Section(
        "47519-4",
        "History of Procedures Document",
        "History of Procedures",
        frozenset({"Procedure"}),
        lambda r: True,
        (("Procedure", "name"), ("Status", "status"), ("Date", "date")),
    ),
    Section(
        "47420-5",
        "Functional status assessment note",
        "Functional Status",
        frozenset({"Observation"}),
        _functional,
        (("Assessment", "name"), ("Result", "result"), ("Date", "date")),
    ),
    Section(
        "18776-5",
        "Plan of care note",
        "Plan of Care",
        frozenset({"CarePlan"}),
        lambda r: True,
        (("Plan", "name"), ("Status", "status"), ("Period", "period")),
    ),
    Section(
        "11348-0",
        "History of Past illness Narrative",
        "History of Past Illness",
        frozenset({"Condition"}),
        _past,
        (("Problem", "name"), ("Clinical status", "status"), ("Onset", "date"), ("Ended", "ended")),
    ),
)
TYPES: frozenset[str] = frozenset({"Patient"}).union(*(s.types for s in SECTIONS))


@dataclass(frozen=True, slots=True)
class SourceView:
    """What the summary needs to know about the sources, all from config and the answer's source
    statuses (never from records): which sources hold each type, and how each took part."""

    holders: dict[str, tuple[str, ...]]  # resource type → the sources whose mappings make it
    outcomes: Sequence[SourceOutcome]
    outcome_resources: Sequence[FhirDict]  # their OperationOutcomes (and the PDL hint), in order
    withheld_text: str | None  # the PDL hint's text (care staff, records withheld), else None


def _clean(value: Any) -> str:
    """Text for XHTML: characters XML 1.0 cannot carry are dropped, then everything escaped."""
    text = _NOT_XML.sub("", str(value))
    return html.escape(text, quote=False)  # (element content only, never an attribute)


_NOT_XML = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def _cc(cc: Any) -> str:
    if isinstance(cc, list):
        return "; ".join(t for t in (_cc(x) for x in cc) if t)
    if not isinstance(cc, dict):
        return ""
    if cc.get("text"):
        return str(cc["text"])
    for c in cc.get("coding", ()):
        if isinstance(c, dict) and (c.get("display") or c.get("code")):
            return str(c.get("display") or c.get("code"))
    return ""


def _status(cc: Any) -> str:
    if isinstance(cc, dict):
        return ", ".join(
            str(c.get("code")) for c in cc.get("coding", ()) if isinstance(c, dict) and c.get("code")
        )
    return ""


def _period(p: Any) -> str:
    if not isinstance(p, dict):
        return ""
    start, end = p.get("start", ""), p.get("end", "")
    return f"{start} – {end}" if end else f"from {start}" if start else ""


def _when(r: FhirDict, *keys: str) -> str:
    for key in keys:
        value = r.get(key)
        if isinstance(value, str):
            return value
        if isinstance(value, dict):
            return _period(value)
    return ""


def _value(r: FhirDict) -> str:
    q = r.get("valueQuantity")
    if isinstance(q, dict):
        return " ".join(
            str(x) for x in (q.get("comparator", ""), q.get("value", ""), q.get("unit", "")) if x != ""
        )
    for key in ("valueString", "valueInteger", "valueBoolean", "valueDateTime"):
        if key in r:
            return str(r[key])
    if "valueCodeableConcept" in r:
        return _cc(r["valueCodeableConcept"])
    parts = [f"{_cc(c.get('code'))}: {_value(c)}" for c in r.get("component", ()) if isinstance(c, dict)]
    return "; ".join(parts)


def _cells(r: FhirDict) -> dict[str, str]:
    """What the narrative may say of one entry, by column key (``Section.columns``)."""
    t = r.get("resourceType")
    cells = {"name": _cc(r.get("code")), "status": str(r.get("status", ""))}
    if t == "Flag":
        cells |= {"category": _cc(r.get("category")), "period": _period(r.get("period"))}
    elif t == "AllergyIntolerance":
        cells |= {
            "status": _status(r.get("clinicalStatus")),
            "verification": _status(r.get("verificationStatus")),
            "severity": ", ".join(
                str(x["severity"]) for x in r.get("reaction", ()) if isinstance(x, dict) and x.get("severity")
            ),
            "date": str(r.get("recordedDate", "")),
        }
    elif t == "Condition":
        cells |= {
            "status": _status(r.get("clinicalStatus")),
            "date": _when(r, "onsetDateTime", "onsetPeriod", "onsetString"),
            "ended": _when(r, "abatementDateTime", "abatementPeriod", "abatementString"),
        }
    elif t in ("MedicationStatement", "MedicationRequest"):
        reference = r.get("medicationReference")
        cells |= {
            "name": _cc(r.get("medicationCodeableConcept"))
            or str(reference.get("display", "") if isinstance(reference, dict) else ""),
            "dosage": "; ".join(
                str(d["text"])
                for d in r.get("dosage") or r.get("dosageInstruction") or ()
                if isinstance(d, dict) and d.get("text")
            ),
            "period": _when(r, "effectiveDateTime", "effectivePeriod", "authoredOn"),
        }
    elif t == "Immunization":
        cells |= {
            "name": _cc(r.get("vaccineCode")),
            "date": _when(r, "occurrenceDateTime", "occurrenceString"),
        }
    elif t == "Observation":
        cells |= {
            "result": _value(r),
            "interpretation": _cc(r.get("interpretation")),
            "date": _when(r, "effectiveDateTime", "effectivePeriod", "issued"),
        }
    elif t == "DiagnosticReport":
        cells |= {"result": str(r.get("conclusion", "")), "date": _when(r, "effectiveDateTime", "issued")}
    elif t == "Procedure":
        cells |= {"date": _when(r, "performedDateTime", "performedPeriod")}
    elif t == "CarePlan":
        cells |= {
            "name": str(r.get("title") or r.get("description") or ""),
            "period": _period(r.get("period")),
        }
    return cells


def narrative(
    title: str,
    resources: Sequence[FhirDict],
    notes: Sequence[str],
    columns: Sequence[tuple[str, str]] = (("Entry", "name"), ("Status", "status")),
) -> str:
    """The section's XHTML: its notes (why it is empty, or may be incomplete), then a table of its
    entries. Every value is escaped; nothing but the listed resources and the notes is written."""
    parts = ['<div xmlns="http://www.w3.org/1999/xhtml">']
    parts.extend(f"<p>{_clean(n)}</p>" for n in notes)
    if resources:
        parts.append(f"<table><caption>{_clean(title)}</caption>")
        parts.append(
            "<thead><tr>" + "".join(f"<th>{_clean(label)}</th>" for label, _ in columns) + "</tr></thead>"
        )
        parts.append("<tbody>")
        for r in resources:
            cells = _cells(r)
            also = _possible_duplicate_of(r)
            if also:
                cells["name"] = (
                    f"{cells.get('name', '')} (possible duplicate: a record from {also} looks the same)"
                )
            parts.append(
                "<tr>" + "".join(f"<td>{_clean(cells.get(key, ''))}</td>" for _, key in columns) + "</tr>"
            )
        parts.append("</tbody></table>")
    parts.append("</div>")
    return "".join(parts)


def _possible_duplicate_of(r: FhirDict) -> str:
    """The sources of the look-alikes this entry is marked with (proxy/merge/lookalike.py: marked over
    what this asker sees only), or nothing."""
    tags = r.get("meta", {}).get("tag", ())
    return ", ".join(sorted({str(t.get("code")) for t in tags if t.get("system") == POSSIBLE_DUPLICATE}))


def _source_list(names: Iterable[str]) -> str:
    return ", ".join(f"'{n}'" for n in names)


def _assess(section: Section, permitted: frozenset[str], sources: SourceView) -> tuple[str, list[str]]:
    """(the emptyReason this section would have if empty, the notes for its narrative)."""
    holders = sorted({s for t in section.types for s in sources.holders.get(t, ())})
    failed = [o for o in sources.outcomes if o.status.degraded and o.source in holders]
    left_out = sorted(t for t in section.types if t not in permitted and sources.holders.get(t))
    notes: list[str] = []
    reason = "nilknown"
    if failed:
        reason = "unavailable"
        missing = [o.source for o in failed if o.status is not SourceStatus.STALE]
        old = [o.source for o in failed if o.status is SourceStatus.STALE]
        if missing:
            notes.append(
                f"Source(s) {_source_list(missing)} failed: records they hold are missing here "
                "(see the Sources section)."
            )
        if old:
            notes.append(
                f"Source(s) {_source_list(old)} failed and an earlier answer stands in: records may be "
                "missing or out of date (see the Sources section)."
            )
    if not holders:
        reason = "unavailable"
        notes.append("No source of this service records this kind of information.")
    if left_out:
        if reason == "nilknown":
            reason = "withheld"
        notes.append(
            "Not included: the token's scopes do not permit searching "
            + ", ".join(left_out)
            + " (needs the scope <context>/<type>.s)."
        )
    if sources.withheld_text is not None:
        if reason == "nilknown":
            reason = "withheld"
        notes.append("Records of other care providers may be withheld (PDL): " + sources.withheld_text)
    return reason, notes


def build_summary(
    resources: Sequence[FhirDict],
    *,
    patient_id: str,
    base_url: str,
    permitted: frozenset[str],
    sources: SourceView,
    now: datetime | None = None,
) -> FhirDict:
    """The IPS document for ``resources`` (an ``Answer``'s, for this asker: already redacted)."""
    now = now or datetime.now(UTC)
    stamp = now.isoformat(timespec="seconds")
    by_key = {f"{r['resourceType']}/{r['id']}": r for r in resources}
    patient = by_key.get(f"Patient/{patient_id}") or {"resourceType": "Patient", "id": patient_id}
    included: dict[str, FhirDict] = {}  # fullUrl → resource, in document order

    def url(r: FhirDict) -> str:
        return f"{base_url}/{r['resourceType']}/{r['id']}"

    included[url(patient)] = patient
    device_url = f"urn:uuid:{_DEVICE_ID}"
    included[device_url] = {
        "resourceType": "Device",
        "id": _DEVICE_ID,
        "deviceName": [{"name": "fhir-facade", "type": "user-friendly-name"}],
        "version": [{"value": __version__}],
    }
    placed: set[str] = set()
    section_docs: list[FhirDict] = []
    for section in SECTIONS:
        members = [
            r
            for r in resources
            if r["resourceType"] in section.types
            and f"{r['resourceType']}/{r['id']}" not in placed
            and section.takes(r)
        ]
        if section.code == "104605-1":  # the threat flag (safety) first, the rest in answer order
            members.sort(key=lambda r: "safety" not in _flag_kind(r))
        placed.update(f"{r['resourceType']}/{r['id']}" for r in members)
        reason, notes = _assess(section, permitted, sources)
        doc: FhirDict = {
            "title": section.title,
            "code": {"coding": [{"system": LOINC, "code": section.code, "display": section.display}]},
        }
        if members:
            if reason != "nilknown":
                notes = ["This section may be incomplete.", *notes]
            doc["text"] = {
                "status": "generated",
                "div": narrative(section.title, members, notes, section.columns),
            }
            doc["entry"] = [{"reference": url(r)} for r in members]
            for r in members:
                included.setdefault(url(r), r)
        else:
            where = _source_list(sorted({s for t in section.types for s in sources.holders.get(t, ())}))
            lead = f"No information. No source has such a record for this patient (asked: {where})."
            if reason != "nilknown":
                lead = "No information available."
            doc["text"] = {"status": "generated", "div": narrative(section.title, [], [lead, *notes])}
            doc["emptyReason"] = {
                "coding": [{"system": EMPTY_REASON, "code": reason, "display": _EMPTY[reason]}]
            }
        section_docs.append(doc)

    # whatever the included resources reference (redaction kept only references to what the answer
    # holds and this asker sees), so that every reference resolves in the document
    pending = list(included.values())
    while pending:
        for ref in _references(pending.pop()):
            target = by_key.get(ref)
            if target is not None and url(target) not in included:
                included[url(target)] = target
                pending.append(target)

    outcome_urls = []
    for o in sources.outcome_resources:
        oid = str(uuid.uuid4())
        outcome_urls.append(f"urn:uuid:{oid}")
        included[f"urn:uuid:{oid}"] = {**o, "id": oid}
    section_docs.append(
        {
            "title": "Sources and completeness",
            "code": {"coding": [{"system": SECTION_SYSTEM, "code": "sources", "display": "Sources"}]},
            "text": {
                "status": "generated",
                "div": narrative(
                    "Sources",
                    [],
                    [
                        "This summary is built from these sources, as they answered now:",
                        *(i["details"]["text"] for o in sources.outcome_resources for i in o["issue"]),
                    ],
                ),
            },
            **(
                {"entry": [{"reference": u} for u in outcome_urls]}
                if outcome_urls
                else {
                    "emptyReason": {
                        "coding": [
                            {"system": EMPTY_REASON, "code": "unavailable", "display": _EMPTY["unavailable"]}
                        ]
                    }
                }
            ),
        }
    )
    restricted = any(
        s.get("system") == CONFIDENTIALITY and s.get("code") in ("R", "V")
        for r in included.values()
        for s in r.get("meta", {}).get("security", ())
    )
    composition_id = str(uuid.uuid4())
    composition: FhirDict = {
        "resourceType": "Composition",
        "id": composition_id,
        "status": "final",
        "type": {"coding": [{"system": LOINC, "code": "60591-5", "display": "Patient summary Document"}]},
        "subject": {"reference": url(patient)},
        "date": stamp,
        "author": [{"reference": device_url}],
        "title": "International Patient Summary",
        "confidentiality": "R" if restricted else "N",
        "section": section_docs,
    }
    entries = [{"fullUrl": f"urn:uuid:{composition_id}", "resource": composition}]
    entries.extend({"fullUrl": u, "resource": r} for u, r in included.items())
    return {
        "resourceType": "Bundle",
        "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{uuid.uuid4()}"},
        "type": "document",
        "timestamp": stamp,
        "entry": entries,
    }


_EMPTY = {"nilknown": "Nil Known", "unavailable": "Unavailable", "withheld": "Information Withheld"}


def _references(node: Any) -> Iterable[str]:
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str):
            yield ref
        for v in node.values():
            yield from _references(v)
    elif isinstance(node, list):
        for v in node:
            yield from _references(v)


def disclosed(bundle: FhirDict) -> list[FhirDict]:
    """The records of the answer a summary disclosed (for the access log): not the Composition,
    the author or the source statuses the facade wrote itself, nor a Patient it had to stand in."""
    return [
        e["resource"]
        for e in bundle["entry"]
        if not e["fullUrl"].startswith("urn:uuid:") and "meta" in e["resource"]
    ]
