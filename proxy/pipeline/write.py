"""One write — a transaction Bundle, or one resource — top to bottom, like the read walk:

    validate     every problem listed (400), nothing stored or sent    proxy.fhir.transaction
    authorise    the write scope for each type, and the policy's targets (403)   writes.policy
    render       each entry in each target's dialect (the write mappings; a value a target
                 cannot take: 400, nothing stored)                      proxy.mapping.write
    enqueue      the transaction and one part per target, in one store transaction, BEFORE the
                 answer; the same Bundle.identifier again: the stored one (another Bundle under
                 it: 409)                                               proxy.store (outbox)
    wait         a short while for the delivery (``outbox.wait_s``)    proxy.pipeline.delivery
    answer       a transaction-response: each entry 201 when every target has it, else 202 with
                 the pending targets named; the Task (delivery status) at ``Task/<id>``

What is written is stamped with the writer (user, care unit, care provider): it is that provider's
record, and PDL governs who reads it back. The patient's audience writes nothing (the policy cannot
grant it). The access is audited by the edge as a ``create`` of the written types.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import orjson

from proxy.access import require
from proxy.fhir.errors import FhirError, issue, outcome
from proxy.fhir.transaction import WRITTEN_SYSTEM, TransactionInvalid, ValidTransaction, validate_transaction
from proxy.mapping.write import WriteMappingError
from proxy.pipeline.delivery import DELIVERED, PARKED, PENDING
from proxy.pipeline.exchange import Exchange
from proxy.pipeline.facade import Facade
from proxy.pnr import dashed
from proxy.store.base import OutboxPart, OutboxTransaction, PartRequest
from proxy.timeutil import instant
from proxy.types import FhirDict, Principal, Query

TASK_SYSTEM = "urn:fhir-facade:write"  # Task.identifier: the write's id


@dataclass(frozen=True, slots=True)
class Written:
    """A write's answer: the transaction-response Bundle, and the Task that follows its delivery."""

    response: FhirDict
    task_id: str


async def write(facade: Facade, x: Exchange, body: bytes) -> Written:
    principal = x.principal
    assert isinstance(principal, Principal)
    if principal.audience.is_patient:
        raise FhirError(403, "forbidden", "The patient writes no clinical data through the facade")
    store, delivery, writes = facade.store, facade.delivery, facade.write_mappings
    if store is None or delivery is None or writes is None:
        raise FhirError(501, "not-supported", "Writing is not configured on this server")
    now = facade.clock.time()
    try:
        valid = validate_transaction(body, patient_ids=lambda i: facade.ids.resolve(i) is not None, now=now)
    except TransactionInvalid as exc:
        raise FhirError(400, "invalid", "The Bundle is not valid", issues=tuple(exc.issues)) from None
    patient = facade.ids.resolve(valid.patient_id)
    assert patient is not None  # (validated: a Patient of this server)
    types = frozenset(e.resource_type for e in valid.entries)
    x.query = Query(interaction="create", resource_types=types, patient=patient)  # (audited so)
    # A writer reads the Patient it writes about: what a write tells (whether each target took it,
    # and so whether a target knows the patient) is then nothing a read does not tell it already.
    require(principal, "r", "Patient", patient.pnr)
    targets: dict[str, tuple[str, ...]] = {}
    for rtype in sorted(types):
        require(principal, "c", rtype, patient.pnr)
        targets[rtype] = facade.settings.writes.targets(principal.audience.name, rtype)
        if not targets[rtype]:
            raise FhirError(403, "forbidden", f"This client may not write {rtype} resources")
    txn = OutboxTransaction(
        id=uuid.uuid4().hex,
        identifier=_writers_own(facade, principal, valid.identifier),
        digest=valid.digest,
        patient=patient.fhir_id,
        created=now,
        entries=orjson.dumps(
            {
                "writer": _writer_of(principal),
                "identifier": valid.identifier,
                "entries": [[e.full_url, e.resource_type, e.identifier] for e in valid.entries],
            }
        ),
        parts=_parts(facade, principal, valid, targets, patient.pnr),
    )
    stored = await store.enqueue(txn)
    if stored.digest != txn.digest:  # (the writer's own identifier: another writer's never meets it)
        raise FhirError(409, "conflict", "You sent another Bundle under that Bundle.identifier before")
    delivery.nudge()
    settled = await delivery.settled(stored.id, facade.settings.outbox.wait_s) or stored
    x.resource = f"Task/{stored.id}"
    return Written(transaction_response(settled), stored.id)


