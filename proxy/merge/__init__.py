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
type's clinical date (``MappedResource.clinical_time``, read by the mapping engine with
``proxy.fhir.searchparams.sort_time``), undated last; then by id.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from proxy.types import MappedResource

ALSO_IN_SOURCE_SYSTEM = "urn:fhir-facade:also-in-source"


def merge(resources: Iterable[MappedResource]) -> list[MappedResource]:
    """One resource per fact, in the answer's order. The input is not modified: a kept resource that
    changes (another copy's tags and labels, a rewritten reference) is a new one."""
    groups: dict[str, list[MappedResource]] = {}
    for r in resources:
        groups.setdefault(r.origin_key, []).append(r)

    kept: list[MappedResource] = []
    aliases: dict[str, str] = {}
    for group in groups.values():
        if len(group) == 1:
            kept.append(group[0])
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
            if other.resource["id"] != resource["id"]:  # (every source's Patient has the same id)
                rtype = other.resource["resourceType"]
                aliases[f"{rtype}/{other.resource['id']}"] = f"{rtype}/{resource['id']}"
        if tags:
            meta["tag"] = tags
        if labels:
            meta["security"] = labels
        resource["meta"] = meta
        kept.append(winner._replace(resource=resource))

    if aliases:
        for i, r in enumerate(kept):
            if not aliases.keys().isdisjoint(r.refs):
                refs = tuple(dict.fromkeys(aliases.get(ref, ref) for ref in r.refs))
                kept[i] = r._replace(resource=_rewrite_references(r.resource, aliases), refs=refs)
    kept.sort(key=_order)
    return kept


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
