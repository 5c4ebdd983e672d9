"""The request's AuditEvent, from its ``Exchange``: logged as begun before the backends are asked
(the walk's ``audit_begun`` stage), completed with the outcome once the answer is known (the edge's
``audited`` middleware), and let out only once durably logged.

    begin        the begun event submitted; its commit runs while the backends answer
    complete     wait for the begun commit (if any), then submit the completed event, which replaces
                 it (no begun event: the completed one is stored and waited for)
    unparsed     a request refused before its query was parsed is logged against the patient it names
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter

from proxy.access import probing
from proxy.audit.events import PROBE, begun_event, completed, record
from proxy.fhir.ids import PatientIds
from proxy.pipeline.exchange import Exchange
from proxy.store.base import Store, StoreUnavailable
from proxy.types import FhirDict, PatientRef, Principal, Query


def begin(store: Store, ids: PatientIds, x: Exchange) -> None:
    """The request is about to ask the backends: log the access as begun now, so that its commit
    runs while they answer (``complete`` waits for it before anything leaves)."""
    query, principal = x.query, x.principal
    assert query is not None and principal is not None
    if query.patient is not None:
        event = _begun(ids, x, query, principal)
        x.committed = store.submit_audit(record(event, principal, query.patient.pnr, x.request_id))
        x.begun = event


async def complete(store: Store, ids: PatientIds, x: Exchange, status: int) -> None:
    """Log the request's AuditEvent, completed with its outcome, once the access is durably logged.
    An access logged as begun: wait for that commit, then submit the completed event, which
    replaces it and commits after the answer (if the begun event could not be stored, the request
    fails with 503 and is completed as such). Otherwise: store the completed event and wait."""
    if x.committed is None:
        stored = submit_completed(store, ids, x, status)
        if stored is not None:
            await stored
        return
    try:
        await x.committed
    except StoreUnavailable:
        with contextlib.suppress(StoreUnavailable):
            submit_completed(store, ids, x, 503)
        raise
    submit_completed(store, ids, x, status)


def submit_completed(store: Store, ids: PatientIds, x: Exchange, status: int) -> asyncio.Future[None] | None:
    """The completed event submitted (nobody need wait); None when the request named no patient or
    was never authenticated: nothing to log."""
    query, principal = x.query, x.principal
    if query is None or query.patient is None or principal is None:
        return None
    # a patient asking about another patient's record: that asker's refused attempt, whatever the
    # (unknown-patient) answer said; stored against the record, left out of its patient's own view
    why = [PROBE] if probing(principal, query.patient.pnr) else []
    why += [x.refused] if x.refused is not None else []
    done = completed(
        x.begun if x.begun is not None else _begun(ids, x, query, principal),
        status=status,
        disclosed=x.disclosed,
        degraded=x.degraded,
        refused="; ".join(why) or None,
        resource=x.resource,
    )
    return store.submit_audit(record(done, principal, query.patient.pnr, x.request_id))


def unparsed(
    x: Exchange, interaction: str, resource_types: frozenset[str], patient: PatientRef | None
) -> None:
    """A request refused before its query was parsed (a 400, or a 404 for an unknown type) that
    names a patient (``proxy.fhir.params.named_patient``) is logged against that patient."""
    if patient is not None:
        x.query = Query(interaction=interaction, resource_types=resource_types, patient=patient)


def disclosed(resources: list[FhirDict]) -> Counter[str]:
    """Per source (``meta.source``'s last part), how many of ``resources`` left."""
    return Counter(r.get("meta", {}).get("source", "").rsplit(":", 1)[-1] for r in resources)


def _begun(ids: PatientIds, x: Exchange, query: Query, principal: Principal) -> FhirDict:
    assert query.patient is not None
    return begun_event(
        principal,
        interaction=query.interaction,
        patient_id=query.patient.fhir_id,
        resource_types=sorted(query.resource_types),
        request_id=x.request_id,
        emergency_reason=x.emergency_code,
        # the asking patient's opaque id (patient audience): the event names who acted
        asker_id=None if principal.patient_pnr is None else ids.encode(principal.patient_pnr),
    )
