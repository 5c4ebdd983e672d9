"""The access decision: what this principal may ask about, decided before any backend is asked.

* Scopes limit resource types: a type outside the principal's SMART scopes is never fanned out.
  Searching such a type is a 403 (it says nothing about any patient); ``$everything`` quietly narrows
  to the types the scopes allow.
* A patient reads only their own record. For any other patient the answer is exactly the answer for
  a patient nobody knows — same status, same body — and it is given without asking the backends, so
  existing and non-existing others also take the same time.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.fhir.errors import FhirError
from proxy.types import Principal, Query


@dataclass(frozen=True, slots=True)
class AccessDecision:
    types: frozenset[str]  # the resource types that may be fetched and shown
    as_unknown: bool  # answer as if the patient did not exist (without asking anyone)


def decide(principal: Principal, query: Query) -> AccessDecision:
    if query.interaction != "everything":
        denied = sorted(t for t in query.resource_types if not principal.may_read(t))
        if denied:
            raise FhirError(403, "forbidden", f"The token's scopes do not permit reading {', '.join(denied)}")
    types = frozenset(t for t in query.resource_types if principal.may_read(t))
    other_patient = (
        principal.audience == "patient"
        and query.patient is not None
        and query.patient.pnr != principal.patient_pnr
    )
    return AccessDecision(types=types, as_unknown=other_patient)
