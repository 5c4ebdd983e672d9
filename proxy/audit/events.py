"""The access log: one AuditEvent (IHE BALP shape) per request that touches patient data, written
durably *before* the answer leaves.

A request that asks the backends logs its access as *begun* (``begun_event``: who, which patient,
what, why, when) as soon as it is decided, so the commit runs while the backends answer; the answer
leaves only once that event is committed. The outcome and what was disclosed (``completed``) then
replace it in the store, after the answer. Other requests log the completed event before they answer.

The events are group-committed by ``proxy.store`` (SQLite or PostgreSQL). If the store cannot take
a write that must precede the answer, the request gets 503 and discloses nothing. The log holds who,
which patient, what (interaction, resource types, sources, how many resources each disclosed),
purpose (TREAT, ETREAT for emergency access, PATRQT for the patient), outcome, time and the request
id — never a token, never clinical text.

A patient's event names which patient asked — pseudonymously: the facade's opaque id of that
patient (an auditor resolves it with the deployment's key) and the identity provider's subject and
issuer. A patient's request about another patient's record (answered exactly as for a patient
nobody knows) is logged against that record as the asker's refused attempt: an auditor reading the
record's log finds it; the patient's own view never shows it (``Store.audit_events(as_patient=True)``).
A request for emergency access is logged with purpose ETREAT and its reason code whether it was
granted or refused (refused: outcome 8, and ``outcomeDesc`` says why).

``patient_view`` is what a patient reads of their own log: who (care unit, provider, role), when,
what kind of access, purpose — nothing about what was read or hidden.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime

from proxy.audience import Audiences
from proxy.hsa import HSA_SYSTEM
from proxy.store.base import NO_OUTCOME, AuditRecord
from proxy.types import FhirDict, Principal

ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
BALP_ENTITY = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
BEGUN = "begun; no outcome recorded (if it stays so, the outcome was lost: read as possibly disclosed)"
# The outcomeDesc of a patient's request about another patient's record (the asker was answered as
# for an unknown patient, whatever the status says).
PROBE = "refused: a patient's request about another patient's record, answered as for an unknown patient"
# The emergency-reason detail of a request whose X-Emergency-Access is not a reason code (its text
# is never logged).
NOT_A_REASON = "not-a-reason-code"
ACTION = {"create": "C", "update": "U", "everything": "E", "summary": "E"}  # else R (read, search)


def begun_event(
    principal: Principal,
    *,
    interaction: str,
    patient_id: str,
    resource_types: list[str],
    request_id: str,
    emergency_reason: str | None = None,
    asker_id: str | None = None,
) -> FhirDict:
    """The AuditEvent (IHE BALP: type rest, subtype the interaction) of an access that has begun:
    who, which patient, what was asked for, why, when. It has no outcome yet: ``completed`` adds it.
    An event stored in this form says the access began and its outcome was never recorded (the
    process stopped in between, or the store failed that write) — to be read as "may have disclosed".
    ``emergency_reason``: emergency access was asked for (granted or not), with this reason code.
    ``asker_id``: the opaque Patient id of the asking patient (patient audience)."""
    purpose = "ETREAT" if emergency_reason else principal.audience.purpose
    who: list[FhirDict] = [
        {
            "type": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}
                ]
            },
            "who": {"identifier": {"system": HSA_SYSTEM, "value": principal.user_hsa_id}}
            if principal.user_hsa_id
            else _patient_agent(principal, asker_id),
            "requestor": True,
            "role": [{"coding": [{"system": "urn:fhir-facade:audience", "code": principal.audience.name}]}],
            "purposeOfUse": [{"coding": [{"system": ACT_REASON, "code": purpose}]}],
        },
        {
            "type": {
                "coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110150"}]
            },
            "who": {"display": principal.client_id},
            "requestor": False,
        },
    ]
    if principal.care_unit_hsa_id:
        who[0]["extension"] = [
            {"url": f"urn:fhir-facade:{kind}", "valueIdentifier": {"system": HSA_SYSTEM, "value": hsa_id}}
            for kind, hsa_id in (
                ("care-unit", principal.care_unit_hsa_id),
                ("care-provider", principal.care_provider_hsa_id),
            )
            if hsa_id
        ]
    return {
        "resourceType": "AuditEvent",
        "id": uuid.uuid4().hex,
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "subtype": [
            {
                "system": "http://hl7.org/fhir/restful-interaction",
                "code": interaction,
            }
        ],
        "action": ACTION.get(interaction, "R"),
        "recorded": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "outcomeDesc": BEGUN,
        "purposeOfEvent": [{"coding": [{"system": ACT_REASON, "code": purpose}]}],
        "agent": who,
        "source": {"observer": {"display": "fhir-facade"}},
        "entity": [
            {
                "what": {"reference": f"Patient/{patient_id}"},
                "type": {"system": ENTITY_TYPE, "code": "1"},
                "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1"},
            },
            {
                "type": {"system": ENTITY_TYPE, "code": "2"},
                "description": "resource types: " + ",".join(sorted(resource_types)),
                **(
                    {"detail": [{"type": "emergency-reason", "valueString": emergency_reason}]}
                    if emergency_reason
                    else {}
                ),
            },
            {
                "type": {"system": BALP_ENTITY, "code": "XrequestId"},
                "what": {"identifier": {"value": request_id}},
            },
        ],
    }


def _patient_agent(principal: Principal, asker_id: str | None) -> FhirDict:
    """Which patient asked, pseudonymously: the facade's opaque id of them, and the identity
    provider's subject (an auditor resolves either; neither is the personnummer)."""
    return {
        **({"reference": f"Patient/{asker_id}"} if asker_id else {}),
        "identifier": {"system": principal.issuer, "value": principal.subject},
        "display": "the patient",
    }


