"""Run compiled mappings over raw backend answers: raw records in, FHIR R4 dicts out.

For each record a mapping selects (and its ``where`` admits) the engine builds the element tree and
adds what every resource carries: ``resourceType``, the stable ``id``, ``meta.source`` naming the
backend, ``meta.security`` from the mapping's label rules, the source record's id as an ``identifier``
(system ``record_id_system``, after the mapping's own: traceability back to the record it was made
from; not on a Patient, which is the request's patient), and — beside the resource, not in it —
the origin key merge uses to recognise the same fact held by several sources, the references the
resource makes (redaction checks them) and its clinical time (merge orders by it).
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.fhir.searchparams import sort_time
from proxy.mapping.codegen import Builder
from proxy.mapping.coerce import scalar_text
from proxy.mapping.compiler import CompiledMapping
from proxy.mapping.requests import Context
from proxy.slack import Steps, at_once, slice_ends
from proxy.types import FhirDict, MappedResource


class RecordError(ValueError):
    """A record the mapping could not turn into a resource (e.g. no id): skipped and counted."""


RECORD_ID_SYSTEM = "urn:fhir-facade:{backend}:record:{mapping}"


def record_id_system(mapping_name: str) -> str:
    """The identifier system of the records one mapping (``<backend>/<file stem>``) reads: one per
    backend and record kind, so a record id is unique within it (mappings/README.md, "Source record
    ids"). It names the mapping file: renaming the file changes the system."""
    backend, _, stem = mapping_name.partition("/")
    return RECORD_ID_SYSTEM.format(backend=backend, mapping=stem)


def map_records(
    mapping: CompiledMapping,
    body: Any,
    ctx: Context,
    *,
    source_uri: str,
    priority: int,
) -> tuple[list[MappedResource], int]:
    """All resources the mapping builds from one raw answer, and how many records it had to skip."""
    return at_once(map_records_in_steps(mapping, body, ctx, source_uri=source_uri, priority=priority))


def map_records_in_steps(
    mapping: CompiledMapping,
    body: Any,
    ctx: Context,
    *,
    source_uri: str,
    priority: int,
) -> Steps[tuple[list[MappedResource], int]]:
    """``map_records`` as steps: a slice at a time (``proxy.slack``: 2 ms or 512 records)."""
    out: list[MappedResource] = []
    skipped = 0
    system = record_id_system(mapping.name)
    records = mapping.select(body)
    if not records and not _holds(body, mapping.required):
        raise ValueError("the answer lacks the list its mapping selects")  # (a broken answer, not "none")
    shared: Shared | None = {} if len(records) >= SHARE_FROM else None
    for n, record in enumerate(records):
        skipped += map_record(mapping, record, ctx, source_uri, priority, system, out, shared)
        if slice_ends(n):
            yield
    return out, skipped


# A long answer's resources repeat themselves: the same code, performer, reference range, subject,
# meta in record after record — each built anew, 60 of the 78 MiB that 20,000 mapped records hold
# (measured: every object equal, by its JSON, to one seen before). From this many records an answer's
# mapping shares them: each top-level element (and the meta) equal to one built before is that one
# (``Shared``: its JSON → the first built). Resources are never modified once mapped (a stage copies
# what it changes), so sharing is safe; it costs a serialisation of each element, which a short answer
# does not repay — it holds little.
SHARE_FROM = 256
Shared = dict[str, Any]
_CONTAINERS = (dict, list)
SHARE_BYTES = 512  # a larger element (a note's text) is rarely repeated: kept as it is, not in the table


def _shared(shared: Shared, value: Any) -> Any:
    """``value``, or the equal one built before it (by their JSON). (The key is the JSON as text:
    the ``bytes`` orjson returns keep their whole output buffer, several times a short JSON's size.)"""
    try:
        text = orjson.dumps(value)
    except TypeError:  # (not JSON: left as it is, for the record to be refused as in a short answer)
        return value
    return shared.setdefault(text.decode(), value) if len(text) <= SHARE_BYTES else value


def _holds(body: Any, keys: tuple[str, ...]) -> bool:
    for key in keys:
        if not isinstance(body, dict) or key not in body:
            return False
        body = body[key]
    return True


def map_record(
    mapping: CompiledMapping,
    record: Any,
    ctx: Context,
    source_uri: str,
    priority: int,
    record_system: str,
    out: list[MappedResource],
    shared: Shared | None = None,
) -> int:
    """Map one selected record into ``out`` (unless the mapping's ``where`` leaves it out); 1 when
    it had to be skipped (not an object, no id or origin, a value that is not JSON), else 0. (The
    record-by-record step of ``map_records``; the incremental decoder calls it as records complete.)"""
    if not isinstance(record, dict):
        return 1
    if mapping.where is not None and not mapping.where(record):
        return 0
    try:
        out.append(_map_one(mapping, record, ctx, source_uri, priority, record_system, shared))
    except RecordError:
        return 1
    return 0


def _map_one(
    mapping: CompiledMapping,
    record: dict[str, Any],
    ctx: Context,
    source_uri: str,
    priority: int,
    record_system: str,
    shared: Shared | None = None,
) -> MappedResource:
    built = mapping.fields(record, ctx) or {}
    if shared is not None:  # (see SHARE_FROM; the identifier is the record's own, the meta below)
        for key, value in built.items():
            if value.__class__ in _CONTAINERS and key != "identifier" and key != "meta":
                built[key] = _shared(shared, value)
    if mapping.record_id is None:  # Patient: the request's patient, one logical resource across sources
        rid = ctx["patient_id"]
        origin = f"Patient|{ctx['pnr']}"
    else:
        raw_id = mapping.record_id(record, ctx)
        raw_origin = mapping.origin(record, ctx) if mapping.origin is not None else None
        if raw_id is None or raw_origin is None:
            raise RecordError(f"{mapping.name}: record without id/origin")
        source_id = scalar_text(raw_id)
        rid = mapping.stable_id(ctx["patient_id"], source_id)
        origin = f"{mapping.resource_type}|{scalar_text(raw_origin)}"
        # the source record's id after whatever identifiers the mapping builds (a new list: a
        # constant subtree of the mapping is shared by every resource it makes)
        own = {"system": record_system, "value": source_id}
        built["identifier"] = [*(i for i in built.get("identifier") or () if i != own), own]

    meta: dict[str, Any] = dict(built.pop("meta", None) or {})
    meta["source"] = source_uri
    if mapping.security:  # (most mappings label nothing)
        labels = list(meta.get("security") or [])
        labels.extend(label for label in _labels(mapping, record) if label not in labels)
        if labels:
            meta["security"] = labels
    if shared is not None:
        meta = _shared(shared, meta)
    resource: FhirDict = {"resourceType": mapping.resource_type, "id": rid, "meta": meta}
    resource.update(built)
    try:
        refs = references(resource)
    except TypeError:  # (a value JSON cannot carry: no conversion makes one) it could not be sent
        raise RecordError(f"{mapping.name}: a value that is not JSON") from None
    return MappedResource(
        resource=resource,
        source=mapping.backend,
        mapping=mapping.name,
        origin_key=origin,
        priority=priority,
        refs=refs,
        clinical_time=sort_time(resource),
        care_provider=_optional(mapping.care_provider, record, ctx),
        care_unit=_optional(mapping.care_unit, record, ctx),
    )


def references(resource: FhirDict) -> tuple[str, ...]:
    """Every distinct ``reference`` string in a resource, at any depth, in document order.

    Redaction trusts this list to hold every reference (it removes the ones it may not show), so
    it is read from the resource's JSON form — what would be sent — rather than by a walk that
    might not look where the serialiser does; scanning the bytes is also less than half the cost
    of walking the dicts. Raises TypeError for a resource that is not JSON."""
    return _references_in_json(orjson.dumps(resource))


_KEY = b'"reference":"'  # (compact JSON: no space around the colon)


def _references_in_json(text: bytes) -> tuple[str, ...]:
    """The string values of every ``reference`` key in a JSON document. Inside a JSON string every
    quote is escaped, so ``"reference":"`` is a key ending in ``reference`` and a string value;
    the key is exactly ``reference`` when its opening quote follows ``{`` or ``,``."""
    found: dict[str, None] = {}
    at = text.find(_KEY)
    while at >= 0:
        start = at + len(_KEY)
        end = _string_end(text, start)
        if text[at - 1] in b"{,":
            value = text[start:end]
            found[value.decode() if b"\\" not in value else orjson.loads(text[start - 1 : end + 1])] = None
        at = text.find(_KEY, end)
    return tuple(found)


def _string_end(text: bytes, start: int) -> int:
    """Where the JSON string whose content begins at ``start`` ends: its first unescaped quote."""
    end = text.find(b'"', start)
    while end > 0 and text[end - 1] == 0x5C:  # a backslash before it: escaped if an odd run of them
        run = end - 1
        while text[run - 1] == 0x5C:
            run -= 1
        if (end - run) % 2 == 0:
            break
        end = text.find(b'"', end + 1)
    return end


def _optional(builder: Builder | None, record: dict[str, Any], ctx: Context) -> str | None:
    if builder is None:
        return None
    value = builder(record, ctx)
    return None if value is None else scalar_text(value)


def _labels(mapping: CompiledMapping, record: dict[str, Any]) -> list[dict[str, str]]:
    labels: list[dict[str, str]] = []
    for rule in mapping.security:
        if rule.when is None or rule.when(record):
            if rule.label not in labels:
                labels.append(dict(rule.label))
    return labels
