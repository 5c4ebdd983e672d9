"""One patient's mapped resources of some types, from every backend that can answer:

    plan        the distinct requests the types' mappings need, per backend (shared ones once)
    look_up     per backend: skipped when it recently said it does not know the patient (engagement
                index); each request from the cache where it is fresh (a stale entry kept to stand in);
                what is left to ask, with the backend's patient lookup when it can say "unknown"
    ask         fan-out to those backends; each answer mapped as it arrives, in the event loop's
                slack (proxy.slack), the rest when the last one is in — an answer larger than
                facade.max_body_bytes record by record as its body arrives (proxy.mapping.stream)
    windows     a whole list cut off (a long history past the answer cap) asked again by period,
                where its backend can narrow it (proxy.pipeline.windows)
    settle      per backend that was asked: hook events, cache put, what the engagement index
                learns, a stale entry standing in for a failed request, its SourceOutcome
    fetch_and_map  the five in order; one SourceOutcome per backend in the plan, in plan order

No HTTP here: ``proxy.pipeline.stages.fetch_and_map`` is the walk's adapter to it; ``proxy.mappingcheck``
and the tests call it directly.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from proxy.cache import CacheEntry
from proxy.fanout.client import AnswerSink, fan_out
from proxy.hooks import AnswerMapped, CacheLookup, Hooks, SourceAnswered, SourceFailed
from proxy.mapping.pool import HeldAnswer, PoolJob
from proxy.mapping.registry import MappingSet, request_context
from proxy.mapping.requests import RequestSpec
from proxy.mapping.run import MappedAnswer, map_answer_in_steps, source_outcome
from proxy.mapping.stream import AnswerStream
from proxy.pipeline import windows
from proxy.pipeline.facade import Facade
from proxy.slack import SlackJob, Steps, timed
from proxy.types import MappedResource, PatientRef, SourceOutcome, SourceResult, SourceStatus

log = logging.getLogger(__name__)


def context(facade: Facade, backend: str, patient: PatientRef) -> dict[str, str]:
    """The ``{@name}`` values a backend's request and field templates see."""
    return request_context(patient, backend, dict(facade.settings.backend(backend).vars))


@dataclass(frozen=True, slots=True)
class Narrowing:
    """What a search lets the backends narrow their lists to: per date search parameter, the range
    every match overlaps (``proxy.fhir.searchparams.date_bounds``; None: open), for the requests
    whose every reader makes one of ``types`` (the types asked for — a request fetched only to
    vouch for references, or shared with another type, stays whole). The facade still filters."""

    types: frozenset[str]
    dates: tuple[tuple[str, float | None, float | None], ...]

    def apply(self, mappings: MappingSet, backend: str, spec: RequestSpec) -> RequestSpec:
        f = spec.date_filter
        if f is None or spec.unknown_patient is not None:  # (the patient lookup: always whole)
            return spec
        readers = mappings.readers_of(backend, spec)
        if not readers or any(m.resource_type not in self.types for m in readers):
            return spec
        for name, lo, hi in self.dates:
            if name == f.param and (lo is not None or hi is not None):
                return spec.narrowed(lo, hi)
        return spec


def plan_requests(
    mappings: MappingSet,
    backends: Iterable[str],
    types: frozenset[str],
    narrowing: Narrowing | None = None,
) -> dict[str, list[RequestSpec]]:
    """Per backend, the distinct requests the mappings for ``types`` need (shared ones once), each
    narrowed where ``narrowing`` lets its backend apply a search's range."""
    plan: dict[str, list[RequestSpec]] = {}
    for backend in backends:
        specs: dict[str, RequestSpec] = {}
        for m in mappings.for_types(backend, types):
            specs.setdefault(m.request.key, m.request)
        if specs:
            plan[backend] = [
                narrowing.apply(mappings, backend, s) if narrowing else s for s in specs.values()
            ]
    return plan


