"""The mapping stage: decode each backend's raw answers and run its compiled mappings over them.

``map_answer`` maps one request's answer — as soon as it arrives, while other requests are still
out; ``source_outcome`` puts a source's mapped answers together with its ``SourceResult`` from
fan-out: the FHIR resources and, when the source is degraded, a ``SourceOutcome`` for the Bundle.
A body that does not decode, or does not have the shape the mappings expect, degrades that source
to INVALID; it never fails the request.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.mapping.compiler import CompiledMapping
from proxy.mapping.engine import map_records_in_steps
from proxy.mapping.requests import Context
from proxy.mapping.xml import parse_xml
from proxy.slack import Steps, at_once
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
class MappedAnswer:
    """One request's answer, through every mapping that reads it."""

    resources: list[MappedResource]
    readable: bool  # decoded and mapped completely


@dataclass(frozen=True, slots=True)
class MappedSource:
    resources: list[MappedResource]
    outcome: SourceOutcome | None  # when the source is degraded
    readable: frozenset[str]  # request keys whose answers were read and mapped completely


def map_answer(
    raw: bytes | None,
    mappings: Sequence[CompiledMapping],
    ctx: Context,
    *,
    source_uri: str,
    priority: int,
) -> MappedAnswer:
    """``map_answer_in_steps`` at once."""
    return at_once(map_answer_in_steps(raw, mappings, ctx, source_uri=source_uri, priority=priority))


def map_answer_in_steps(
    raw: bytes | None,
    mappings: Sequence[CompiledMapping],
    ctx: Context,
    *,
    source_uri: str,
    priority: int,
) -> Steps[MappedAnswer]:
    """Decode one answer (its format is the request's) and run each mapping that reads it.

    A status the backend uses for "nothing here" (``raw`` is None) maps to nothing. A body that is
    empty, does not decode, or does not have the shape a mapping expects, is unreadable: no dialect
    says "nothing" with an empty 2xx body (JSON says ``[]``/``{}``, RIVTA an envelope), so it is a
    cut-off or broken answer, never an empty record. What the other mappings made of a body is kept."""
    if not mappings or raw is None:
        return MappedAnswer([], True)
    if not raw.strip():
        return MappedAnswer([], False)
    try:
        decoded = decode(raw, mappings[0].request.format)
    except ValueError:
        return MappedAnswer([], False)
    out: list[MappedResource] = []
    readable = True
    skipped = 0
    for m in mappings:
        try:
            resources, bad = yield from map_records_in_steps(
                m, decoded, ctx, source_uri=source_uri, priority=priority
            )
        except (TypeError, ValueError, AttributeError, KeyError, IndexError):
            # The answer parsed but is not shaped as the mapping expects. Log where, not what.
            log.warning("mapping %s could not read the answer from %s", m.name, m.backend)
            readable = False
            continue
        out.extend(resources)
        skipped += bad
    if skipped:
        log.warning(
            "%s: %d record(s) were skipped (no id or origin, or a value that is not JSON)",
            mappings[0].backend,
            skipped,
        )
    return MappedAnswer(out, readable)


def source_outcome(result: SourceResult, answers: Mapping[str, MappedAnswer]) -> MappedSource:
    """A source's mapped answers (by request key), and its outcome when it is degraded: as fan-out
    reported it, or INVALID when an answer could not be read."""
    out = [r for answer in answers.values() for r in answer.resources]
    readable = frozenset(key for key, answer in answers.items() if answer.readable)
    if result.status.degraded:
        outcome = SourceOutcome(
            result.source, result.status, result.detail, result.latency_ms, partial=result.partial
        )
        return MappedSource(out, outcome, readable)
    if len(readable) < len(answers):
        outcome = SourceOutcome(
            result.source,
            SourceStatus.INVALID,
            "answered with a body that could not be read",
            result.latency_ms,
        )
        return MappedSource(out, outcome, readable)
    return MappedSource(out, None, readable)
