"""One request, one straight walk: Query → fan-out → mapping → merge → filter → Answer.

    fhir/params   parse the request → Query                          (400/404 before any backend)
    auth/         token → Principal (in the routes' middleware)      (401)
    access/       Principal × Query → AccessDecision                 (403; others' records as unknown)
    fanout/       ask the backends that can answer (with each one's patient lookup, which alone may
                  say "unknown patient"): each answer handed on as it arrives, then a SourceResult
                  (status, latency) per backend
    mapping/run   raw answers → FHIR dicts (+ a SourceOutcome per degraded source; the answer names
                  every source, degraded or not: fetch_and_map); an answer
                  that arrives while others are still out is mapped in the event loop's slack
                  (proxy.slack), the rest when the last one is in
    access/pdl    whose records this asker may read: own provider, consents, blocks, emergency
                  (the patient's consents are read from the store while the backends answer)
    merge/        dedupe, provenance, stable order
    redact/       the audience policy removes what this asker may not see, and every trace of it
    merge/lookalike  look-alikes from different producers marked as possible duplicates (never
                  merged), over what this asker may see only
    search        the query's filters, after redaction, so hidden content cannot match
    fhir/routes   page, Bundle, bytes

The handlers in ``proxy.edge.routes`` call ``collect`` and turn its ``Answer`` into a response.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field

from proxy.access import decide, pdl
from proxy.access.consent import terms
from proxy.cache import CacheEntry, SourceCache
from proxy.fanout.client import BackendClient, fan_out
from proxy.fanout.engagement import EngagementIndex
from proxy.fhir.ids import PatientIds
from proxy.fhir.searchparams import matches
from proxy.hooks import AnswerMapped, CacheLookup, Hooks, SourceAnswered, SourceFailed
from proxy.mapping.registry import MappingSet, request_context
from proxy.mapping.requests import RequestSpec
from proxy.mapping.run import MappedAnswer, map_answer, source_outcome
from proxy.merge import lookalike
from proxy.merge.facts import merge
from proxy.redact.policy import Policy, redact
from proxy.settings import Settings
from proxy.slack import SlackJob, SlackQueue
from proxy.store.base import Store, StoreUnavailable
from proxy.timeutil import fhir_range
from proxy.types import (
    FhirDict,
    MappedResource,
    PatientRef,
    Principal,
    Query,
    SourceOutcome,
    SourceResult,
    SourceStatus,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Facade:
    """Everything a request needs, built once at start-up (kept under a web.AppKey)."""

    settings: Settings
    mappings: MappingSet
    clients: dict[str, BackendClient]
    ids: PatientIds
    policy: Policy
    store: Store | None = None  # consents (without one, only the patient reads: fail closed)
    cache: SourceCache | None = None
    engagement: EngagementIndex | None = None
    slack: SlackQueue = field(default_factory=SlackQueue)  # mapping early answers, between other work
    hooks: Hooks = field(default_factory=Hooks)  # what happened, for metrics and logs (proxy.hooks)


@dataclass(frozen=True, slots=True)
class Answer:
    resources: list[FhirDict]  # every match, in the documented order, before paging
    outcomes: list[SourceOutcome]  # one per source asked (or skipped, with why), degraded or not
    # True: some source holds something about the patient; False: every source answered and none
    # does; None: nothing arrived, but a source did not answer, so nobody can say.
    patient_known: bool | None
    # why records of the requested types were not shown (PDL: no consent, blocked, no known care
    # provider), whatever the filters; never for the patient
    withheld: frozenset[pdl.Withheld] = field(default_factory=frozenset)


def context(facade: Facade, backend: str, patient: PatientRef) -> dict[str, str]:
    """The ``{@name}`` values a backend's request and field templates see."""
    return request_context(patient, backend, dict(facade.settings.backend(backend).vars))


def plan_requests(
    mappings: MappingSet, backends: Iterable[str], types: frozenset[str]
) -> dict[str, list[RequestSpec]]:
    """Per backend, the distinct requests the mappings for ``types`` need (shared ones once)."""
    plan: dict[str, list[RequestSpec]] = {}
    for backend in backends:
        specs: dict[str, RequestSpec] = {}
        for m in mappings.for_types(backend, types):
            specs.setdefault(m.request.key, m.request)
        if specs:
            plan[backend] = list(specs.values())
    return plan


