"""THE walk: one read of a patient's records, top to bottom, as an ordered tuple of stages.

Every FHIR read of the backends' records — ``$everything``, ``$summary``, a search, a read by id —
is this walk over one ``Exchange`` (``proxy.pipeline.exchange``); the handlers in
``proxy.edge.routes`` parse the request into ``x.query`` before it and render ``x.answer`` after it.
Each stage is in ``proxy.pipeline.stages``; a stage returning False has settled the answer early
(the rest is skipped); one that raises ends the walk (the edge answers and audits the error).

The runner publishes ``StageFinished`` (``proxy.hooks``) after each stage that finished — its name
and duration, nothing of the patient — when anybody listens (the bench's phases, tests).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from proxy.hooks import StageFinished
from proxy.pipeline import stages
from proxy.pipeline.exchange import Exchange
from proxy.pipeline.facade import Answer, Facade
from proxy.types import Principal, Query

Stage = Callable[[Facade, Exchange], Awaitable[bool]]

PATIENT_READ: tuple[Stage, ...] = (
    stages.emergency,  # asked-for emergency access: granted (its reason) or refused (400/403, logged)
    stages.audit_begun,  # logged as begun; the commit runs while the backends answer
    stages.decide,  # scopes × query × audience → AccessDecision (403; another patient's: as unknown)
    stages.from_snapshot,  # a later page: from the first page's snapshot, no backend asked (or 410)
    stages.plan,  # the types to fetch (+ those they reference), permitted ones only
    stages.consents,  # PDL: the patient's consents, read while the backends answer
    stages.fetch_and_map,  # cache → engagement → fan-out → mapping in the slack → stale fallback
    stages.pdl,  # whose records this asker may read (+ the withheld hint)
    stages.merge,  # one resource per fact, provenance, stable order
    stages.redact,  # the audience policy removes what this asker may not see, and every trace of it
    stages.lookalikes,  # look-alikes from different producers marked, over the visible only
    stages.select,  # the query's filters (after redaction: hidden content cannot match) → Answer
    stages.keep_snapshot,  # more than one page: the answer kept for the later pages (their token)
)

# The same reading for a caller that is not a request (``collect``: the tests, the bench): nothing
# asked at the door (emergency access comes granted, or not at all), nothing logged, no pages.
READING: tuple[Stage, ...] = tuple(
    s
    for s in PATIENT_READ
    if s not in (stages.emergency, stages.audit_begun, stages.from_snapshot, stages.keep_snapshot)
)


async def run(facade: Facade, x: Exchange, walk: tuple[Stage, ...] = PATIENT_READ) -> Answer:
    """Walk ``x`` through ``walk`` and return its answer. A walk that ends in an error leaves
    nothing running (the consents being read are cancelled)."""
    hooks = facade.hooks
    try:
        for stage in walk:
            started = time.perf_counter()
            go_on = await stage(facade, x)
            if hooks.wants(StageFinished):  # (no event built when nobody listens)
                hooks.emit(StageFinished(stage.__name__, (time.perf_counter() - started) * 1000))
            if not go_on:
                break
    except BaseException:
        if x.consents is not None:
            x.consents.cancel()
        raise
    assert x.answer is not None, "the walk ended without an answer"
    x.degraded = x.answer.degraded
    return x.answer


async def collect(
    facade: Facade, query: Query, principal: Principal, *, emergency: str | None = None
) -> Answer:
    """The answer for ``principal``'s ``query`` (a patient's, parsed), with emergency access under
    ``emergency`` (a granted reason code): the walk without the request's door and log (``READING``)."""
    x = Exchange(request_id="", principal=principal, query=query, emergency_reason=emergency)
    return await run(facade, x, READING)
