"""Merge the sources' resources into one deduplicated, deterministically ordered list.

**The dedupe rule.** Two resources are the same fact when they have the same resource type and the
same *origin*: the producing system and that system's record id, as each mapping declares it
(Cosmic: its system HSA-id + its record id; NPÖ: the record header's ``sourceSystemHSAId`` +
``documentId``). NPÖ's copy of a Cosmic diagnosis therefore meets Cosmic's own record and they merge;
two different records that merely look alike (same code, same day, different origin) are both kept,
because only the producer can say they are one fact. All Patient resources for the request's
patient merge into one, element by element (below).

Of a group, the resource from the source listed first in ``merge.source_priority`` is kept (ties:
lowest id). It keeps its ``meta.source``; each other source is added to ``meta.tag`` under
``ALSO_IN_SOURCE_SYSTEM``, and that source's record id (the ``identifier`` the mapping engine gives
every resource: ``urn:fhir-facade:<backend>:record:<mapping>``) is added to the kept copy's
identifiers, after its own, so the fact can be traced to the record in each source; identifiers play
no part in the dedupe, which is by origin alone. The security labels of all copies are united (the
strictest copy wins — fail closed); references to a dropped copy are rewritten to the kept one.

**The Patient merge** keeps every source's facts. The list-valued elements (identifier, name, telecom,
address, contact, photo, communication, generalPractitioner, link, extension) are united by value:
equal values (compared without their extensions) become one element, and each element names every
source that holds it in an extension ``SOURCE_EXTENSION`` (``valueCode``: the source, one per
source). Every other element (gender, birthDate, deceased[x], multipleBirth[x], maritalStatus, ...)
comes from the highest-priority copy that has it; a lower-priority copy whose value differs is kept
visible as a ``DISAGREEMENT_EXTENSION`` on the Patient, with sub-extensions ``element`` (the element
name), ``source`` and ``value`` (the other source's value; valueString holds JSON for a complex
value). The identity elements are all list-valued, so a disagreement never repeats one of them
(redaction also removes any disagreement about an element it withholds). Security labels as for any
group: united, the strictest copy wins.

**The sort order.** Patient first; then by resource type name; within a type newest first by the
type's clinical date (``MappedResource.clinical_time``, read by the mapping engine with
``proxy.fhir.searchparams.sort_time``), undated last; then by id.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from proxy.mapping.engine import record_id_system
from proxy.slack import Steps, at_once, in_turns, slice_ends
from proxy.types import MappedResource

ALSO_IN_SOURCE_SYSTEM = "urn:fhir-facade:also-in-source"
SOURCE_EXTENSION = "urn:fhir-facade:source"
DISAGREEMENT_EXTENSION = "urn:fhir-facade:disagreement"
# Patient's list-valued elements (R4 0..*): united by value across sources.
UNITED_PATIENT_ELEMENTS = (
    "identifier",
    "name",
    "telecom",
    "address",
    "contact",
    "photo",
    "communication",
    "generalPractitioner",
    "link",
    "extension",
)
_CHOICE_ELEMENTS = ("deceased", "multipleBirth")


def merge(resources: Iterable[MappedResource]) -> list[MappedResource]:
    """One resource per fact, in the answer's order. The input is not modified: a kept resource that
    changes (another copy's tags and labels, a rewritten reference) is a new one."""
    return at_once(_merge(resources))


async def merge_in_turns(resources: Iterable[MappedResource]) -> list[MappedResource]:
    """``merge``, giving the event loop a turn between slices of a long history (``proxy.slack``)."""
    return await in_turns(_merge(resources))


def _merge(resources: Iterable[MappedResource]) -> Steps[list[MappedResource]]:
    groups: dict[str, list[MappedResource]] = {}
    for n, r in enumerate(resources):
        if slice_ends(n):
            yield
        groups.setdefault(r.origin_key, []).append(r)

    kept: list[MappedResource] = []
    aliases: dict[str, str] = {}
    for n, group in enumerate(groups.values()):
        if slice_ends(n):
            yield
        if len(group) == 1:
            only = group[0]
            if only.resource["resourceType"] == "Patient":  # its elements name their source too
                only = only._replace(resource=_merge_patient(only.resource, group))
            kept.append(only)
            continue
        group.sort(key=lambda r: (r.priority, r.resource["id"]))
        winner = group[0]
        resource = dict(winner.resource)
        meta = dict(resource.get("meta", {}))
        tags = list(meta.get("tag", []))
        labels = list(meta.get("security", []))
        idents = list(resource.get("identifier", []))
        for other in group[1:]:
            tag = {"system": ALSO_IN_SOURCE_SYSTEM, "code": other.source}
            if other.source != winner.source and tag not in tags:
                tags.append(tag)
                # traceability: the other copy's source record id too
                system = record_id_system(other.mapping)
                for ident in other.resource.get("identifier", []):
                    if ident.get("system") == system and ident not in idents:
                        idents.append(ident)
            for label in other.resource.get("meta", {}).get("security", []):
                if label not in labels:
                    labels.append(label)
            if other.resource["id"] != resource["id"]:  # (every source's Patient has the same id)
                rtype = other.resource["resourceType"]
                aliases[f"{rtype}/{other.resource['id']}"] = f"{rtype}/{resource['id']}"
        if tags:
            meta["tag"] = tags
        if labels:
            meta["security"] = labels
        resource["meta"] = meta
        if idents and resource["resourceType"] != "Patient":
            resource["identifier"] = idents
        if resource["resourceType"] == "Patient":
            resource = _merge_patient(resource, group)
        kept.append(winner._replace(resource=resource))

    if aliases:
        for i, r in enumerate(kept):
            if slice_ends(i):
                yield
            if not aliases.keys().isdisjoint(r.refs):
                refs = tuple(dict.fromkeys(aliases.get(ref, ref) for ref in r.refs))
                kept[i] = r._replace(resource=_rewrite_references(r.resource, aliases), refs=refs)
    kept.sort(key=_order)
    return kept


def _strip_source(value: Any) -> Any:
    """A value as compared across sources: without the extensions this merge adds."""
    if isinstance(value, dict) and "extension" in value:
        ext = [e for e in value["extension"] if e.get("url") != SOURCE_EXTENSION]
        out = {k: v for k, v in value.items() if k != "extension"}
        if ext:
            out["extension"] = ext
        return out
    return value


def _element_name(key: str) -> str:
    for choice in _CHOICE_ELEMENTS:
        if key.startswith(choice) and key[len(choice) :][:1].isupper():
            return choice
    return key.removeprefix("_")


def _disagreement_value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"url": "value", "valueBoolean": value}
    if isinstance(value, int):
        return {"url": "value", "valueInteger": value}
    if isinstance(value, str):
        return {"url": "value", "valueString": value}
    return {"url": "value", "valueString": orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()}


