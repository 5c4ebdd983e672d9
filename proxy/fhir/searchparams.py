"""The search parameters the facade supports, per resource type, and how they match.

Names, types and target elements follow the FHIR R4 search parameter registry for each resource
(e.g. Condition ``onset-date``, Observation ``date``, Immunization ``vaccine-code``). Every type also
supports ``_id`` and ``_lastUpdated``. ``patient``/``subject`` select the patient and are handled by
the request parser, not here.

Token values match a code, a Coding, a CodeableConcept or an Identifier: ``code``, ``system|code``,
``system|`` (any code in the system) and ``|code`` (a code without a system). Date values compare
ranges as the FHIR spec says: a value denotes the range its precision implies ("2024-05" is all of
May), a Period its start to end (open ends unbounded).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from proxy.timeutil import fhir_range
from proxy.types import DateParam, FhirDict, SearchFilter, TokenParam


@dataclass(frozen=True, slots=True)
class ParamDef:
    name: str
    kind: str  # "token" | "date"
    paths: tuple[str, ...]  # dotted element paths; list elements are searched through
    description: str = ""


def _p(name: str, kind: str, *paths: str, description: str = "") -> ParamDef:
    return ParamDef(name, kind, paths, description)


COMMON = (
    _p("_id", "token", "id", description="Logical id of the resource"),
    _p("_lastUpdated", "date", "meta.lastUpdated", description="When the source last changed the record"),
)

# The first date parameter of each type is its clinical date: it orders search results (newest first).
BY_TYPE: dict[str, tuple[ParamDef, ...]] = {
    "Patient": (_p("identifier", "token", "identifier", description="Personnummer or samordningsnummer"),),
    "Condition": (
        _p("onset-date", "date", "onsetDateTime", "onsetPeriod", description="Date of onset"),
        _p("recorded-date", "date", "recordedDate", description="Date recorded"),
        _p("code", "token", "code", description="Diagnosis code (ICD-10-SE)"),
        _p("category", "token", "category", description="Category of the condition"),
        _p("clinical-status", "token", "clinicalStatus", description="active | inactive | resolved ..."),
    ),
    "MedicationStatement": (
        _p("effective", "date", "effectiveDateTime", "effectivePeriod", description="When taken"),
        _p("code", "token", "medicationCodeableConcept", description="Medication code (ATC)"),
        _p("status", "token", "status", description="active | completed | ..."),
        _p("category", "token", "category", description="Type of medication usage"),
    ),
    "MedicationAdministration": (
        _p(
            "effective-time",
            "date",
            "effectiveDateTime",
            "effectivePeriod",
            description="Date administration happened (or did not)",
        ),
        _p("code", "token", "medicationCodeableConcept", description="Medication code (ATC)"),
        _p("status", "token", "status", description="completed | not-done | ..."),
        _p("reason-not-given", "token", "statusReason", description="Reasons for not giving the medication"),
        _p(
            "identifier",
            "token",
            "identifier",
            description="An identifier of the record (a written one's: urn:fhir-facade:written)",
        ),
    ),
    "Procedure": (
        _p(
            "date",
            "date",
            "performedDateTime",
            "performedPeriod",
            description="When the procedure was performed",
        ),
        _p("code", "token", "code", description="Procedure code (KVÅ)"),
        _p("status", "token", "status", description="preparation | in-progress | not-done | completed ..."),
    ),
    "Flag": (_p("date", "date", "period", description="Time period when flag is active"),),
    "AllergyIntolerance": (
        _p("date", "date", "recordedDate", description="Date first version was recorded"),
        _p("code", "token", "code", "reaction.substance", description="Substance code"),
        _p("category", "token", "category", description="food | medication | environment | biologic"),
        _p("clinical-status", "token", "clinicalStatus", description="active | inactive | resolved"),
        _p("criticality", "token", "criticality", description="low | high | unable-to-assess"),
    ),
    "Observation": (
        _p(
            "date",
            "date",
            "effectiveDateTime",
            "effectivePeriod",
            "effectiveInstant",
            description="Clinically relevant time",
        ),
        _p("code", "token", "code", description="Observation code (NPU, ICF ...)"),
        _p("category", "token", "category", description="laboratory | survey | ..."),
        _p("status", "token", "status", description="Status of the observation"),
        _p(
            "identifier",
            "token",
            "identifier",
            description="An identifier of the record (a written one's: urn:fhir-facade:written)",
        ),
    ),
    "Immunization": (
        _p("date", "date", "occurrenceDateTime", description="Vaccination date"),
        _p("vaccine-code", "token", "vaccineCode", description="Vaccine product (ATC)"),
        _p("status", "token", "status", description="completed | entered-in-error | not-done"),
    ),
    "Encounter": (
        _p("date", "date", "period", description="When the encounter took place"),
        _p("class", "token", "class", description="AMB | EMER | IMP | HH ..."),
        _p("type", "token", "type", description="Specific type of encounter"),
        _p("status", "token", "status", description="planned | in-progress | finished ..."),
        _p(
            "identifier",
            "token",
            "identifier",
            description="An identifier of the record (a written one's: urn:fhir-facade:written)",
        ),
    ),
    "CarePlan": (
        _p("date", "date", "period", description="Time period the plan covers"),
        _p("category", "token", "category", description="Type of plan"),
        _p("status", "token", "status", description="draft | active | completed ..."),
    ),
    "DocumentReference": (
        _p("date", "date", "date", description="When the document was created"),
        _p("type", "token", "type", description="Kind of document"),
        _p("category", "token", "category", description="Categorization of the document"),
        _p("status", "token", "status", description="current | superseded | entered-in-error"),
        _p("period", "date", "context.period", description="Time of service documented"),
        _p(
            "identifier",
            "token",
            "identifier",
            description="An identifier of the record (a written one's: urn:fhir-facade:written)",
        ),
    ),
}


def params_for(rtype: str) -> dict[str, ParamDef]:
    return {p.name: p for p in (*COMMON, *BY_TYPE.get(rtype, ()))}


def clinical_date(rtype: str) -> ParamDef | None:
    return next((p for p in BY_TYPE.get(rtype, ()) if p.kind == "date"), None)


_CLINICAL = {t: clinical_date(t) for t in BY_TYPE}
# each clinical date's elements: all top-level (a test holds it), ``sort_time`` reads them directly
_CLINICAL_KEYS = {t: p.paths for t, p in _CLINICAL.items() if p is not None}


def sort_time(resource: FhirDict) -> float | None:
    """The start of the resource's clinical date, for ordering; None when it has none."""
    keys = _CLINICAL_KEYS.get(resource["resourceType"])
    if keys is None:
        return None
    latest = None
    for key in keys:  # (as ``_date_ranges``, without the ranges' ends: a Period's start)
        value = resource.get(key)
        for v in value if isinstance(value, list) else (value,):
            if isinstance(v, dict):
                v = v.get("start")
            if not isinstance(v, str):
                continue
            try:
                lo = fhir_range(v)[0]
            except ValueError:
                continue
            if latest is None or lo > latest:
                latest = lo
    return latest