def _parts(
    facade: Facade,
    principal: Principal,
    valid: ValidTransaction,
    targets: dict[str, tuple[str, ...]],
    pnr: str,
) -> tuple[OutboxPart, ...]:
    """One part per target: its requests in Bundle order (a visit before what refers to it)."""
    assert facade.write_mappings is not None
    requests: dict[str, list[PartRequest]] = {}
    problems: list[FhirDict] = []
    writes = facade.write_mappings
    for at, entry in enumerate(valid.entries):
        for target in targets[entry.resource_type]:
            try:
                mapping = writes.select(target, entry.resource)
                if mapping is None:
                    problems.append(
                        _issue(at, "not-supported", f"{target} cannot take this {entry.resource_type}")
                    )
                    continue
                r = mapping.render(entry.resource, _context(facade, principal, target, pnr, entry.identifier))
            except WriteMappingError as exc:
                problems.append(_issue(at, "value", f"{target}: {exc}"))
                continue
            key = f"{entry.identifier}-{target}"
            headers = tuple(sorted(r.headers.items()))
            requests.setdefault(target, []).append(PartRequest(r.method, r.path, headers, r.body, key))
    if problems:
        raise FhirError(400, "invalid", "The Bundle cannot be written", issues=tuple(problems))
    return tuple(
        OutboxPart(id=uuid.uuid4().hex, target=target, requests=tuple(reqs))
        for target, reqs in requests.items()
    )


def _context(facade: Facade, principal: Principal, target: str, pnr: str, minted: str) -> dict[str, str]:
    return {
        **dict(facade.settings.backend(target).vars),
        "pnr": pnr,
        "pnr_dash": dashed(pnr),
        "identifier": minted,
        "writer_hsa_id": principal.user_hsa_id or "",
        "writer_unit_hsa_id": principal.care_unit_hsa_id or "",
        "writer_provider_hsa_id": principal.care_provider_hsa_id or "",
        "writer_name": principal.user_name or "",
    }


def _issue(at: int, code: str, text: str) -> FhirDict:
    return issue(code, text, expression=f"Bundle.entry[{at}].resource")


def _writers_own(facade: Facade, principal: Principal, identifier: str) -> str:
    """The outbox's key of a Bundle.identifier: the writer's own (issuer, audience, client, user),
    keyed with the deployment's secret — one writer's identifiers never meet another's, so a used
    identifier is no oracle, and nobody can take another's first."""
    assert facade.resource_ids is not None
    who = "\n".join((*_writer_of(principal), identifier))
    return f"{TASK_SYSTEM}|{facade.resource_ids.digest('write', who)}"


def _writer_of(principal: Principal) -> list[str]:
    """Who writes: the token's issuer (a ``sub`` is unique per issuer only), audience, client and
    subject."""
    return [principal.issuer, principal.audience.name, principal.client_id, principal.subject]


def written_by(txn: OutboxTransaction, principal: Principal) -> bool:
    """Whether ``principal`` wrote ``txn`` (only the writer follows its delivery: to anyone else a
    Task is as unknown as one that does not exist)."""
    return list(orjson.loads(txn.entries)["writer"]) == _writer_of(principal)


# ---- what the client is told ----------------------------------------------------------------------


def transaction_response(txn: OutboxTransaction) -> FhirDict:
    """Each entry 201 when every target has it, else 202 with an OperationOutcome naming the
    targets still pending (and any that refused it)."""
    pending = sorted(p.target for p in txn.parts if p.state == PENDING)
    parked = sorted(p.target for p in txn.parts if p.state == PARKED)
    entries = []
    for _full_url, rtype, minted in orjson.loads(txn.entries)["entries"]:
        response: FhirDict = {"status": "201 Created" if not pending and not parked else "202 Accepted"}
        if pending or parked:
            issues = [issue("incomplete", f"{t}: pending delivery", severity="warning") for t in pending]
            issues += [issue("processing", f"{t}: not delivered") for t in parked]
            response["outcome"] = outcome(issues)
        # (a search finding the written record, once delivered: its id is the read side's)
        response["location"] = f"{rtype}?patient={txn.patient}&identifier={WRITTEN_SYSTEM}|{minted}"
        entries.append({"response": response})
    return {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "link": [{"relation": "related", "url": f"Task/{txn.id}"}],
        "entry": entries,
    }


def task(txn: OutboxTransaction, patient_ref: str, now: float) -> FhirDict:
    """The delivery status of a write: one output per target — delivered, pending with its next
    attempt, or refused with why."""
    states = {p.state for p in txn.parts}
    status = "completed" if states == {DELIVERED} else "failed" if PARKED in states else "in-progress"
    outputs = []
    for p in sorted(txn.parts, key=lambda p: p.target):
        if p.state == DELIVERED:
            text = f"delivered at {instant(p.delivered_at or 0.0)}"
        elif p.state == PENDING:
            text = f"pending (attempts: {p.attempts}; next attempt at {instant(p.next_attempt)})"
            if p.reason:
                text += f"; last: {p.reason}"
        else:  # parked: refused by the target, or given up on
            text = f"not delivered: {p.reason or 'no reason recorded'}"
        outputs.append({"type": {"text": p.target}, "valueString": text})
    identifier_system, _, identifier_value = str(orjson.loads(txn.entries)["identifier"]).partition("|")
    return {
        "resourceType": "Task",
        "id": txn.id,
        "identifier": [{"system": TASK_SYSTEM, "value": txn.id}],
        "groupIdentifier": {"system": identifier_system, "value": identifier_value},  # the Bundle's
        "status": status,
        "intent": "order",
        "code": {"text": "deliver a written transaction to each target"},
        "for": {"reference": patient_ref},
        "authoredOn": instant(txn.created),
        "lastModified": instant(now),
        "output": outputs,
    }