@dataclass(slots=True)
class Lookup:
    """What the cache and the engagement index gave before any backend is asked."""

    found: list[MappedResource] = field(default_factory=list)
    from_cache: dict[str, float] = field(default_factory=dict)  # backend → age of the oldest entry used
    stale: dict[tuple[str, str], CacheEntry] = field(default_factory=dict)  # stand-ins for a failure
    to_fetch: dict[str, list[RequestSpec]] = field(default_factory=dict)
    outcomes: dict[str, SourceOutcome] = field(default_factory=dict)  # one per source (plan order: below)


async def fetch_and_map(
    facade: Facade,
    patient: PatientRef,
    types: frozenset[str],
    narrowing: Narrowing | None = None,
    *,
    backends: Iterable[str] | None = None,
) -> tuple[list[MappedResource], list[SourceOutcome]]:
    """The mapped resources of ``types`` from every backend — from the cache where it is fresh,
    else fetched (and cached); a failed fetch falls back to a stale entry when there is one.
    ``narrowing``: a search's range, sent to the backends that can apply it (a narrowed request is
    its own fetch, cached under its own key). ``backends``: only these (in priority order)."""
    asked = facade.settings.source_priority
    if backends is not None:
        only = set(backends)
        asked = tuple(b for b in asked if b in only)
    plan = plan_requests(facade.mappings, asked, types, narrowing)
    found = await look_up(facade, patient, types, plan)
    started = time.perf_counter()
    results, answers = await ask(facade, patient, found.to_fetch)
    again = windows.split(results, found.to_fetch, answers, facade.clock.time())
    if again is not None:  # a long history cut off: asked again by period, a round at a time
        while again.pending():
            left = facade.settings.facade.deadline_s - (time.perf_counter() - started)
            if left < windows.MIN_LEFT_S:
                again.unasked()  # (no time for them: missing)
                break
            again.take(*await ask(facade, patient, again.requests(), deadline_s=left))
        results = again.join(found.to_fetch, results, answers)
    for result in results:
        await settle(facade, patient, found, result, answers[result.source])
    cached_only(found)
    wanted = [r for r in found.found if r.resource["resourceType"] in types]
    return wanted, [found.outcomes[name] for name in plan if name in found.outcomes]