# ---- matching ----------------------------------------------------------------------------------


def _values(node: Any, path: str) -> list[Any]:
    if "." not in path:  # (most paths: one element of the resource)
        v = node.get(path) if isinstance(node, dict) else None
        return v if isinstance(v, list) else [] if v is None else [v]
    current = [node]
    for key in path.split("."):
        nxt: list[Any] = []
        for c in current:
            v = c.get(key) if isinstance(c, dict) else None
            if isinstance(v, list):
                nxt.extend(v)
            elif v is not None:
                nxt.append(v)
        current = nxt
    return current


def _codings(value: Any) -> Iterable[tuple[str | None, str | None]]:
    if isinstance(value, str):
        yield None, value
    elif isinstance(value, dict):
        if "coding" in value:
            for c in value["coding"]:
                yield c.get("system"), c.get("code")
        elif "value" in value and "code" not in value:  # Identifier
            yield value.get("system"), value.get("value")
        else:  # Coding
            yield value.get("system"), value.get("code")


def _token_matches(resource: FhirDict, p: ParamDef, want: TokenParam) -> bool:
    for path in p.paths:
        for value in _values(resource, path):
            for system, code in _codings(value):
                if want.system is not None and (system or "") != want.system:
                    continue
                if want.code is not None and code != want.code:
                    continue
                return True
    return False


