"""The facade's durable state: the access log (AuditEvents) and the patients' consents and blocks.

Two stores with one interface: ``SqliteStore`` (aiosqlite, WAL; the embedded default) and
``PostgresStore`` (asyncpg; for several workers or hosts). ``open_store(settings)`` picks one.

Audit writes are group-committed: concurrent requests queue their events, one writer task stores
whatever is queued in one transaction and then releases every waiting request. A request answers
only once its access is logged (its event, or its begun event, committed); if the store cannot take
it, ``StoreUnavailable`` is raised and the request must disclose nothing. An event submitted again
with the same id replaces the stored one while that one is begun (an access logged as begun, then
completed); a completed event stays. Reads of the access log see every event submitted before them.
Consents are few and written one at a time. Page snapshots (``proxy.paging``) are short-lived
rows of compressed answer parts, found by a key that is a hash; the expired ones are swept on a
write now and then.

The outbox keeps each accepted write (``OutboxTransaction``: one part per target, each with the
requests that deliver it) until every target has it: enqueued in one database transaction before
the answer, then claimed part by part under a lease by whichever worker (process or host) is free.
A worker that dies mid-delivery leaves its lease to run out; the part is claimed again, and the
target's idempotency key makes the second send harmless.
"""

from __future__ import annotations

import abc
import asyncio
import base64
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import orjson

from proxy.hooks import AuditCommitted, AuditQueued, Hooks
from proxy.types import FhirDict

# ``Store.consents_at`` in SQL (PostgreSQL's placeholders; SQLite numbers them ?1, ?2): one row per
# consent, or one of NULLs when there is none — each led by the patient's snapshot generation
CONSENTS_AT = (
    "SELECT COALESCE((SELECT generation FROM page_generation WHERE patient = $1), 0),"
    " c.id, c.patient_pnr, c.status, c.version, c.resource"
    " FROM (SELECT 1) AS one LEFT JOIN consent AS c ON c.patient_pnr = $2 ORDER BY c.seq"
)

if TYPE_CHECKING:
    from proxy.settings import StoreSettings

log = logging.getLogger("proxy.store")  # the name it logged under before the module moved


NO_OUTCOME = -1  # the outcome column of an event logged as begun (the column is NOT NULL)
SWEEP_EVERY_S = 60.0  # expired page snapshots are deleted this often (on a write, by the writer)


class StoreUnavailable(Exception):
    """The store could not take (or give) the data: the request must not disclose anything."""


@dataclass(frozen=True, slots=True)
class AuditRecord:
    event_id: str
    recorded: str
    patient_pnr: str
    audience: str
    user_hsa_id: str | None
    outcome: int  # BALP: 0 success, 4 minor failure (partial), 8 serious (refused/not found), 12 major
    request_id: str
    event: FhirDict
    # the patient who asked (patient audience only): the patient's own view of their log leaves out
    # every other patient's attempt on it (``Store.audit_events(as_patient=True)``)
    asker_pnr: str | None = None

    def row(self) -> tuple[object, ...]:
        """The values of the audit_event columns id … request_id, asker_pnr, event (the order the
        stores insert them in)."""
        return (
            self.event_id,
            self.recorded,
            self.patient_pnr,
            self.audience,
            self.user_hsa_id,
            self.outcome,
            self.request_id,
            self.asker_pnr,
            self.event,
        )


@dataclass(frozen=True, slots=True)
class ConsentRow:
    """A stored Consent: the resource as the facade keeps it, with the columns it is found by."""

    id: str
    patient_pnr: str
    status: str
    version: int
    resource: FhirDict


PartState = Literal["pending", "delivered", "parked"]


@dataclass(frozen=True, slots=True)
class PartRequest:
    """One HTTP request of a part, as rendered: sent again as it is after a restart."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    idempotency_key: str


@dataclass(frozen=True, slots=True)
class OutboxPart:
    """What one target must be sent of a transaction, and how far its delivery has come."""

    id: str
    target: str  # the backend's name
    requests: tuple[PartRequest, ...]
    state: PartState = "pending"
    attempts: int = 0  # deliveries begun: each claim counts one (a send that never reported too)
    next_attempt: float = 0.0  # epoch seconds: not claimed before
    reason: str | None = None  # why the last try failed (retry) or why the part was parked
    delivered_at: float | None = None


@dataclass(frozen=True, slots=True)
class OutboxTransaction:
    """An accepted write: the client's Bundle (by identifier and digest) and one part per target."""

    id: str  # the Task id (uuid hex)
    identifier: str  # Bundle.identifier "system|value": one transaction per identifier, ever
    digest: str  # sha256 hex of the Bundle as received (same identifier, other digest: a conflict)
    patient: str  # the opaque patient id
    created: float
    entries: bytes  # JSON the facade keeps about the entries (their types and minted ids)
    parts: tuple[OutboxPart, ...]


