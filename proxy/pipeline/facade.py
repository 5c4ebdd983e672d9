"""What every request's walk is given (``Facade``, built once at start-up) and what it gives back
(``Answer``, before paging and rendering)."""

from __future__ import annotations

from dataclasses import dataclass, field

from proxy.cache import SourceCache
from proxy.clock import SYSTEM_CLOCK, Clock
from proxy.fanout.client import BackendClient
from proxy.fanout.engagement import EngagementIndex
from proxy.fhir.ids import PatientIds, ResourceIds
from proxy.hooks import Hooks
from proxy.mapping.pool import MapPool
from proxy.mapping.registry import MappingSet
from proxy.mapping.write import WriteMappings
from proxy.paging import SnapshotStore
from proxy.pipeline.delivery import Delivery
from proxy.pipeline.record_dates import RecordDates
from proxy.redact.policy import Policy
from proxy.settings import Settings
from proxy.slack import SlackQueue
from proxy.store.base import Store
from proxy.types import FhirDict, SourceOutcome, Withheld


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
    pages: SnapshotStore | None = None  # page snapshots (proxy.paging); None: every page walks
    clock: Clock = SYSTEM_CLOCK  # (the snapshots' lifetime)
    write_mappings: WriteMappings | None = None  # FHIR -> each target's dialect (proxy.pipeline.write)
    delivery: Delivery | None = None  # this worker's outbox delivery loop (proxy.pipeline.delivery)
    # the deployment's keyed hash (the resource ids'): a write's Bundle.identifier is kept per writer
    resource_ids: ResourceIds | None = None
    # when records were dated, by id, as last mapped: narrows a read by id (proxy.pipeline.record_dates)
    record_dates: RecordDates | None = None
    # long answers mapped in processes beside the loop (proxy.mapping.pool); None: in the loop
    map_pool: MapPool | None = None


@dataclass(frozen=True, slots=True)
class Answer:
    resources: list[FhirDict]  # every match, in the documented order, before paging
    outcomes: list[SourceOutcome]  # one per source asked (or skipped, with why), degraded or not
    # True: some source holds something about the patient; False: every source answered and none
    # does; None: nothing arrived, but a source did not answer, so nobody can say.
    patient_known: bool | None
    # why records of the requested types were not shown (PDL: no consent, blocked, no known care
    # provider), whatever the filters; never for the patient
    withheld: frozenset[Withheld] = field(default_factory=frozenset)
    # a page read from a snapshot (``proxy.paging``) holds only the resources around it:
    # ``resources[0]`` is the whole answer's ``start``-th, and the whole had ``size`` (None: whole)
    start: int = 0
    size: int | None = None

    @property
    def total(self) -> int:
        """How many resources the whole answer has (``Bundle.total``)."""
        return len(self.resources) if self.size is None else self.size

    def page(self, offset: int, count: int) -> list[FhirDict]:
        """The ``count`` resources from the whole answer's ``offset``-th."""
        at = offset - self.start
        return self.resources[at : at + count] if at >= 0 else []

    @property
    def degraded(self) -> list[str]:
        """The sources whose status is degraded (the AuditEvent names them as failed)."""
        return [o.source for o in self.outcomes if o.status.degraded]
