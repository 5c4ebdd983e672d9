"""The facade's durable state: the access log (AuditEvents) and the patients' consents and blocks.

Two stores with one interface: ``SqliteStore`` (aiosqlite, WAL; the embedded default) and
``PostgresStore`` (asyncpg; for several workers or hosts). ``open_store(settings)`` picks one.

Audit writes are group-committed: concurrent requests queue their events, one writer task stores
whatever is queued in one transaction and then releases every waiting request. A request returns
only once its event is committed; if the store cannot take it, ``StoreUnavailable`` is raised and
the request must disclose nothing. Consents are few and written one at a time.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from proxy.types import FhirDict

if TYPE_CHECKING:
    from proxy.settings import StoreSettings

log = logging.getLogger(__name__)


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

    def row(self) -> tuple[object, ...]:
        """The values of the audit_event columns, in schema order (id … event)."""
        return (
            self.event_id,
            self.recorded,
            self.patient_pnr,
            self.audience,
            self.user_hsa_id,
            self.outcome,
            self.request_id,
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


class Store(abc.ABC):
    """Shared by both stores: the group-commit writer for AuditEvents."""

    def __init__(self, *, max_batch: int = 500) -> None:
        self.max_batch = max_batch
        self._queue: asyncio.Queue[tuple[AuditRecord, asyncio.Future[None]]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None

    async def open(self) -> None:
        await self._connect()
        self._writer = asyncio.create_task(self._write_batches(), name="audit-writer")

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        await self._disconnect()

    def submit_audit(self, record: AuditRecord) -> asyncio.Future[None]:
        """Queue the event for the next group commit. The future is done once the event is
        committed, or fails with StoreUnavailable if it could not be; StoreUnavailable is raised
        at once if the writer is not running."""
        if self._writer is None or self._writer.done():
            raise StoreUnavailable("audit store is not running")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait((record, done))
        return done

    async def _write_batches(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                await self._insert_audit([r for r, _ in batch])
            except Exception as exc:  # the store failed: every waiting request must refuse to disclose
                log.error("audit write failed (%s); %d request(s) refused", type(exc).__name__, len(batch))
                for _, done in batch:
                    if not done.done():
                        done.set_exception(StoreUnavailable("audit store failed"))
                continue
            for _, done in batch:
                if not done.done():
                    done.set_result(None)

    # ---- what each store implements -------------------------------------------------------------

    @abc.abstractmethod
    async def _connect(self) -> None: ...

    @abc.abstractmethod
    async def _disconnect(self) -> None: ...

    @abc.abstractmethod
    async def _insert_audit(self, records: list[AuditRecord]) -> None:
        """Store every record in one transaction, durably, or raise."""

    @abc.abstractmethod
    async def audit_events(self, patient_pnr: str, *, limit: int, offset: int) -> tuple[int, list[FhirDict]]:
        """(how many events name the patient, one page of them, newest first)."""

    @abc.abstractmethod
    async def all_audit_events(self) -> list[FhirDict]:
        """Every stored event (for tests and exports; not on the request path)."""

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


def open_store(settings: StoreSettings) -> Store:
    if settings.kind == "postgres":
        from proxy.store.postgres import PostgresStore

        return PostgresStore(settings.postgres_dsn)
    from proxy.store.sqlite import SqliteStore

    return SqliteStore(settings.sqlite_path)