def encode_requests(requests: Sequence[PartRequest]) -> bytes:
    """A part's requests as one JSON column (bodies base64: they are bytes)."""
    return orjson.dumps(
        [
            [
                r.method,
                r.path,
                [list(h) for h in r.headers],
                base64.b64encode(r.body).decode(),
                r.idempotency_key,
            ]
            for r in requests
        ]
    )


def decode_requests(data: bytes) -> tuple[PartRequest, ...]:
    return tuple(
        PartRequest(m, p, tuple((str(k), str(v)) for k, v in h), base64.b64decode(b), key)
        for m, p, h, b, key in orjson.loads(data)
    )


def outbox_part(row: Sequence[Any]) -> OutboxPart:
    """An OutboxPart from the columns ``OUTBOX_PART_COLUMNS`` (both stores select them in this order)."""
    pid, target, requests, state, attempts, next_attempt, reason, delivered_at = row
    return OutboxPart(
        str(pid),
        str(target),
        decode_requests(bytes(requests)),
        state,
        int(attempts),
        float(next_attempt),
        reason,
        None if delivered_at is None else float(delivered_at),
    )


OUTBOX_PART_COLUMNS = "id, target, requests, state, attempts, next_attempt, reason, delivered_at"


def part_row(txn_id: str, p: OutboxPart) -> tuple[object, ...]:
    """A part as both stores insert it: (id, txn_id, target, requests, state, attempts,
    next_attempt, reason, delivered_at) — ``outbox_part``'s inverse, with its transaction."""
    requests = encode_requests(p.requests)
    return (p.id, txn_id, p.target, requests, p.state, p.attempts, p.next_attempt, p.reason, p.delivered_at)


