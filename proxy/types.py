"""The shared value types that travel along the request pipeline.

    fhir/ parse -> Query -> fanout/ -> SourceResult per backend -> mapping/ -> MappedResource
    -> merge/ -> list[MappedResource] -> fhir/ Bundle

Every type here is plain data (frozen dataclasses, dicts, tuples): no stage holds a reference
back into an earlier one, and the hot path never touches pydantic models.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from proxy.audience import Audience

FhirDict = dict[str, Any]


# The FHIR resource types the facade serves: what a mapping may make, and what config may name.
SUPPORTED_TYPES = frozenset(
    {
        "Patient",
        "Condition",
        "MedicationStatement",
        "MedicationAdministration",
        "Procedure",
        "Flag",
        "AllergyIntolerance",
        "Observation",
        "Immunization",
        "Encounter",
        "CarePlan",
        "DocumentReference",
    }
)


class Withheld(enum.Enum):
    """Why PDL kept records of the requested types from this asker (the hint; never for the patient)."""

    CONSENT = "consent-required"  # another provider's record, no consent
    BLOCKED = "blocked"  # behind the patient's block
    UNATTRIBUTED = "provider-unknown"  # care documentation whose care provider is not known


class SourceStatus(enum.Enum):
    """How one backend answered, in the spirit of NTjP's ProcessingStatus."""

    OK = "ok"  # answered (possibly with no records)
    TIMEOUT = "timeout"  # no complete answer within its budget
    ERROR = "error"  # answered with an error status, or the connection failed
    INVALID = "invalid"  # answered 2xx, but the body could not be parsed or mapped
    UNAVAILABLE = "unavailable"  # not asked: its circuit breaker is open after repeated failures
    CACHED = "cached"  # answered from the cache, fresh (NTjP: DataFromCache)
    STALE = "stale"  # the backend failed; an older cached answer stands in (DataFromCacheSynchFailed)
    SKIPPED = "skipped"  # not asked: its lookup said "unknown patient" a moment ago (engagement index)
    # not asked in time, or not heard in time: the facade itself was overloaded (its own queue for a
    # connection, or its event loop, held the request up); its data is missing, and it is not the
    # source's fault (never counted by its breaker)
    OVERLOADED = "overloaded"

    @property
    def degraded(self) -> bool:
        return self not in (SourceStatus.OK, SourceStatus.CACHED, SourceStatus.SKIPPED)


@dataclass(frozen=True, slots=True)
class PatientRef:
    """The patient a request is about: the personnummer (or samordningsnummer) and the opaque FHIR id."""

    pnr: str
    fhir_id: str
    system: str


@dataclass(frozen=True, slots=True)
class DateParam:
    """One FHIR date search value: prefix + the half-open instant range [lo, hi) in UTC epoch seconds."""

    prefix: str
    lo: float
    hi: float


@dataclass(frozen=True, slots=True)
class TokenParam:
    """One FHIR token search value. system None = any system; code None = any code in that system."""

    system: str | None
    code: str | None


@dataclass(frozen=True, slots=True)
class SearchFilter:
    """A parsed search parameter: name, and values that are OR-ed (a comma list in one occurrence).

    Several SearchFilters with the same name are AND-ed, as the FHIR spec says for repeated parameters.
    """

    name: str
    kind: str  # "token" | "date"
    values: tuple[TokenParam | DateParam, ...]


@dataclass(frozen=True, slots=True)
class Query:
    """A parsed FHIR read or search: what to fetch, how to filter, which page to return."""

    interaction: str  # "read" | "search-type" | "everything" | "summary"
    resource_types: frozenset[str]  # the types whose mappings are fanned out to
    patient: PatientRef | None
    resource_id: str | None = None  # for "read"
    filters: tuple[SearchFilter, ...] = ()
    since: float | None = None  # $everything _since, epoch seconds
    count: int = 50
    offset: int = 0
    summary_count: bool = False
    # the request's own parameters, normalised, that were actually used (for self/next links)
    used_params: tuple[tuple[str, str], ...] = ()
    page_token: str | None = None  # a later page: the first page's snapshot (proxy/paging.py)