def _date_ranges(resource: FhirDict, p: ParamDef) -> list[tuple[float, float]]:
    out = []
    for path in p.paths:
        for value in _values(resource, path):
            try:
                if isinstance(value, str):
                    out.append(fhir_range(value))
                elif isinstance(value, dict):  # Period: an absent or unrepresentable end is open
                    out.append(
                        (_bound(value.get("start"), 0, -math.inf), _bound(value.get("end"), 1, math.inf))
                    )
            except ValueError:
                continue
    return out


def _bound(value: Any, side: int, open_end: float) -> float:
    if not isinstance(value, str):
        return open_end
    try:
        return fhir_range(value)[side]
    except ValueError:  # e.g. legacy "9999-12-31" for "until further notice"
        return open_end


def _date_matches(lo: float, hi: float, want: DateParam) -> bool:
    """FHIR date comparison of the target range [lo, hi) with the parameter's range."""
    if want.prefix == "eq":
        return want.lo <= lo and hi <= want.hi
    if want.prefix == "ne":
        return not (want.lo <= lo and hi <= want.hi)
    if want.prefix == "gt":
        return hi > want.hi
    if want.prefix == "lt":
        return lo < want.lo
    within = want.lo <= lo and hi <= want.hi
    if want.prefix == "ge":  # the range above the value overlaps the target, or the value contains it
        return hi > want.hi or within
    if want.prefix == "le":  # the range below the value overlaps the target, or the value contains it
        return lo < want.lo or within
    if want.prefix == "sa":
        return lo >= want.hi
    if want.prefix == "eb":
        return hi <= want.lo
    raise ValueError(want.prefix)  # the parser admits no other prefix


def matches(resource: FhirDict, filters: Iterable[SearchFilter]) -> bool:
    """True when the resource satisfies every filter (AND), each by any of its values (OR)."""
    defs = params_for(resource["resourceType"])
    for f in filters:
        p = defs.get(f.name)
        if p is None:
            return False  # a parameter this type does not have matches nothing of this type
        if f.kind == "token":
            if not any(_token_matches(resource, p, v) for v in f.values if isinstance(v, TokenParam)):
                return False
        else:
            ranges = _date_ranges(resource, p)
            if not any(
                _date_matches(lo, hi, v) for v in f.values if isinstance(v, DateParam) for lo, hi in ranges
            ):
                return False
    return True


def resource_bounds(resource: FhirDict, name: str) -> tuple[float | None, float | None]:
    """The hull ``[lo, hi)`` (None: open) of what the resource's date parameter ``name`` reads:
    every copy of the same fact, dated alike, overlaps it. ``(None, None)``: no date to go by."""
    p = params_for(resource["resourceType"]).get(name)
    ranges = _date_ranges(resource, p) if p is not None and p.kind == "date" else []
    if not ranges:
        return None, None
    lo, hi = min(r[0] for r in ranges), max(r[1] for r in ranges)
    return (None if lo == -math.inf else lo), (None if hi == math.inf else hi)


# per prefix, the side(s) of a value's range that bound every target it can match: the target
# overlaps [lo, ∞) for ge/gt/sa, (-∞, hi) for le/lt/eb, [lo, hi) for eq; ne bounds nothing
_LOWER = frozenset({"eq", "ge", "gt", "sa"})
_UPPER = frozenset({"eq", "le", "lt", "eb"})


def date_bounds(filters: Iterable[SearchFilter], name: str) -> tuple[float | None, float | None]:
    """The instant range ``[lo, hi)`` (None: open) every resource matching ``filters`` overlaps by
    the date parameter ``name`` — what a backend may be asked to narrow its list to. Never narrower
    than the filters: the values of one filter (OR) by their hull, repeated filters (AND) by their
    intersection. ``(None, None)``: nothing to narrow by."""
    lo: float | None = None
    hi: float | None = None
    for f in filters:
        if f.name != name or f.kind != "date":
            continue
        values = [v for v in f.values if isinstance(v, DateParam)]
        if not values:
            continue
        f_lo = None if any(v.prefix not in _LOWER for v in values) else min(v.lo for v in values)
        f_hi = None if any(v.prefix not in _UPPER for v in values) else max(v.hi for v in values)
        if f_lo is not None:
            lo = f_lo if lo is None else max(lo, f_lo)
        if f_hi is not None:
            hi = f_hi if hi is None else min(hi, f_hi)
    if lo is not None and hi is not None and lo >= hi:
        return None, None  # (nothing can match: the facade's own filter says so, on the whole list)
    return lo, hi