def backoff(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Seconds to wait before the next try after ``attempt`` failed tries (1 after the first):
    exponential with full jitter — uniform in [0, min(cap, base * 2^(attempt-1))] — so that the
    parts a target's outage failed together do not all come back at once."""
    ceiling = min(cap_s, base_s * 2.0 ** min(max(attempt - 1, 0), 60))
    return rng.uniform(0.0, ceiling)


class Store(abc.ABC):
    """Shared by both stores: the group-commit writer for AuditEvents, and read-your-writes for
    the access log (a read waits for every event submitted before it)."""

    def __init__(self, *, max_batch: int = 500, drain_timeout_s: float = 5.0) -> None:
        self.max_batch = max_batch
        self.drain_timeout_s = drain_timeout_s
        # (event, its future) or (None, a flush marker's future)
        self._queue: asyncio.Queue[tuple[AuditRecord | None, asyncio.Future[None]]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._batch: list[tuple[AuditRecord | None, asyncio.Future[None]]] = []  # being written
        self.hooks = Hooks()  # queue depth and commit latency (the app passes its own)
        self._swept = 0.0  # when expired page snapshots were last deleted (the app's epoch seconds)

    async def open(self) -> None:
        await self._connect()
        self._writer = asyncio.create_task(self._write_batches(), name="audit-writer")
        self._writer.add_done_callback(self._writer_ended)

    def _writer_ended(self, writer: asyncio.Task[None]) -> None:
        """The writer broke on something unforeseen: nobody may wait for it (``close`` cancels it
        and sees to what is left itself)."""
        if not writer.cancelled():
            log.error("the audit writer stopped (%s)", type(writer.exception()).__name__)
            self._fail_waiting("the audit writer stopped")

    async def close(self) -> None:
        """Stop, once the events already submitted are stored; what is left after ``drain_timeout_s``
        fails (StoreUnavailable) and is logged by event id."""
        if self._writer is not None:
            if not self._writer.done():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.flush(), self.drain_timeout_s)
            self._writer.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await self._writer
            self._fail_waiting("audit store closed")
        await self._disconnect()

    def _fail_waiting(self, why: str) -> None:
        """Fail (and log by id) the batch being written and everything still queued."""
        left: dict[str, AuditRecord] = {}
        while not self._queue.empty():
            self._batch.append(self._queue.get_nowait())
        for record, done in self._batch:
            if not done.done():
                if isinstance(record, AuditRecord):
                    left[record.event_id] = record
                done.set_exception(StoreUnavailable(why))
        self._batch = []
        if left:
            _not_stored(why, left)

    def submit_audit(self, record: AuditRecord) -> asyncio.Future[None]:
        """Queue the event for the next group commit. An event with the id of a stored begun one
        (outcome ``NO_OUTCOME``) replaces it; a stored completed event is never replaced. The
        future is done once the event is committed, or fails with StoreUnavailable if it could not
        be; StoreUnavailable is raised at once if the writer is not running. A caller need not
        wait: every event that is not stored is logged, by id."""
        done = self._enqueue(record)
        done.add_done_callback(_retrieved)  # a failure nobody waits for is logged once, by the writer
        return done

    async def ping(self) -> None:
        """Raise unless the store can take the access log now: its writer runs and its database
        answers a trivial query (``/readyz``)."""
        if self._writer is None or self._writer.done():
            raise StoreUnavailable("the audit writer is not running")
        await self._ping()

    async def flush(self) -> None:
        """Wait until every event submitted before this call is committed (or has failed)."""
        await self._enqueue(None)

    def _enqueue(self, record: AuditRecord | None) -> asyncio.Future[None]:
        if self._writer is None or self._writer.done():
            if record is not None:
                _not_stored("the audit writer is not running", {record.event_id: record})
            raise StoreUnavailable("audit store is not running")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((record, done))
        if record is not None:
            self.hooks.emit(AuditQueued(self._queue.qsize()))
        return done

    async def _write_batches(self) -> None:
        while True:
            self._batch = batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            # one row per event id, the last submitted (a begun event completed in the same batch)
            latest = {r.event_id: r for r, _ in batch if r is not None}
            failed = False
            if latest:
                started = time.perf_counter()
                try:
                    await self._insert_audit(list(latest.values()))
                except Exception as exc:  # the store failed: every waiting request must refuse to disclose
                    _not_stored(f"audit write failed ({type(exc).__name__})", latest)
                    failed = True
                took = (time.perf_counter() - started) * 1000
                self.hooks.emit(AuditCommitted(len(latest), took, not failed, self._queue.qsize()))
            for record, done in batch:
                if done.done():
                    continue
                if failed and record is not None:
                    done.set_exception(StoreUnavailable("audit store failed"))
                else:
                    done.set_result(None)
            batch.clear()

    async def audit_events(
        self, patient_pnr: str, *, limit: int, offset: int, as_patient: bool = False
    ) -> tuple[int, list[FhirDict]]:
        """(how many events name the patient, one page of them, newest first). ``as_patient``: the
        patient's own view — without other patients' attempts on the record, and without patient
        events that do not say which patient asked (stored before the store recorded it), which
        may be such attempts; the count and the page both know nothing of them."""
        await self.flush()
        return await self._audit_events(patient_pnr, limit=limit, offset=offset, as_patient=as_patient)

    async def all_audit_events(self) -> list[FhirDict]:
        """Every stored event (for tests and exports; not on the request path)."""
        await self.flush()
        return await self._all_audit_events()

    # ---- what each store implements -------------------------------------------------------------

    @abc.abstractmethod
    async def _connect(self) -> None: ...

    async def _ping(self) -> None:
        """A trivial query (each store overrides it with ``SELECT 1``)."""
        await self.consent("")

    @abc.abstractmethod
    async def _disconnect(self) -> None: ...

    @abc.abstractmethod
    async def _insert_audit(self, records: list[AuditRecord]) -> None:
        """Store every record (distinct event ids) in one transaction, durably, or raise. A record
        whose event id is stored already replaces that row's outcome and event if the row is begun
        (outcome ``NO_OUTCOME``); a completed row stays as it is."""

    @abc.abstractmethod
    async def _audit_events(
        self, patient_pnr: str, *, limit: int, offset: int, as_patient: bool
    ) -> tuple[int, list[FhirDict]]: ...

    @abc.abstractmethod
    async def _all_audit_events(self) -> list[FhirDict]: ...

    @abc.abstractmethod
    async def add_consent(self, row: ConsentRow) -> None: ...

    @abc.abstractmethod
    async def update_consent(self, row: ConsentRow, *, expected_version: int) -> bool:
        """Replace the stored consent if it is still at ``expected_version``; False if it is not."""

    @abc.abstractmethod
    async def consent(self, consent_id: str) -> ConsentRow | None: ...

    @abc.abstractmethod
    async def consents(self, patient_pnr: str) -> list[ConsentRow]:
        """The patient's consents and blocks, any status, oldest first."""

    @abc.abstractmethod
    async def consents_at(self, patient_pnr: str, patient: str) -> tuple[list[ConsentRow], int]:
        """``consents(patient_pnr)`` with the page-snapshot generation of ``patient`` (the opaque
        id) they were read at, in one statement: a consent changed after them is a later generation."""

    # ---- page snapshots (``proxy.paging.SnapshotStore``: what each method promises) ---------------

    @abc.abstractmethod
    async def snapshot_generation(self, patient: str) -> int: ...

    @abc.abstractmethod
    async def put_snapshot(
        self, key: str, patient: str, parts: Sequence[tuple[int, bytes]], *, expires: float, now: float
    ) -> None: ...

    @abc.abstractmethod
    async def read_snapshot(
        self, key: str, patient: str, first: int, last: int, *, now: float
    ) -> tuple[int, dict[int, bytes]] | None: ...

    @abc.abstractmethod
    async def drop_snapshots(self, patient: str) -> None: ...

    # ---- the outbox (issue 22: writes delivered to each target exactly once) ---------------------

    @abc.abstractmethod
    async def enqueue(self, txn: OutboxTransaction) -> OutboxTransaction:
        """Store the transaction and all its parts in one database transaction, or nothing
        (StoreUnavailable). If a transaction with the same ``identifier`` is stored already, nothing
        is written and that one is returned (the caller compares the digest); two enqueues of one
        identifier at once, from any workers or hosts: one is stored, both get it."""

    @abc.abstractmethod
    async def outbox_transaction(self, txn_id: str) -> OutboxTransaction | None:
        """The transaction with every part's current state, its parts in the order enqueued."""

    @abc.abstractmethod
    async def claim(
        self, now: float, lease_s: float, limit: int, worker: str
    ) -> list[tuple[str, OutboxPart]]:
        """At most ``limit`` (transaction id, part) of pending parts that are due (``next_attempt``
        <= now) and not leased, or whose lease ran out (a worker that died mid-delivery), the
        longest due first; each leased to ``worker`` until now + lease_s, its ``attempts`` counting
        this one (returned so). No two claimers, in any process or host, get one part while its
        lease runs. ``worker`` must name this claimer only."""

    @abc.abstractmethod
    async def renew(self, part_id: str, until: float, worker: str) -> bool:
        """Extend the lease ``worker`` holds on a pending part to ``until`` (before a request when less
        of it is left than the request may take: the lease bounds one request, not the whole part).
        False, and nothing changes, when another claimer has the part now or it is settled:
        ``worker`` must stop."""

    @abc.abstractmethod
    async def delivered(self, part_id: str, now: float, worker: str) -> bool:
        """The target has the part. Only while ``worker`` holds the part's lease (or held it last and
        nobody claimed it since): else nothing changes and False."""

    @abc.abstractmethod
    async def retry(self, part_id: str, next_attempt: float, reason: str, worker: str) -> bool:
        """The try failed for a while: one attempt more, pending again from ``next_attempt``, the
        lease released. Only by the lease holder (as ``delivered``)."""

    @abc.abstractmethod
    async def park(self, part_id: str, reason: str, worker: str) -> bool:
        """The target refused the part, or it ran out of attempts: never tried again. Only by the
        lease holder (as ``delivered``)."""

    def _sweep_due(self, now: float) -> bool:
        """Whether expired snapshots are due to be deleted (at most once a minute per store)."""
        if now - self._swept < SWEEP_EVERY_S:
            return False
        self._swept = now
        return True


# The patient's own view of their log: what care staff did, and what the patient did themselves.
AS_PATIENT = "(audience <> 'patient' OR asker_pnr = patient_pnr)"


def _not_stored(why: str, records: dict[str, AuditRecord]) -> None:
    """Log what was lost, by event id (no personal data), so that events left begun can be found."""
    ids = list(records)
    more = f" and {len(ids) - 20} more" if len(ids) > 20 else ""
    listed = ", ".join(ids[:20])
    log.error("%s; %d audit event(s) not (known to be) stored: %s%s", why, len(ids), listed, more)


def _retrieved(done: asyncio.Future[None]) -> None:
    if not done.cancelled():
        done.exception()


def open_store(settings: StoreSettings) -> Store:
    if settings.kind == "postgres":
        from proxy.store.postgres import PostgresStore

        return PostgresStore(settings.postgres_dsn)
    from proxy.store.sqlite import SqliteStore

    return SqliteStore(settings.sqlite_path)
