"""Merge the sources' resources into one deduplicated, deterministically ordered list.

**The dedupe rule.** Two resources are the same fact when they have the same resource type and the
same *origin*: the producing system and that system's record id, as each mapping declares it
(Cosmic: its system HSA-id + its record id; NPÖ: the record header's ``sourceSystemHSAId`` +
``documentId``). NPÖ's copy of a Cosmic diagnosis therefore meets Cosmic's own record and they merge;
two different records that merely look alike (same code, same day, different origin) are both kept,
because only the producer can say they are one fact. All Patient resources for the request's
patient merge into one.

Of a group, the resource from the source listed first in ``merge.source_priority`` is kept (ties:
lowest id). It keeps its ``meta.source``; each other source is added to ``meta.tag`` under
``ALSO_IN_SOURCE_SYSTEM``; the security labels of all copies are united (the strictest copy wins —
fail closed); references to a dropped copy are rewritten to the kept one.

**The sort order.** Patient first; then by resource type name; within a type newest first by the
type's clinical date (see ``proxy.fhir.searchparams``), undated last; then by id.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from proxy.types import FhirDict, MappedResource

ALSO_IN_SOURCE_SYSTEM = "urn:fhir-facade:also-in-source"

SortTime = Callable[[FhirDict], float | None]


def merge(resources: Iterable[MappedResource], sort_time: SortTime) -> list[FhirDict]:
    groups: dict[str, list[MappedResource]] = {}
    for r in resources:
        groups.setdefault(r.origin_key, []).append(r)

    kept: list[FhirDict] = []
    referring: list[int] = []  # positions in kept of resources whose mapping makes references
    aliases: dict[str, str] = {}
    for group in groups.values():
        if any(r.references for r in group):
            referring.append(len(kept))
        if len(group) == 1:
            kept.append(group[0].resource)
            continue
        group.sort(key=lambda r: (r.priority, r.resource["id"]))
        winner = group[0]
        resource = dict(winner.resource)
        meta = dict(resource.get("meta", {}))
        tags = list(meta.get("tag", []))
        labels = list(meta.get("security", []))
        for other in group[1:]:
            tag = {"system": ALSO_IN_SOURCE_SYSTEM, "code": other.source}
            if other.source != winner.source and tag not in tags:
                tags.append(tag)
            for label in other.resource.get("meta", {}).get("security", []):
                if label not in labels:
                    labels.append(label)
            rtype = other.resource["resourceType"]
            aliases[f"{rtype}/{other.resource['id']}"] = f"{rtype}/{resource['id']}"
        if tags:
            meta["tag"] = tags
        if labels:
            meta["security"] = labels
        resource["meta"] = meta
        kept.append(resource)

    if aliases:  # only resources built with $ref can point at another mapped resource
        for i in referring:
            kept[i] = _rewrite_references(kept[i], aliases)
    kept.sort(key=lambda r: _order(r, sort_time))
    return kept


def _order(resource: FhirDict, sort_time: SortTime) -> tuple[int, str, int, float, str]:
    rtype = resource["resourceType"]
    t = sort_time(resource)
    return (0 if rtype == "Patient" else 1, rtype, 0 if t is not None else 1, -(t or 0.0), resource["id"])


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
