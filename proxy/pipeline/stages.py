"""The walk's stages (``proxy.pipeline.walk`` puts them in order). Each is a small adapter:
``await stage(facade, x)`` reads what the stages before it left on the ``Exchange``, calls into
access/, audit/, fanout/ (via ``proxy.pipeline.fetch``), mapping/, merge/ or redact/, and leaves its
own result there. It returns True to go on, False when the answer is already settled (``x.answer``
set: an asker answered as for an unknown patient, or nothing permitted to fetch); an error it
raises ends the walk and is the edge's to answer (and audit).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from proxy import paging
from proxy.access import AccessDecision
from proxy.access import decide as decide_access
from proxy.access import pdl as pdl_rules
from proxy.access.consent import terms
from proxy.fhir.errors import FhirError
from proxy.fhir.ids import holding_backend
from proxy.fhir.searchparams import date_bounds, matches, params_for, resource_bounds
from proxy.merge import lookalike
from proxy.merge.facts import merge_in_turns
from proxy.paging import SnapshotStore
from proxy.pipeline import audit
from proxy.pipeline.exchange import ConsentsRead, Exchange
from proxy.pipeline.facade import Answer, Facade
from proxy.pipeline.fetch import Narrowing, plan_requests
from proxy.pipeline.fetch import fetch_and_map as fetch
from proxy.redact.policy import redact_in_turns
from proxy.slack import slice_ends, turn
from proxy.store.base import ConsentRow, Store, StoreUnavailable
from proxy.timeutil import fhir_range
from proxy.types import FhirDict, MappedResource, PatientRef, Principal, Query, SourceOutcome, Withheld

log = logging.getLogger(__name__)


async def emergency(facade: Facade, x: Exchange) -> bool:
    """Emergency access, when asked for (``x.emergency_code``): granted with its reason, or refused
    (400 not a reason code, 403 an audience without it) and the refusal logged as such."""
    assert x.principal is not None
    try:
        x.emergency_reason = pdl_rules.emergency_reason(x.principal, x.emergency_code)
    except FhirError as exc:
        x.refused = f"refused ({exc.status}): {exc.message}"  # our fixed text, never the header's
        raise
    return True


async def audit_begun(facade: Facade, x: Exchange) -> bool:
    """The access logged as begun before any backend is asked; its commit runs while they answer
    (the edge waits for it before the answer leaves)."""
    if facade.store is None:
        raise StoreUnavailable("no audit store")
    audit.begin(facade.store, facade.ids, x)
    return True


async def decide(facade: Facade, x: Exchange) -> bool:
    """Scopes × query × audience → AccessDecision (403 when the scopes allow none of it); a patient
    asking about another patient is answered as for an unknown patient, without asking anyone."""
    assert x.principal is not None and x.query is not None
    x.decision = decide_access(x.principal, x.query)
    if x.decision.as_unknown:
        x.answer = Answer(resources=[], outcomes=[], patient_known=False)
        return False
    return True


async def from_snapshot(facade: Facade, x: Exchange) -> bool:
    """A later page (the query carries a page token): read from the first page's snapshot
    (``proxy.paging``) — no backend asked, nothing mapped again — or 410 Gone when the token finds
    none for this asker and search (expired, unknown, another's: one answer)."""
    assert x.query is not None and x.query.patient is not None
    query, patient, pages = x.query, x.query.patient.fhir_id, facade.pages
    if query.page_token is None:
        return True
    key = None if pages is None else paging.snapshot_key(query.page_token, _binding(x))
    window = None
    if pages is not None and key is not None:
        count = 0 if query.summary_count else query.count
        now = facade.clock.time()
        window = await paging.read(pages, key, patient=patient, offset=query.offset, count=count, now=now)
    if window is None:
        raise paging.gone()
    x.page_token = query.page_token
    x.answer = Answer(
        resources=window.resources,
        outcomes=window.outcomes,
        patient_known=window.known,
        withheld=window.withheld,
        start=window.start,
        size=window.size,
    )
    return False


async def plan(facade: Facade, x: Exchange) -> bool:
    """The types to fetch: those asked for (Patient too, for ``$everything``) with the types they
    reference, the scopes permitting; none permitted settles the answer (nobody can say more)."""
    assert x.query is not None and x.decision is not None
    decision = x.decision
    wants_patient = x.query.interaction == "everything" or "Patient" in x.query.resource_types
    asked = decision.types | ({"Patient"} if wants_patient else set())
    x.fetch_types = frozenset(t for t in facade.mappings.with_referenced(asked) if decision.permits(t))
    if not x.fetch_types:
        x.answer = Answer(resources=[], outcomes=[], patient_known=None)
        return False
    return True


async def consents(facade: Facade, x: Exchange) -> bool:
    """The patient reads all of their own records; anyone else's reading depends on the patient's
    consents and blocks, read from the store *while the backends answer* (started here, awaited by
    ``pdl``; the runner cancels it when the walk ends in an error)."""
    assert x.query is not None and x.query.patient is not None and x.decision is not None
    if x.decision.under_pdl:
        if facade.store is None:
            raise StoreUnavailable("no consent store")
        x.consents = asyncio.ensure_future(_read_consents(facade.store, facade.pages, x.query))
    return True


async def _read_consents(store: Store, pages: SnapshotStore | None, query: Query) -> ConsentsRead:
    """The consents, and for an answer that may be kept as a page snapshot the patient's snapshot
    generation with them — in one statement where the snapshots are the store's, else read first —
    so that a consent changed after them is a generation the snapshot lacks."""
    assert query.patient is not None
    pnr, patient = query.patient.pnr, query.patient.fhir_id
    if pages is None or not paging.may_keep(query):
        return ConsentsRead(await store.consents(pnr), None)
    if pages is store:
        return ConsentsRead(*await store.consents_at(pnr, patient))
    try:
        generation: int | None = await pages.snapshot_generation(patient)
    except StoreUnavailable:  # (the snapshots' store: no snapshot is kept, later pages walk again)
        generation = None
    return ConsentsRead(await store.consents(pnr), generation)


async def fetch_and_map(facade: Facade, x: Exchange) -> bool:
    """Cache → engagement index → fan-out → mapping (in the slack) → stale fallback
    (``proxy.pipeline.fetch``): the mapped resources and one outcome per source."""
    assert x.query is not None and x.query.patient is not None
    if _reads_from_holder(facade, x):
        x.mapped, x.outcomes = await _read_from_holder(facade, x)
    else:
        x.mapped, x.outcomes = await fetch(facade, x.query.patient, x.fetch_types, _narrowing(facade, x))
    if facade.record_dates is not None:
        facade.record_dates.learn(x.mapped)
    return True


def _reads_from_holder(facade: Facade, x: Exchange) -> bool:
    """A read by id outside PDL (see ``_narrowing`` for why not under it) of a type a backend makes."""
    query, decision = x.query, x.decision
    assert query is not None and decision is not None
    return (
        facade.settings.facade.pushdown
        and query.interaction == "read"
        and query.resource_id is not None
        and "Patient" not in query.resource_types
        and not decision.under_pdl
    )


async def _read_from_holder(facade: Facade, x: Exchange) -> tuple[list[MappedResource], list[SourceOutcome]]:
    """A read by id in two steps: the backend its id names (``<patient>-<backend>-<hash>``) — its
    list of the days around the record's date when this worker has mapped the record before
    (``proxy.pipeline.record_dates``), else (or when it is not there) whole; then, only when it
    holds the record, the other backends with the record's type narrowed to its date
    (``request.filters``) — what its copies there (merged with it: their security labels, the
    strictest wins) and what it references need. An id no backend holds asks only the one it names
    (none, for a name that is no backend's): absent either way."""
    query = x.query
    assert query is not None and query.patient is not None and query.resource_id is not None
    holder = holding_backend(query.resource_id)
    priority = facade.settings.source_priority
    rtype = next(iter(query.resource_types))
    dated = facade.record_dates.get(query.resource_id) if facade.record_dates is not None else None
    if dated is not None and await _fresh_in_cache(facade, query.patient, holder, x.fetch_types):
        dated = None  # (the whole list is at hand: no backend is asked)
    if dated is not None:  # dated when it was last mapped: the holder's list of the days around it
        near = Narrowing(frozenset({rtype}), tuple((p, dated, dated + 1) for p in _date_params(rtype)))
        mapped, outcomes = await fetch(facade, query.patient, x.fetch_types, near, backends=(holder,))
        record = _the_record(mapped, rtype, query.resource_id)
        if record is None and not any(o.status.degraded for o in outcomes):
            dated = None  # not there — moved to another date, or gone: the whole list decides
    if dated is None:  # (a holder that failed narrowed is not asked again: it says so)
        mapped, outcomes = await fetch(facade, query.patient, x.fetch_types, backends=(holder,))
        record = _the_record(mapped, rtype, query.resource_id)
    if record is None:
        return mapped, outcomes
    dates = tuple((p, *resource_bounds(record.resource, p)) for p in _date_params(rtype))
    narrowing = Narrowing(frozenset({rtype}), dates)
    others = tuple(b for b in priority if b != holder)
    more, more_outcomes = await fetch(facade, query.patient, x.fetch_types, narrowing, backends=others)
    order = {name: i for i, name in enumerate(priority)}
    return mapped + more, sorted(outcomes + more_outcomes, key=lambda o: order.get(o.source, len(order)))


async def _fresh_in_cache(facade: Facade, patient: PatientRef, backend: str, types: frozenset[str]) -> bool:
    """Whether every list ``backend`` is asked for ``types`` is fresh in the cache (not read: the
    fetch that follows reads them)."""
    cache = facade.cache
    if cache is None:
        return False
    for spec in plan_requests(facade.mappings, (backend,), types).get(backend, []):
        if not await cache.fresh(backend, facade.mappings.cache_key_of(backend, spec), patient.fhir_id):
            return False
    return True


def _the_record(mapped: list[MappedResource], rtype: str, resource_id: str) -> MappedResource | None:
    return next(
        (r for r in mapped if r.resource["id"] == resource_id and r.resource["resourceType"] == rtype), None
    )


def _date_params(rtype: str) -> list[str]:
    return [p.name for p in params_for(rtype).values() if p.kind == "date"]


def _narrowing(facade: Facade, x: Exchange) -> Narrowing | None:
    """A search's date ranges, for the backends that can apply them (``request.filters``), or None.

    Only outside PDL (the patient reading their own records): under PDL the withheld hint is decided
    over every record of the asked types before any filter (``pdl``), so a narrowed list would let
    the hint depend on the filter's dates — an oracle. Never for ``$everything`` (its ``_since`` is
    about changes, not clinical dates) nor a read by id."""
    query, decision = x.query, x.decision
    assert query is not None and decision is not None
    if not facade.settings.facade.pushdown or query.interaction != "search-type" or decision.under_pdl:
        return None
    names = dict.fromkeys(f.name for f in query.filters if f.kind == "date")
    dates = tuple((name, *date_bounds(query.filters, name)) for name in names)
    if not any(lo is not None or hi is not None for _, lo, hi in dates):
        return None
    return Narrowing(query.resource_types, dates)


async def pdl(facade: Facade, x: Exchange) -> bool:
    """Whose records this asker may read (own provider, consents, blocks, emergency access), and why
    the rest of the requested types were withheld — the hint, decided before any filter."""
    if x.consents is None:
        return True
    assert x.principal is not None and x.decision is not None
    decision = x.decision
    rules = pdl_rules.rules(
        x.principal,
        (terms(c.resource) for c in (await x.consents).rows),
        emergency=x.emergency_reason is not None,
        without_care_documentation=facade.settings.without_care_documentation,
        threat_register=facade.settings.access.threat_register,
    )
    readable = []
    audience = decision.audience.name
    unattributed: Counter[tuple[str, str]] = Counter()
    for n, r in enumerate(x.mapped):
        if slice_ends(n):
            await turn()  # a long history: other requests get a turn (proxy.slack)
        why = rules.verdict(r)
        if why is None:
            readable.append(r)
            continue
        if why is Withheld.UNATTRIBUTED:
            unattributed[(r.source, r.mapping)] += 1
        if (
            why not in x.withheld
            and r.resource["resourceType"] in decision.types
            and facade.policy.visible(r.resource, audience)
        ):
            # The hint is decided over every withheld record of the requested types the asker
            # could otherwise see, before any filter: it depends on the patient, the asker and
            # the types only — never on filter values, dates, ids or paging (not an oracle).
            x.withheld.add(why)
    for (source, mapping), n in unattributed.items():  # a mapping or data defect: say where, not what
        log.warning(
            "withheld %d record(s) from backend %s, mapping %s, from care staff: no care provider",
            n,
            source,
            mapping,
        )
    x.mapped = readable
    return True


async def merge(facade: Facade, x: Exchange) -> bool:
    """One resource per fact, with its provenance, in a stable order."""
    x.kept = await merge_in_turns(x.mapped)
    return True


async def redact(facade: Facade, x: Exchange) -> bool:
    """The audience policy removes what this asker may not see, and every trace of it."""
    assert x.query is not None and x.query.patient is not None and x.decision is not None
    x.resources = await redact_in_turns(
        x.kept,
        facade.policy,
        x.decision.audience.name,
        subject=f"Patient/{x.query.patient.fhir_id}",
    )
    return True


async def lookalikes(facade: Facade, x: Exchange) -> bool:
    """Look-alikes from different producers marked as possible duplicates (never merged), over
    what this asker may see only."""
    x.resources = await lookalike.mark_in_turns(x.kept, x.resources)
    return True


async def select(facade: Facade, x: Exchange) -> bool:
    """The query's filters, after redaction so hidden content cannot match; and whether the
    patient is known: the answer."""
    assert x.query is not None
    degraded = [o for o in x.outcomes if o.status.degraded]
    # records withheld under PDL (the hint) are records of a known patient: an $everything that
    # the scopes narrow to withheld types is the hint, never "no such patient"
    known: bool | None = bool(x.resources) or bool(x.withheld) or (None if degraded else False)
    selected = []
    for n, r in enumerate(x.resources):
        if slice_ends(n):
            await turn()
        if _selected(r, x.query):
            selected.append(r)
    x.answer = Answer(
        resources=selected, outcomes=x.outcomes, patient_known=known, withheld=frozenset(x.withheld)
    )
    return True


async def keep_snapshot(facade: Facade, x: Exchange) -> bool:
    """An answer of more than one page kept as a snapshot for the later pages (``proxy.paging``):
    its page links carry the token. A store that cannot take it leaves the links by offset, as
    without snapshots (each page then walks again)."""
    assert x.query is not None and x.query.patient is not None and x.answer is not None
    query, patient, answer, pages = x.query, x.query.patient.fhir_id, x.answer, facade.pages
    if pages is None or query.page_token is not None or not paging.may_keep(query):
        return True
    if len(answer.resources) <= query.count and query.offset == 0:
        return True  # one page: nothing to keep
    now = facade.clock.time()
    # not past the next instant a consent or block of the patient comes into or goes out of force
    read = None if x.consents is None else x.consents.result()
    boundaries = [] if read is None else [b for c in read.rows for b in _period(c)]
    token = paging.new_token()
    key = paging.snapshot_key(token, _binding(x))
    assert key is not None
    try:
        # read with the consents (``_read_consents``); the patient's own reading does not depend
        # on them: read now
        generation = await pages.snapshot_generation(patient) if read is None else read.generation
        if generation is None:
            raise StoreUnavailable("the snapshot generation could not be read")
        await paging.keep(
            pages,
            key,
            patient=patient,
            generation=generation,
            resources=answer.resources,
            chunk=paging.chunk_for(query.count),
            outcomes=answer.outcomes,
            known=answer.patient_known,
            withheld=answer.withheld,
            expires=paging.expiry(now, facade.settings.paging.snapshot_ttl_s, boundaries),
            now=now,
        )
    except StoreUnavailable as exc:
        log.warning("page snapshot not kept (%s): later pages walk again", exc)
        return True
    x.page_token = token
    return True


def _binding(x: Exchange) -> bytes:
    principal, decision, query = x.principal, x.decision, x.query
    assert isinstance(principal, Principal) and isinstance(decision, AccessDecision) and query is not None
    return paging.binding(
        principal,
        types=decision.types,
        permission=decision.permission,
        emergency=x.emergency_reason,
        query=query,
    )


def _period(row: ConsentRow) -> tuple[float | None, float | None]:
    t = terms(row.resource)
    return t.start, t.end


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
