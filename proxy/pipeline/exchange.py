"""``Exchange``: one request, as the walk sees it — the one object every stage reads and writes.

The HTTP edge makes it where the request id is known (``proxy.edge.request_id``), authentication
sets ``principal``, a handler sets ``query`` and runs the walk (``proxy.pipeline.walk``), then
renders the ``answer`` and notes what it ``disclosed``; the audit middleware completes the
AuditEvent from it (``proxy.pipeline.audit``). What the stages hand forward is here too, in the order
the stages fill it, so nothing travels sideways. Mutable on purpose: it is the request's working
state, owned by its one task. No HTTP types: the pipeline does not know aiohttp.

What the audit reads is never the request's own text: ``emergency_code`` is a known reason code (or
``NOT_A_REASON``), ``refused`` a fixed text of ours.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import NamedTuple

from proxy.access import AccessDecision
from proxy.pipeline.facade import Answer
from proxy.store.base import ConsentRow
from proxy.types import FhirDict, MappedResource, Principal, Query, SourceOutcome, Withheld


class ConsentsRead(NamedTuple):
    """The patient's consents and blocks, as the PDL stage reads them."""

    rows: list[ConsentRow]
    # the patient's page-snapshot generation (``proxy.paging``) they were read at: read with them,
    # or before them, for an answer that may be kept as a snapshot (else, or unreadable: None)
    generation: int | None


@dataclass(slots=True)
class Exchange:
    request_id: str
    principal: Principal | None = None  # None until authenticated (and for the capability documents)
    query: Query | None = None  # None until parsed (or, when refused unparsed, what it names)

    # -- emergency access (nödöppning): asked for → granted or refused
    emergency_code: str | None = None  # asked for: its reason code, or NOT_A_REASON (logged as ETREAT)
    emergency_reason: str | None = None  # granted: the reason code the PDL rules honour
    refused: str | None = None  # why the access was refused, whatever the answer (no personal data)

    # -- what the stages hand forward
    decision: AccessDecision | None = None
    fetch_types: frozenset[str] = frozenset()  # permitted types to fetch, referenced ones included
    consents: asyncio.Future[ConsentsRead] | None = None  # under PDL: read while the backends answer
    mapped: list[MappedResource] = field(default_factory=list)  # fetched, then PDL-readable only
    outcomes: list[SourceOutcome] = field(default_factory=list)  # one per source in the plan
    withheld: set[Withheld] = field(default_factory=set)  # the PDL hint's reasons
    kept: list[MappedResource] = field(default_factory=list)  # merged: one per fact
    resources: list[FhirDict] = field(default_factory=list)  # what this asker may see
    answer: Answer | None = None  # the walk's result (or an early one: unknown, nothing permitted)
    page_token: str | None = None  # the snapshot the answer's page links read from (proxy.paging)

    # -- what the audit records
    disclosed: Counter[str] = field(default_factory=Counter)  # per source: resources that left
    degraded: list[str] = field(default_factory=list)  # sources that failed in the answer
    resource: str | None = None  # a resource the request wrote: Type/id/_history/n
    begun: FhirDict | None = None  # the AuditEvent logged as begun, before the backends were asked
    committed: asyncio.Future[None] | None = None  # ... and its commit
