"""The facade's durable state: the access log (AuditEvents) and the patients' consents and blocks.

Two stores with one interface: ``SqliteStore`` (aiosqlite, WAL; the embedded default) and
``PostgresStore`` (asyncpg; for several workers or hosts). ``open_store(settings)`` picks one.

Audit writes are group-committed: concurrent requests queue their events, one writer task stores
whatever is queued in one transaction and then releases every waiting request. A request returns
only once its event is committed; if the store cannot take it, ``StoreUnavailable`` is raised and
the request must disclose nothing. Consents are few and written one at a time.

A write is *durable* (flushed to disk before it returns: it survives a power loss) or, when asked
for, only *committed*: it survives a crash of the process at once, and a power loss once the next
durable write, or the store's own flush within ``FLUSH_S``, has reached the disk. An event is
written again under its id to complete it (``audit_event(begun=…)``): the stored row is replaced.
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

FLUSH_S = 1.0  # a committed, not yet durable audit write reaches the disk within about this long
_FLUSH = None  # the writer's queue item that asks for that flush


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
class _Write:
    record: AuditRecord
    durable: bool
    done: asyncio.Future[None]


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
        self._queue: asyncio.Queue[_Write | None] = asyncio.Queue()  # None: _FLUSH
        self._writer: asyncio.Task[None] | None = None
        self._flush_due: asyncio.TimerHandle | None = None  # set while a write is not yet durable

    async def open(self) -> None:
        await self._connect()
        self._writer = asyncio.create_task(self._write_batches(), name="audit-writer")

    async def close(self) -> None:
        if self._flush_due is not None:
            self._flush_due.cancel()
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        while not self._queue.empty():  # nobody will write these: their requests disclose nothing
            write = self._queue.get_nowait()
            if write is not None and not write.done.done():
                write.done.set_exception(StoreUnavailable("audit store closed"))
        await self._disconnect()

    async def write_audit(self, record: AuditRecord, *, durable: bool = True) -> None:
        """Returns once the event is committed — and flushed to disk, if ``durable`` — or raises
        StoreUnavailable if it could not be."""
        if self._writer is None or self._writer.done():
            raise StoreUnavailable("audit store is not running")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Write(record, durable, done))
        await done

    async def _write_batches(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            writes = [w for w in batch if w is not None]  # (None: _FLUSH)
            if not writes:
                await self._flush_now()
                continue
            durable = any(w.durable for w in writes)
            try:
                await self._insert_audit([w.record for w in writes], durable=durable)
            except Exception as exc:  # the store failed: every waiting request must refuse to disclose
                log.error("audit write failed (%s); %d request(s) refused", type(exc).__name__, len(writes))
                for w in writes:
                    if not w.done.done():
                        w.done.set_exception(StoreUnavailable("audit store failed"))
                continue
            if durable:  # everything committed before is on disk now too
                self._cancel_flush()
            elif self._flush_due is None and not self.FLUSHES_ITSELF:
                loop = asyncio.get_running_loop()
                self._flush_due = loop.call_later(FLUSH_S, self._queue.put_nowait, _FLUSH)
            for w in writes:
                if not w.done.done():
                    w.done.set_result(None)

    async def _flush_now(self) -> None:
        if self._flush_due is None:
            return  # a durable write has flushed everything since the flush was asked for
        self._flush_due = None
        try:
            await self._flush()
        except Exception as exc:  # the commits stand; the next durable write flushes them
            log.warning("audit flush failed (%s)", type(exc).__name__)

    def _cancel_flush(self) -> None:
        if self._flush_due is not None:
            self._flush_due.cancel()
            self._flush_due = None

    # ---- what each store implements -------------------------------------------------------------

    @abc.abstractmethod
    async def _connect(self) -> None: ...

    @abc.abstractmethod
    async def _disconnect(self) -> None: ...

    # False: a commit that was not durable reaches the disk only with a later durable one, so the
    # writer calls ``_flush`` within FLUSH_S. True: the database does that itself.
    FLUSHES_ITSELF = False

    @abc.abstractmethod
    async def _insert_audit(self, records: list[AuditRecord], *, durable: bool) -> None:
        """Store every record (replacing a stored event with the same id) in one transaction, or
        raise. ``durable``: flushed to disk before returning; else committed (crash-safe)."""

    async def _flush(self) -> None:
        """Bring every committed audit write to disk (only called when FLUSHES_ITSELF is False)."""
        raise NotImplementedError

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