async def look_up(
    facade: Facade, patient: PatientRef, types: frozenset[str], plan: dict[str, list[RequestSpec]]
) -> Lookup:
    """Per backend in the plan: skipped (engagement), or its requests from the cache where fresh;
    what is left is to be asked."""
    cache = facade.cache
    hooks = facade.hooks
    out = Lookup()
    index = facade.engagement
    # never skipped for safety-critical types (alerts, care limitations, the threat flag, allergies)
    may_skip = index is not None and not types & facade.settings.engagement.never_skip
    for name, specs in plan.items():
        if may_skip and index is not None and index.unknown_here(name, patient.fhir_id):
            ttl = facade.settings.engagement.ttl_s
            detail = f"was not asked: less than {ttl:g} s ago it answered that it does not know this patient"
            out.outcomes[name] = SourceOutcome(name, SourceStatus.SKIPPED, detail)
            continue
        hits: dict[str, CacheEntry] = {}
        fetch: list[RequestSpec] = []
        for spec in specs:
            hit = (
                await cache.get(name, facade.mappings.cache_key_of(name, spec), patient.fhir_id)
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
                out.stale[(name, spec.key)] = hit[0]
            fetch.append(spec)
        # A backend that may say "unknown patient" says it through its patient lookup, asked in the
        # same run as any other request to it: without the lookup's word, a 404 is a failure.
        lookup = facade.mappings.lookups.get(name)
        if fetch and lookup is not None and all(s.key != lookup.key for s in fetch):
            hits.pop(lookup.key, None)
            fetch.append(lookup)
        for entry in hits.values():
            out.found.extend(entry.resources)
            out.from_cache[name] = max(out.from_cache.get(name, 0.0), cache.age_s(entry))  # type: ignore[union-attr]
        if fetch:
            out.to_fetch[name] = fetch
    return out


async def ask(
    facade: Facade,
    patient: PatientRef,
    to_fetch: dict[str, list[RequestSpec]],
    *,
    deadline_s: float | None = None,
) -> tuple[list[SourceResult], dict[str, dict[str, MappedAnswer]]]:
    """Fan-out to ``to_fetch``; each answer mapped as it arrives, in the event loop's slack (what
    the slack has not mapped by the time the last answer is in is mapped then). ``deadline_s``:
    the fan-out's (default ``facade.deadline_s``)."""
    hooks = facade.hooks
    contexts = {name: context(facade, name, patient) for name in to_fetch}
    priority = {name: i for i, name in enumerate(facade.settings.source_priority)}
    answers: dict[str, dict[str, MappedAnswer]] = {name: {} for name in to_fetch}
    mapping: dict[str, tuple[int, float]] = {}  # per backend that answered: resources made, ms it took

    pool = facade.map_pool

    def mapped_as(source: str, spec: RequestSpec, mapped: MappedAnswer, took: float) -> None:
        answers[source][spec.key] = mapped
        facade.clients[source].handled(spec.learning_key, took)
        records, ms = mapping.get(source, (0, 0.0))
        mapping[source] = (records + len(mapped.resources), ms + took)

    def map_one(source: str, spec: RequestSpec, body: bytes | AnswerSink | None) -> Steps[None]:
        # by every mapping that reads the answer, whatever type it makes: one cache entry per
        # request serves any later query; how long it took orders the backend's requests next time.
        # In slices (steps): a long answer does not hold the event loop while it is mapped.
        started = time.perf_counter()
        took = 0.0  # ms (a streamed answer was mapped as it arrived: that time counts too)
        try:
            if isinstance(body, HeldAnswer):  # (held for the pool: streamed, cut off, or short)
                if body.stream is not None:
                    yield from body.steps()  # (what it held, fed a piece a slice)
                body = body.stream if body.stream is not None else body.body
            if isinstance(body, AnswerStream):  # (the sinks open_sink opens)
                mapped = body.answer()
                took = body.took_ms + (time.perf_counter() - started) * 1000
            else:
                assert body is None or isinstance(body, bytes)
                mapped, spent = yield from timed(
                    map_answer_in_steps(
                        body,
                        facade.mappings.readers_of(source, spec),
                        contexts[source],
                        source_uri=facade.settings.backend(source).source_uri,
                        priority=priority[source],
                    )
                )
                took = spent * 1000
        except Exception:  # map_answer marks what it cannot read; this is for what it did not expect
            log.exception("mapping an answer from %s failed", source)
            mapped = MappedAnswer([], readable=False)
        mapped_as(source, spec, mapped, took)

    async def map_pooled(source: str, spec: RequestSpec, body: bytes) -> None:
        assert pool is not None
        try:
            mapped, took = await pool.map(
                source,
                spec.whole_key,
                body,
                contexts[source],
                source_uri=facade.settings.backend(source).source_uri,
                priority=priority[source],
            )
        except Exception:  # (as map_one)
            log.exception("mapping an answer from %s failed", source)
            mapped, took = MappedAnswer([], readable=False), 0.0
        mapped_as(source, spec, mapped, took)

    jobs: list[SlackJob | PoolJob] = []

    def on_answer(source: str, spec: RequestSpec, body: bytes | AnswerSink | None) -> None:
        if pool is not None:
            whole = body.body if isinstance(body, HeldAnswer) else body
            if isinstance(whole, bytes) and len(whole) >= pool.from_bytes:  # mapped in a process
                jobs.append(PoolJob(map_pooled(source, spec, whole)))
                return
        # mapped while the other answers are still out, in the event loop's slack
        jobs.append(facade.slack.defer(functools.partial(map_one, source, spec, body)))

    def open_sink(source: str, spec: RequestSpec) -> AnswerSink:
        # an answer too large to hold whole: mapped record by record as it arrives
        def stream() -> AnswerStream:
            return AnswerStream(
                facade.mappings.readers_of(source, spec),
                contexts[source],
                source_uri=facade.settings.backend(source).source_uri,
                priority=priority[source],
            )

        if pool is not None:  # held for a process, up to a limit — a third of the answer cap at most,
            # so that a document broken early is found (as a stream) well before the cap cuts it
            return HeldAnswer(min(pool.hold_bytes, facade.settings.facade.max_answer_bytes // 3), stream)
        return stream()

    try:
        results = await fan_out(
            facade.clients,
            to_fetch,
            contexts,
            deadline_s=facade.settings.facade.deadline_s if deadline_s is None else deadline_s,
            on_answer=on_answer,
            open_sink=open_sink,
        )
        for job in jobs:  # what the slack has not mapped yet is mapped now, a slice a turn
            await job.run_in_turns()
    except BaseException:  # (cancelled: its client left) nothing more is mapped for it
        for job in jobs:
            job.drop()
        raise
    if hooks.wants(AnswerMapped):  # (one event a backend, not one an answer: 23 metric updates less)
        for source, (records, took) in mapping.items():
            hooks.emit(AnswerMapped(source, records, took))
    return results, answers


async def settle(
    facade: Facade,
    patient: PatientRef,
    found: Lookup,
    result: SourceResult,
    answers: dict[str, MappedAnswer],
) -> None:
    """One asked backend's share: published, cached, learned from, stood in for when it failed
    (by its stale entries, when every failed request has one), and its SourceOutcome."""
    cache, index = facade.cache, facade.engagement
    mapped = source_outcome(result, answers)
    _publish(facade.hooks, result, mapped.outcome)
    if cache is not None:
        asked = {spec.key: spec for spec in found.to_fetch[result.source]}
        for key in mapped.readable:
            resources = tuple(answers[key].resources)
            cache_key = facade.mappings.cache_key_of(result.source, asked[key])
            await cache.put(result.source, cache_key, patient.fhir_id, resources)
    missing = {spec.key for spec in found.to_fetch[result.source]} - mapped.readable
    standing_in = {k: found.stale[(result.source, k)] for k in missing if (result.source, k) in found.stale}
    # a stale entry stands in for its request's whole answer: nothing fresh of that answer (what
    # arrived of one cut off mid-way) goes beside it
    found.found.extend(r for key, a in answers.items() if key not in standing_in for r in a.resources)
    if index is not None and mapped.outcome is None and result.source in facade.mappings.lookups:
        # learned only from the positive "unknown patient" of its lookup (asked in this run);
        # never from empty lists, from records, or from a failure
        index.learn(result.source, patient.fhir_id, known=not result.unknown_patient)
    for entry in standing_in.values():
        found.found.extend(entry.resources)
    latency = result.latency_ms
    if mapped.outcome is None:
        detail = "answered"
        if result.source in found.from_cache:
            detail += f" (in part from the cache, {found.from_cache[result.source]:.0f} s old)"
        found.outcomes[result.source] = SourceOutcome(result.source, SourceStatus.OK, detail, latency)
    elif standing_in and len(standing_in) == len(missing):
        age = max(cache.age_s(e) for e in standing_in.values())  # type: ignore[union-attr]
        detail = f"{mapped.outcome.detail}; showing its answer from {age:.0f} s ago (cache)"
        found.outcomes[result.source] = SourceOutcome(result.source, SourceStatus.STALE, detail, latency)
    else:
        found.outcomes[result.source] = mapped.outcome


def cached_only(found: Lookup) -> None:
    """A backend answered wholly from the cache (nothing of it asked) is CACHED."""
    for name, age in found.from_cache.items():
        if name not in found.outcomes:
            detail = f"answered from the cache ({age:.0f} s old)"
            found.outcomes[name] = SourceOutcome(name, SourceStatus.CACHED, detail)


def _publish(hooks: Hooks, result: SourceResult, degraded: SourceOutcome | None) -> None:
    """SourceAnswered, or SourceFailed with the kind of failure (a bounded label, no patient)."""
    if degraded is None:
        hooks.emit(SourceAnswered(result.source, result.latency_ms))
        return
    status, detail = degraded.status, degraded.detail
    if status is SourceStatus.UNAVAILABLE:
        kind = "breaker-open"
    elif status is SourceStatus.OVERLOADED:
        kind = "facade-overloaded"  # (the facade's own condition: no fault of the backend's)
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