@dataclass(frozen=True, slots=True)
class SourceResult:
    """How one backend's share of a query went. Its answer bodies (raw, audience-free) are not kept
    here: fan-out hands each on as soon as it has arrived (``proxy.fanout.client.OnAnswer``)."""

    source: str
    status: SourceStatus
    latency_ms: float = 0.0
    detail: str = ""  # a short, non-sensitive description of what went wrong
    # its patient lookup, and every other request of the run, said positively "unknown patient"
    unknown_patient: bool = False
    # degraded by an answer cut off mid-way (the connection closed, or past the answer cap): what
    # arrived whole of it was handed on, the rest is missing
    partial: bool = False


class MappedResource(NamedTuple):
    """One FHIR resource produced by a mapping, with the data merge and sort need beside it.

    Immutable, like the resource itself once mapped (the cache shares both): a stage that changes a
    resource makes a new one (``_replace``), with ``refs`` to match (redaction trusts them). A
    NamedTuple rather than a frozen dataclass: one is made per mapped resource, and a tuple is made
    in one step where a frozen dataclass sets each field through ``object.__setattr__``."""

    resource: FhirDict
    source: str
    mapping: str  # the mapping that built it, "<backend>/<file stem>"
    # "<resource type>|<producing system>|<record id>" (a Patient: "Patient|<pnr>"): the same fact in
    # several sources shares it
    origin_key: str
    priority: int  # the source's rank in merge.source_priority, lower wins
    # Facts read once when the resource is mapped (and cached with it), so that merge and redaction,
    # which run after the last backend answer, need not walk the resource again:
    refs: tuple[str, ...]  # every distinct ``reference`` in it, its contained resources' too
    clinical_time: float | None = None  # the start of its clinical date, for the answer's order
    care_provider: str | None = None  # HSA-id of the care provider that owns the record (for PDL)
    care_unit: str | None = None  # HSA-id of the care unit


@dataclass(frozen=True, slots=True)
class SourceOutcome:
    """How one source took part in an answer — every source asked or skipped, degraded or not —
    reported in the Bundle as an OperationOutcome entry (proxy.fhir.bundle.source_outcome)."""

    source: str
    status: SourceStatus
    detail: str
    latency_ms: float = 0.0  # how long it took to answer (0: not asked now)
    # degraded, and an answer of it was cut off mid-way: what arrived whole of it is in the answer
    # (before redaction: the flag comes from how the answer was cut, never from what it held)
    partial: bool = False


# A SMART v2 permission: create, read (by id), update, delete, search.
Permission = Literal["c", "r", "u", "d", "s"]


class Scope(NamedTuple):
    """One permission a token's scopes grant: ("user", "Condition", "s"), ("patient", "*", "r")."""

    context: str  # "patient" (only about the token's launch patient) | "user" (any patient)
    resource_type: str  # a resource type, or "*"
    permission: Permission


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is asking, from a verified token. Never holds the token itself."""

    audience: Audience  # one of the configured audiences (proxy.audience); its name: ``audience.name``
    subject: str  # the token's `sub`
    client_id: str  # the client application (`client_id` or `azp`)
    issuer: str
    # what the SMART scopes grant (v1 scopes expanded to v2 permissions)
    scopes: frozenset[Scope]
    user_hsa_id: str | None = None
    care_unit_hsa_id: str | None = None
    care_provider_hsa_id: str | None = None
    user_name: str | None = None  # the token's name claim (care audiences; optional): stamped on writes
    patient_pnr: str | None = None  # set for the patient audience: the only record it may read
    # the SMART launch patient (the token's `patient` claim), as a personnummer: the only patient
    # `patient/` scopes cover. For the patient audience always their own (= patient_pnr).
    launch_pnr: str | None = None

    def may(self, permission: Permission, resource_type: str, patient_pnr: str | None) -> bool:
        """Whether the scopes grant ``permission`` on ``resource_type`` about the patient with
        personnummer ``patient_pnr`` (None: a patient the facade cannot name). ``user/`` scopes
        cover every patient, ``patient/`` scopes only the launch patient."""
        for s in self.scopes:
            if s.permission == permission and s.resource_type in ("*", resource_type):
                if s.context == "user" or (patient_pnr is not None and patient_pnr == self.launch_pnr):
                    return True
        return False