async def fetch_and_map(
    facade: Facade, patient: PatientRef, types: frozenset[str]
) -> tuple[list[MappedResource], list[SourceOutcome]]:
    """The mapped resources of ``types`` from every backend — from the cache where it is fresh,
    else fetched (and cached); a failed fetch falls back to a stale entry when there is one."""
    plan = plan_requests(facade.mappings, facade.settings.source_priority, types)
    cache = facade.cache
    hooks = facade.hooks
    found: list[MappedResource] = []
    from_cache: dict[str, float] = {}  # backend → age of the oldest entry used
    stale: dict[tuple[str, str], CacheEntry] = {}
    to_fetch: dict[str, list[RequestSpec]] = {}
    outcomes: dict[str, SourceOutcome] = {}  # one per source in the plan, in plan order (below)
    index = facade.engagement
    # never skipped for safety-critical types (alerts, care limitations, the threat flag, allergies)
    may_skip = index is not None and not types & facade.settings.engagement.never_skip
    for name, specs in plan.items():
        if may_skip and index is not None and index.unknown_here(name, patient.fhir_id):
            ttl = facade.settings.engagement.ttl_s
            detail = f"was not asked: less than {ttl:g} s ago it answered that it does not know this patient"
            outcomes[name] = SourceOutcome(name, SourceStatus.SKIPPED, detail)
            continue
        hits: dict[str, CacheEntry] = {}
        fetch: list[RequestSpec] = []
        for spec in specs:
            hit = (
                await cache.get(name, facade.mappings.cache_key(name, spec.key), patient.fhir_id)
                if cache
                else None
            )
            if cache is not None and hooks.wants(CacheLookup):
                judged = "miss" if hit is None else "hit" if hit[1] else "stale"
                hooks.emit(CacheLookup(name, judged, None if hit is None else hit[0].size))
            if hit is not None and hit[1]:
                hits[spec.key] = hit[0]
                continue
            if hit is not None:
                stale[(name, spec.key)] = hit[0]
            fetch.append(spec)
        # A backend that may say "unknown patient" says it through its patient lookup, asked in the
        # same run as any other request to it: without the lookup's word, a 404 is a failure.
        lookup = facade.mappings.lookups.get(name)
        if fetch and lookup is not None and all(s.key != lookup.key for s in fetch):
            hits.pop(lookup.key, None)
            fetch.append(lookup)
        for entry in hits.values():
            found.extend(entry.resources)
            from_cache[name] = max(from_cache.get(name, 0.0), cache.age_s(entry))  # type: ignore[union-attr]
        if fetch:
            to_fetch[name] = fetch

    contexts = {name: context(facade, name, patient) for name in to_fetch}
    priority = {name: i for i, name in enumerate(facade.settings.source_priority)}
    answers: dict[str, dict[str, MappedAnswer]] = {name: {} for name in to_fetch}

    def map_one(source: str, spec: RequestSpec, body: bytes | None) -> None:
        # by every mapping that reads the answer, whatever type it makes: one cache entry per
        # request serves any later query; how long it took orders the backend's requests next time
        started = time.perf_counter()
        try:
            answers[source][spec.key] = mapped = map_answer(
                body,
                facade.mappings.readers.get((source, spec.key), ()),
                contexts[source],
                source_uri=facade.settings.backend(source).source_uri,
                priority=priority[source],
            )
        except Exception:  # map_answer marks what it cannot read; this is for what it did not expect
            log.exception("mapping an answer from %s failed", source)
            answers[source][spec.key] = mapped = MappedAnswer([], readable=False)
        took = (time.perf_counter() - started) * 1000
        facade.clients[source].handled(spec.learning_key, took)
        if hooks.wants(AnswerMapped):  # (no event built when nobody listens)
            hooks.emit(AnswerMapped(source, len(mapped.resources), took))

    jobs: list[SlackJob] = []

    def on_answer(source: str, spec: RequestSpec, body: bytes | None) -> None:
        # mapped while the other answers are still out, in the event loop's slack
        jobs.append(facade.slack.defer(functools.partial(map_one, source, spec, body)))

    try:
        results = await fan_out(
            facade.clients,
            to_fetch,
            contexts,
            deadline_s=facade.settings.facade.deadline_s,
            on_answer=on_answer,
        )
    except BaseException:  # (cancelled: its client left) nothing more is mapped for it
        for job in jobs:
            job.drop()
        raise
    for job in jobs:  # what the slack has not mapped yet is mapped now
        job.run()
    asked = {name: {spec.key for spec in specs} for name, specs in to_fetch.items()}
    for result in results:
        mapped = source_outcome(result, answers[result.source])
        _publish(hooks, result, mapped.outcome)
        if cache is not None:
            for key in mapped.readable:
                resources = tuple(answers[result.source][key].resources)
                cache_key = facade.mappings.cache_key(result.source, key)
                await cache.put(result.source, cache_key, patient.fhir_id, resources)
        found.extend(mapped.resources)
        if index is not None and mapped.outcome is None and result.source in facade.mappings.lookups:
            # learned only from the positive "unknown patient" of its lookup (asked in this run);
            # never from empty lists, from records, or from a failure
            index.learn(result.source, patient.fhir_id, known=not result.unknown_patient)
        missing = asked[result.source] - mapped.readable
        standing_in = [stale[(result.source, k)] for k in missing if (result.source, k) in stale]
        for entry in standing_in:
            found.extend(entry.resources)
        latency = result.latency_ms
        if mapped.outcome is None:
            detail = "answered"
            if result.source in from_cache:
                detail += f" (in part from the cache, {from_cache[result.source]:.0f} s old)"
            outcomes[result.source] = SourceOutcome(result.source, SourceStatus.OK, detail, latency)
        elif standing_in and len(standing_in) == len(missing):
            age = max(cache.age_s(e) for e in standing_in)  # type: ignore[union-attr]
            detail = f"{mapped.outcome.detail}; showing its answer from {age:.0f} s ago (cache)"
            outcomes[result.source] = SourceOutcome(result.source, SourceStatus.STALE, detail, latency)
        else:
            outcomes[result.source] = mapped.outcome
    for name, age in from_cache.items():
        if name not in outcomes:
            detail = f"answered from the cache ({age:.0f} s old)"
            outcomes[name] = SourceOutcome(name, SourceStatus.CACHED, detail)
    wanted = [r for r in found if r.resource["resourceType"] in types]
    return wanted, [outcomes[name] for name in plan if name in outcomes]