def _merge_patient(resource: dict[str, Any], group: list[MappedResource]) -> dict[str, Any]:
    """The group's Patients (sorted, the winner first) as one: see the module's docstring."""
    out = {k: v for k, v in resource.items() if k not in UNITED_PATIENT_ELEMENTS}
    # single-valued elements: the first copy that has the element gives it (all its keys: a choice
    # type's deceasedBoolean, a primitive's _birthDate)
    owner: dict[str, str] = {}  # element -> source that gave it
    disagreements: list[dict[str, Any]] = []
    given: dict[str, dict[str, Any]] = {}  # element -> its keys and values
    for copy in group:
        by_element: dict[str, dict[str, Any]] = {}
        for key, value in copy.resource.items():
            if key in UNITED_PATIENT_ELEMENTS or key in ("resourceType", "id", "meta", "text"):
                continue
            by_element.setdefault(_element_name(key), {})[key] = value
        for element, keys in by_element.items():
            if element not in given:
                given[element], owner[element] = keys, copy.source
            elif keys != given[element] and copy.source != owner[element]:
                for key in sorted(keys):
                    extension = [
                        {"url": "element", "valueString": key},
                        {"url": "source", "valueCode": copy.source},
                        _disagreement_value(keys[key]),
                    ]
                    disagreements.append({"url": DISAGREEMENT_EXTENSION, "extension": extension})
    for element, keys in given.items():
        for key in [k for k in out if _element_name(k) == element and k not in keys]:
            del out[key]
        out.update(keys)
    # list-valued elements: united by value, each naming its sources
    for element in UNITED_PATIENT_ELEMENTS:
        values: list[Any] = []
        sources: list[list[str]] = []
        for copy in group:
            for value in copy.resource.get(element, []):
                bare = _strip_source(value)
                if element == "extension" and bare.get("url") == DISAGREEMENT_EXTENSION:
                    continue
                try:
                    i = values.index(bare)
                except ValueError:
                    values.append(bare)
                    sources.append([])
                    i = len(values) - 1
                if copy.source not in sources[i]:
                    sources[i].append(copy.source)
        if element == "extension":
            united = values + disagreements
        else:
            united = [_with_sources(v, s) for v, s in zip(values, sources, strict=True)]
        if united:
            out[element] = united
    return out


def _with_sources(value: Any, sources: list[str]) -> Any:
    if not isinstance(value, dict):  # (every united element is complex in R4; be safe)
        return value
    marks = [{"url": SOURCE_EXTENSION, "valueCode": s} for s in sources]
    return {**value, "extension": [*value.get("extension", []), *marks]}


def _order(r: MappedResource) -> tuple[int, str, int, float, str]:
    rtype = r.resource["resourceType"]
    t = r.clinical_time
    return (0 if rtype == "Patient" else 1, rtype, 0 if t is not None else 1, -(t or 0.0), r.resource["id"])


def _rewrite_references(node: Any, aliases: dict[str, str]) -> Any:
    if isinstance(node, dict):
        out = {k: _rewrite_references(v, aliases) for k, v in node.items()}
        ref = out.get("reference")
        if isinstance(ref, str) and ref in aliases:
            out["reference"] = aliases[ref]
        return out
    if isinstance(node, list):
        return [_rewrite_references(v, aliases) for v in node]
    return node
