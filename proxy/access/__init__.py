"""The access decision: what this principal may ask about, decided before any backend is asked.

* Scopes limit what may be done with each resource type (SMART v2 permissions, ``proxy.types``):
  a read by id needs ``r``, a search (GET or POST ``_search``) ``s``. ``$everything`` is a search of
  every type it returns: it quietly narrows to the types granted ``s`` (a type granted only ``r`` is
  left out); so is ``$summary`` (its sections say which types were left out). Asking for nothing
  the scopes grant — a search or read of a type without the permission, or an ``$everything`` with
  no type left — is a 403 whose OperationOutcome names the scope missing. Types outside the scopes
  are never fanned out.
* ``user/`` scopes cover every patient; ``patient/`` scopes only the token's launch patient. A care
  token asking about another patient is judged by its ``user/`` scopes alone (403 when they grant
  nothing asked for), so an unknown patient id is refused the same way, and nothing is learnt.
* A patient reads only their own record. For any other patient the answer is exactly the answer for
  a patient nobody knows — same status, same body — and it is given without asking the backends, so
  existing and non-existing others also take the same time. (Their scopes are judged as for their
  own record: a refusal says nothing about the other patient.)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from proxy.audience import Audience
from proxy.fhir.errors import FhirError
from proxy.types import Permission, Principal, Query

# The permission each interaction needs (SMART v2). $everything: a search of every type it returns.
NEEDS: dict[str, Permission] = {"read": "r", "search-type": "s", "everything": "s", "summary": "s"}
_VERB = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}
_V1 = {"c": "write", "r": "read", "u": "write", "d": "write", "s": "read"}


@dataclass(frozen=True, slots=True)
class AccessDecision:
    types: frozenset[str]  # the resource types that may be fetched and shown
    as_unknown: bool  # answer as if the patient did not exist (without asking anyone)
    principal: Principal
    permission: Permission  # what the query needs of each type it fetches
    patient_pnr: str | None  # the patient the scopes are judged for

    @property
    def audience(self) -> Audience:
        """Who asks: its policy (by ``audience.name``) decides what of the answer is shown."""
        return self.principal.audience

    @property
    def under_pdl(self) -> bool:
        """Whether the PDL rules (consents, blocks, emergency access: ``proxy.access.pdl``) decide
        which records are read: for every audience but the patient, who reads all of their own."""
        return not self.principal.audience.is_patient

    def permits(self, resource_type: str) -> bool:
        """Whether the scopes let resources of this type be fetched: to show them, or to vouch for
        a reference to them (with the same permission the query needs)."""
        return self.principal.may(self.permission, resource_type, self.patient_pnr)


def probing(principal: Principal, patient_pnr: str) -> bool:
    """A patient asking about someone else's record: answered exactly as for a patient nobody
    knows (``AccessDecision.as_unknown``), and logged as that asker's refused attempt."""
    return principal.audience.is_patient and principal.patient_pnr != patient_pnr


def judged_for(principal: Principal, patient_pnr: str | None) -> str | None:
    """The patient whose scopes decide a request about ``patient_pnr``: the patient audience is
    judged as for its own record (another patient's answer is the unknown patient's, decided
    apart), the care audiences for the patient asked about (None: one the facade cannot name)."""
    return principal.patient_pnr if principal.audience.is_patient else patient_pnr


def missing_scope(
    principal: Principal, permission: Permission, types: Iterable[str], patient_pnr: str | None
) -> FhirError:
    """The 403 for a request the scopes do not cover: it names the scope that would (never a token
    value, never anything about the patient). ``types`` empty: an ``$everything`` left with none."""
    names = sorted(types)
    ctx = principal.audience.scope_context
    if names:
        what = ", ".join(names)
        needed = ", ".join(f"{ctx}/{t}.{permission}" for t in names)
    else:
        what, needed = "any type $everything returns", f"{ctx}/<type>.{permission}"
    message = (
        f"The token's scopes do not permit {_VERB[permission]} ({permission}) of {what}: "
        f"that needs the scope {needed} or {ctx}/*.{permission} (SMART v1: .{_V1[permission]})"
    )
    if (
        not principal.audience.is_patient
        and patient_pnr != principal.launch_pnr
        and any(s.context == "patient" for s in principal.scopes)
    ):
        message += "; the token's patient/ scopes cover only its launch patient"
    return FhirError(403, "forbidden", message)


def require(
    principal: Principal, permission: Permission, resource_type: str, patient_pnr: str | None
) -> None:
    """403 (``missing_scope``) unless the scopes grant ``permission`` on ``resource_type`` for a
    request about ``patient_pnr`` (judged as ``judged_for`` says)."""
    pnr = judged_for(principal, patient_pnr)
    if not principal.may(permission, resource_type, pnr):
        raise missing_scope(principal, permission, (resource_type,), pnr)


def decide(principal: Principal, query: Query) -> AccessDecision:
    permission = NEEDS[query.interaction]
    pnr = judged_for(principal, query.patient.pnr if query.patient is not None else None)
    types = frozenset(t for t in query.resource_types if principal.may(permission, t, pnr))
    if query.interaction in ("everything", "summary"):  # narrowed to the types granted
        if not types:
            raise missing_scope(principal, permission, (), pnr)
    elif types != query.resource_types:
        raise missing_scope(principal, permission, query.resource_types - types, pnr)
    other_patient = query.patient is not None and probing(principal, query.patient.pnr)
    return AccessDecision(
        types=types, as_unknown=other_patient, principal=principal, permission=permission, patient_pnr=pnr
    )