def _publish(hooks: Hooks, result: SourceResult, degraded: SourceOutcome | None) -> None:
    """SourceAnswered, or SourceFailed with the kind of failure (a bounded label, no patient)."""
    if degraded is None:
        hooks.emit(SourceAnswered(result.source, result.latency_ms))
        return
    status, detail = degraded.status, degraded.detail
    if status is SourceStatus.UNAVAILABLE:
        kind = "breaker-open"
    elif status is SourceStatus.TIMEOUT:
        kind = "timeout"
    elif status is SourceStatus.INVALID:
        kind = "too-large" if "larger than" in detail else "invalid"
    elif detail.startswith("answered HTTP"):
        kind = "http-error"
    elif detail.startswith("could not connect"):
        kind = "connect-error"
    elif detail.startswith("connection closed"):
        kind = "connection-closed"
    else:
        kind = "error"
    hooks.emit(SourceFailed(result.source, result.latency_ms, kind, detail))


async def collect(
    facade: Facade, query: Query, principal: Principal, *, emergency: str | None = None
) -> Answer:
    assert query.patient is not None
    decision = decide(principal, query)
    if decision.as_unknown:
        return Answer(resources=[], outcomes=[], patient_known=False)
    wants_patient = query.interaction == "everything" or "Patient" in query.resource_types
    asked = decision.types | ({"Patient"} if wants_patient else set())
    fetch_types = frozenset(t for t in facade.mappings.with_referenced(asked) if decision.permits(t))
    if not fetch_types:
        return Answer(resources=[], outcomes=[], patient_known=None)
    # The patient reads all of their own records; anyone else's reading depends on the patient's
    # consents and blocks, read while the backends answer.
    consents = None
    if decision.under_pdl:
        if facade.store is None:
            raise StoreUnavailable("no consent store")
        consents = asyncio.ensure_future(facade.store.consents(query.patient.pnr))
    try:
        mapped, outcomes = await fetch_and_map(facade, query.patient, fetch_types)
    except BaseException:
        if consents is not None:
            consents.cancel()
        raise
    withheld: set[pdl.Withheld] = set()
    if consents is not None:
        rules = pdl.rules(
            principal,
            (terms(c.resource) for c in await consents),
            emergency=emergency is not None,
            without_care_documentation=facade.settings.without_care_documentation,
            threat_register=facade.settings.access.threat_register,
        )
        readable = []
        audience = decision.audience.name
        unattributed: Counter[tuple[str, str]] = Counter()
        for r in mapped:
            why = rules.verdict(r)
            if why is None:
                readable.append(r)
                continue
            if why is pdl.Withheld.UNATTRIBUTED:
                unattributed[(r.source, r.mapping)] += 1
            if (
                why not in withheld
                and r.resource["resourceType"] in decision.types
                and facade.policy.visible(r.resource, audience)
            ):
                # The hint is decided over every withheld record of the requested types the asker
                # could otherwise see, before any filter: it depends on the patient, the asker and
                # the types only — never on filter values, dates, ids or paging (not an oracle).
                withheld.add(why)
        for (source, mapping), n in unattributed.items():  # a mapping or data defect: say where, not what
            log.warning(
                "withheld %d record(s) from backend %s, mapping %s, from care staff: no care provider",
                n,
                source,
                mapping,
            )
        mapped = readable
    kept = merge(mapped)
    merged = redact(
        kept,
        facade.policy,
        decision.audience.name,
        subject=f"Patient/{query.patient.fhir_id}",
    )
    # look-alikes from different producers marked as possible duplicates: over the visible only
    merged = lookalike.mark(kept, merged)

    degraded = [o for o in outcomes if o.status.degraded]
    # records withheld under PDL (the hint) are records of a known patient: an $everything that
    # the scopes narrow to withheld types is the hint, never "no such patient"
    known: bool | None = bool(merged) or bool(withheld) or (None if degraded else False)

    selected = [r for r in merged if _selected(r, query)]
    return Answer(resources=selected, outcomes=outcomes, patient_known=known, withheld=frozenset(withheld))


def _selected(resource: FhirDict, query: Query) -> bool:
    if resource["resourceType"] not in query.resource_types:  # (the access decision narrowed the fetch)
        return False
    if query.resource_id is not None and resource["id"] != query.resource_id:
        return False
    if query.since is not None:
        updated = resource.get("meta", {}).get("lastUpdated")
        if updated is not None:  # without a change time a resource cannot be shown to be older
            try:
                if fhir_range(updated)[0] < query.since:
                    return False
            except ValueError:
                pass
    return not query.filters or matches(resource, query.filters)