def completed(
    event: FhirDict,
    *,
    status: int,
    disclosed: Mapping[str, int],
    degraded: list[str],
    refused: str | None = None,
    resource: str | None = None,
) -> FhirDict:
    """The begun ``event`` with its outcome (BALP 0 success, 4 partial, 8 refused or not found, 12
    failed) and, for an answer that was given, how many resources each source disclosed and which
    sources failed. Same id and time: it replaces the begun event in the store. ``refused``: the
    access was refused whatever the answer's status (outcome 8, or 12 if the request failed), and
    why (``outcomeDesc``). ``resource``: the (versioned) reference of a resource the request wrote."""
    outcome = 0 if status < 400 and not degraded else 4 if status < 400 else 8 if status < 500 else 12
    if refused is not None:
        outcome = max(outcome, 8)
    what = event["entity"][1]
    details = [
        *(
            {"type": f"disclosed:{src}", "valueString": str(n)}
            for src, n in (sorted(disclosed.items()) if status < 400 and refused is None else ())
        ),
        *({"type": f"failed:{src}", "valueString": "1"} for src in sorted(degraded)),
        *what.get("detail", ()),
    ]
    done = {k: v for k, v in event.items() if k != "outcomeDesc"}
    done["outcome"] = str(outcome)
    if refused is not None:
        done["outcomeDesc"] = refused
    done["entity"] = [
        event["entity"][0],
        {**what, "detail": details} if details else what,
        *(
            [{"what": {"reference": resource}, "type": {"system": ENTITY_TYPE, "code": "2"}}]
            if resource
            else []
        ),
        *event["entity"][2:],
    ]
    return done


def record(event: FhirDict, principal: Principal, patient_pnr: str, request_id: str) -> AuditRecord:
    return AuditRecord(
        event_id=event["id"],
        recorded=event["recorded"],
        patient_pnr=patient_pnr,
        audience=principal.audience.name,
        user_hsa_id=principal.user_hsa_id,
        outcome=int(event["outcome"]) if "outcome" in event else NO_OUTCOME,
        request_id=request_id,
        event=event,
        asker_pnr=principal.patient_pnr if principal.audience.is_patient else None,
    )


def patient_view(event: FhirDict, names: Mapping[str, str], audiences: Audiences) -> FhirDict:
    """What the patient reads of one event: when, who (care unit, provider, role), which kind of
    access, why, and whether it succeeded. Not the resource types, sources or counts, not the
    client application, not the user's id: nothing that tells what was read or hidden."""
    asker = event["agent"][0]
    role = asker["role"][0]["coding"][0]["code"]
    # (an HSA-id Identifier; a plain string in events stored by earlier versions)
    where = {
        e["url"]: e["valueIdentifier"]["value"] if "valueIdentifier" in e else e.get("valueString")
        for e in asker.get("extension", [])
    }
    unit, provider = where.get("urn:fhir-facade:care-unit"), where.get("urn:fhir-facade:care-provider")
    who = ", ".join(names.get(x, x) for x in (unit, provider) if x) or audiences.display(role, role)
    return {
        "resourceType": "AuditEvent",
        "id": event["id"],
        "type": event["type"],
        "subtype": event["subtype"],
        "action": event["action"],
        "recorded": event["recorded"],
        **({"outcome": event["outcome"]} if "outcome" in event else {}),
        "purposeOfEvent": event["purposeOfEvent"],
        "agent": [
            {
                "type": asker["type"],
                "who": {"display": who},
                "requestor": True,
                "role": [{"text": audiences.display(role)}],
            }
        ],
        "source": event["source"],
        "entity": [
            e for e in event["entity"] if e.get("what", {}).get("reference", "").startswith("Patient/")
        ],
    }
