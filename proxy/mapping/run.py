"""The mapping stage: decode each backend's raw answers and run its compiled mappings over them.

Input is a ``SourceResult`` from fan-out; output the FHIR resources it yields and, when the source
is degraded, a ``SourceOutcome`` for the Bundle. A body that does not decode, or does not have the
shape the mappings expect, degrades that source to INVALID; it never fails the request.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.mapping.compiler import CompiledMapping, Context
from proxy.mapping.engine import map_records
from proxy.mapping.xml import parse_xml
from proxy.types import MappedResource, SourceOutcome, SourceResult, SourceStatus

log = logging.getLogger(__name__)


def decode(body: bytes, fmt: str) -> Any:
    """Raw bytes → JSON-like data. Raises ValueError when the body is not what it claims to be."""
    if fmt == "xml":
        return parse_xml(body)
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise ValueError("not valid JSON") from exc


@dataclass(frozen=True, slots=True)
class MappedSource:
    resources: list[MappedResource]
    outcome: SourceOutcome | None  # when the source is degraded
    readable: frozenset[str]  # request keys whose answers were read and mapped completely


def map_source(
    result: SourceResult,
    mappings: Sequence[CompiledMapping],
    ctx: Context,
    *,
    source_uri: str,
    priority: int,
) -> MappedSource:
    decoded: dict[str, Any] = {}
    unreadable: set[str] = set()
    invalid = False
    out: list[MappedResource] = []
    skipped = 0
    for m in mappings:
        key = m.request.key
        if key not in result.bodies:
            continue  # that request failed; result.status says why
        if key not in decoded:
            raw = result.bodies[key]
            try:
                decoded[key] = None if raw is None or not raw.strip() else decode(raw, m.request.format)
            except ValueError:
                decoded[key] = None
                unreadable.add(key)
                invalid = True
                continue
        if decoded[key] is None:
            continue
        try:
            resources, bad = map_records(m, decoded[key], ctx, source_uri=source_uri, priority=priority)
        except (TypeError, ValueError, AttributeError, KeyError, IndexError):
            # The answer parsed but is not shaped as the mapping expects. Log where, not what.
            log.warning("mapping %s could not read the answer from %s", m.name, result.source)
            unreadable.add(key)
            invalid = True
            continue
        out.extend(resources)
        skipped += bad
    if skipped:
        log.warning("%s: %d record(s) without id/origin were skipped", result.source, skipped)
    readable = frozenset(result.bodies) - unreadable
    if result.status.degraded:
        return MappedSource(out, SourceOutcome(result.source, result.status, result.detail), readable)
    if invalid:
        outcome = SourceOutcome(
            result.source, SourceStatus.INVALID, "answered with a body that could not be read"
        )
        return MappedSource(out, outcome, readable)
    return MappedSource(out, None, readable)
