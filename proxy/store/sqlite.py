"""The embedded store: SQLite through aiosqlite, WAL, synchronous=FULL (a committed event survives
a crash of the process or the machine).

The connections (one for the audit writer, one for the rest) are in autocommit mode and most writes
are one statement — AuditEvents go in as one multi-row INSERT (an upsert: a completed event replaces
its begun one) of up to 100 rows — so each is its own atomic transaction, committed (and fsynced) in
a single trip to aiosqlite's thread: on the request path a trip costs more than the statement. A
larger batch is one explicit transaction, on the audit writer's own connection. The outbox's
transactions of several statements (an enqueue, a claim) are explicit ``BEGIN IMMEDIATE`` ones on
a third connection of their own, one at a time: the write lock is taken first, so another store
on the same file (another process) waits for it rather than claiming the same parts."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiosqlite
import orjson

from proxy.store.base import (
    AS_PATIENT,
    CONSENTS_AT,
    NO_OUTCOME,
    OUTBOX_PART_COLUMNS,
    AuditRecord,
    ConsentRow,
    OutboxPart,
    OutboxTransaction,
    Store,
    StoreUnavailable,
    outbox_part,
    part_row,
)
from proxy.types import FhirDict

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS audit_event ("
    " seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, recorded TEXT NOT NULL,"
    " patient_pnr TEXT NOT NULL, audience TEXT NOT NULL, user_hsa_id TEXT, outcome INTEGER NOT NULL,"
    " request_id TEXT NOT NULL, event BLOB NOT NULL, asker_pnr TEXT)",
    "CREATE INDEX IF NOT EXISTS audit_by_patient ON audit_event (patient_pnr, recorded)",
    "CREATE TABLE IF NOT EXISTS consent ("
    " seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, patient_pnr TEXT NOT NULL,"
    " status TEXT NOT NULL, version INTEGER NOT NULL, resource BLOB NOT NULL)",
    "CREATE INDEX IF NOT EXISTS consent_by_patient ON consent (patient_pnr)",
    # page snapshots (proxy/paging.py): key is a hash, patient the opaque patient id
    "CREATE TABLE IF NOT EXISTS page_snapshot ("
    " key TEXT NOT NULL, part INTEGER NOT NULL, patient TEXT NOT NULL, expires REAL NOT NULL,"
    " data BLOB NOT NULL, PRIMARY KEY (key, part))",
    "CREATE INDEX IF NOT EXISTS page_snapshot_by_patient ON page_snapshot (patient)",
    "CREATE INDEX IF NOT EXISTS page_snapshot_by_expiry ON page_snapshot (expires)",
    "CREATE TABLE IF NOT EXISTS page_generation (patient TEXT PRIMARY KEY, generation INTEGER NOT NULL)",
    # the outbox: an accepted write (one per Bundle identifier) and its parts, one per target
    "CREATE TABLE IF NOT EXISTS outbox_transaction ("
    " seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, identifier TEXT NOT NULL UNIQUE,"
    " digest TEXT NOT NULL, patient TEXT NOT NULL, created REAL NOT NULL, entries BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS outbox_part ("
    " seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,"
    " txn_id TEXT NOT NULL REFERENCES outbox_transaction (id), target TEXT NOT NULL,"
    " requests BLOB NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL, next_attempt REAL NOT NULL,"
    " reason TEXT, delivered_at REAL, claimed_by TEXT, claimed_until REAL)",
    "CREATE INDEX IF NOT EXISTS outbox_part_by_txn ON outbox_part (txn_id)",
    "CREATE INDEX IF NOT EXISTS outbox_part_due ON outbox_part (next_attempt, seq) WHERE state = 'pending'",
)
_PARTS_PER_STATEMENT = 100  # 5 values each: under the 999 variables older SQLite builds allow


class SqliteStore(Store):
    def __init__(self, path: Path, *, max_batch: int = 500) -> None:
        super().__init__(max_batch=max_batch)
        self.path = path
        self._db: aiosqlite.Connection | None = None
        # The audit writer's own connection: a batch written as one explicit transaction holds
        # nothing but audit rows (a consent written meanwhile on a shared connection would join
        # that transaction, and go with it if it rolled back), and reads never queue behind its
        # fsyncs in aiosqlite's thread.
        self._audit_db: aiosqlite.Connection | None = None
        # The outbox's own connection, for its explicit transactions, one at a time (the lock):
        # a statement of anyone else's on it would join the transaction.
        self._outbox_db: aiosqlite.Connection | None = None
        self._outbox_lock = asyncio.Lock()

    async def _connect(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await self._open()
        for statement in SCHEMA:
            await self._db.execute(statement)
        columns = {c[1] for c in await self._db.execute_fetchall("PRAGMA table_info(audit_event)")}
        if "asker_pnr" not in columns:  # a store from before the asking patient was recorded
            await self._db.execute("ALTER TABLE audit_event ADD COLUMN asker_pnr TEXT")
        self._audit_db = await self._open()
        self._outbox_db = await self._open()

    async def _open(self) -> aiosqlite.Connection:
        # autocommit; a writer waits up to 10 s for the other connection's write lock
        db = await aiosqlite.connect(self.path, isolation_level=None, timeout=10)
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        return db

    async def _disconnect(self) -> None:
        for db in (self._outbox_db, self._audit_db, self._db):
            if db is not None:
                await db.close()

    async def _ping(self) -> None:
        if self._audit_db is None:
            raise StoreUnavailable("store is not open")
        for db in (self.db, self._audit_db):  # (the audit writer's connection too)
            await db.execute_fetchall("SELECT 1")

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreUnavailable("store is not open")
        return self._db

    async def _insert_audit(self, records: list[AuditRecord]) -> None:
        db = self._audit_db
        if db is None:
            raise StoreUnavailable("store is not open")
        # 100 rows of 9 values per statement: under the 999 variables older SQLite builds allow
        chunks = [records[i : i + 100] for i in range(0, len(records), 100)]
        if len(chunks) == 1:  # one statement: its own transaction
            await _insert_rows(db, chunks[0])
            return
        await db.execute("BEGIN IMMEDIATE")
        try:
            for rows in chunks:
                await _insert_rows(db, rows)
            await db.execute("COMMIT")
        except Exception:
            with contextlib.suppress(Exception):
                await db.execute("ROLLBACK")
            if db.in_transaction:  # a transaction left open would swallow every later write
                self._audit_db = None
                await db.close()  # (closing rolls it back)
                self._audit_db = await self._open()
            raise

    async def _fetch(self, sql: str, *args: object) -> list[Any]:
        try:
            return list(await self.db.execute_fetchall(sql, args))
        except (ValueError, aiosqlite.Error) as exc:  # ValueError: the connection is closed
            raise StoreUnavailable(f"store read failed ({type(exc).__name__})") from None

    async def _audit_events(
        self, patient_pnr: str, *, limit: int, offset: int, as_patient: bool
    ) -> tuple[int, list[FhirDict]]:
        where = "patient_pnr = ?" + (f" AND {AS_PATIENT}" if as_patient else "")
        ((total,),) = await self._fetch(f"SELECT count(*) FROM audit_event WHERE {where}", patient_pnr)
        rows = await self._fetch(
            f"SELECT event FROM audit_event WHERE {where} ORDER BY recorded DESC, seq DESC LIMIT ? OFFSET ?",
            patient_pnr,
            limit,
            offset,
        )
        return int(total), [orjson.loads(e) for (e,) in rows]

    async def _all_audit_events(self) -> list[FhirDict]:
        return [orjson.loads(e) for (e,) in await self._fetch("SELECT event FROM audit_event ORDER BY seq")]

    async def add_consent(self, row: ConsentRow) -> None:
        try:
            await self.db.execute(
                "INSERT INTO consent (id, patient_pnr, status, version, resource) VALUES (?, ?, ?, ?, ?)",
                (row.id, row.patient_pnr, row.status, row.version, orjson.dumps(row.resource)),
            )
        except (ValueError, aiosqlite.Error) as exc:
            raise StoreUnavailable(f"consent write failed ({type(exc).__name__})") from None

    async def update_consent(self, row: ConsentRow, *, expected_version: int) -> bool:
        try:
            cur = await self.db.execute(
                "UPDATE consent SET status = ?, version = ?, resource = ? WHERE id = ? AND version = ?",
                (row.status, row.version, orjson.dumps(row.resource), row.id, expected_version),
            )
        except (ValueError, aiosqlite.Error) as exc:
            raise StoreUnavailable(f"consent write failed ({type(exc).__name__})") from None
        return cur.rowcount == 1

    async def consent(self, consent_id: str) -> ConsentRow | None:
        rows = await self._fetch(
            "SELECT id, patient_pnr, status, version, resource FROM consent WHERE id = ?", consent_id
        )
        return _row(rows[0]) if rows else None

    async def consents(self, patient_pnr: str) -> list[ConsentRow]:
        rows = await self._fetch(
            "SELECT id, patient_pnr, status, version, resource FROM consent WHERE patient_pnr = ?"
            " ORDER BY seq",
            patient_pnr,
        )
        return [_row(r) for r in rows]

    async def consents_at(self, patient_pnr: str, patient: str) -> tuple[list[ConsentRow], int]:
        rows = await self._fetch(CONSENTS_AT.replace("$", "?"), patient, patient_pnr)
        return [_row(r[1:]) for r in rows if r[1] is not None], int(rows[0][0])

    # ---- page snapshots --------------------------------------------------------------------------

    async def _write(self, sql: str, *args: object) -> None:
        try:
            await self.db.execute(sql, args)
        except (ValueError, aiosqlite.Error) as exc:
            raise StoreUnavailable(f"store write failed ({type(exc).__name__})") from None

    async def snapshot_generation(self, patient: str) -> int:
        rows = await self._fetch("SELECT generation FROM page_generation WHERE patient = ?", patient)
        return int(rows[0][0]) if rows else 0

    async def put_snapshot(
        self, key: str, patient: str, parts: Sequence[tuple[int, bytes]], *, expires: float, now: float
    ) -> None:
        if self._sweep_due(now):
            await self._write("DELETE FROM page_snapshot WHERE expires <= ?", now)
        # each statement its own transaction, the header (the last part) in the last: a snapshot
        # is found only once whole
        for at in range(0, len(parts), _PARTS_PER_STATEMENT):
            rows = parts[at : at + _PARTS_PER_STATEMENT]
            await self._write(
                "INSERT INTO page_snapshot (key, part, patient, expires, data) VALUES "
                + ", ".join(["(?, ?, ?, ?, ?)"] * len(rows)),
                *(v for part, data in rows for v in (key, part, patient, expires, data)),
            )

    async def read_snapshot(
        self, key: str, patient: str, first: int, last: int, *, now: float
    ) -> tuple[int, dict[int, bytes]] | None:
        rows = await self._fetch(
            "SELECT part, data, (SELECT generation FROM page_generation WHERE patient = ?)"
            " FROM page_snapshot WHERE key = ? AND expires > ? AND (part = -1 OR part BETWEEN ? AND ?)",
            patient,
            key,
            now,
            first,
            last,
        )
        if not rows:
            return None
        return int(rows[0][2] or 0), {int(part): bytes(data) for part, data, _ in rows}

    async def drop_snapshots(self, patient: str) -> None:
        await self._write(
            "INSERT INTO page_generation (patient, generation) VALUES (?, 1)"
            " ON CONFLICT (patient) DO UPDATE SET generation = generation + 1",
            patient,
        )
        await self._write("DELETE FROM page_snapshot WHERE patient = ?", patient)

    # ---- the outbox ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _immediate(self) -> AsyncIterator[aiosqlite.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction on the outbox's connection, committed at the end or
        rolled back (StoreUnavailable); one at a time."""
        async with self._outbox_lock:
            db = self._outbox_db
            if db is None:
                raise StoreUnavailable("store is not open")
            try:
                await db.execute("BEGIN IMMEDIATE")
                yield db
                await db.execute("COMMIT")
            except (ValueError, aiosqlite.Error) as exc:
                await self._roll_back(db)
                raise StoreUnavailable(f"outbox write failed ({type(exc).__name__})") from None
            except BaseException:
                await self._roll_back(db)
                raise

    async def _roll_back(self, db: aiosqlite.Connection) -> None:
        with contextlib.suppress(Exception):
            await db.execute("ROLLBACK")
        with contextlib.suppress(Exception):
            if db.in_transaction:  # a transaction left open would swallow every later write
                self._outbox_db = None
                await db.close()  # (closing rolls it back)
                self._outbox_db = await self._open()

    async def enqueue(self, txn: OutboxTransaction) -> OutboxTransaction:
        async with self._immediate() as db:
            cur = await db.execute(
                "INSERT INTO outbox_transaction (id, identifier, digest, patient, created, entries)"
                " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (identifier) DO NOTHING",
                (txn.id, txn.identifier, txn.digest, txn.patient, txn.created, txn.entries),
            )
            if cur.rowcount == 1:
                await db.executemany(
                    "INSERT INTO outbox_part (id, txn_id, target, requests, state, attempts, next_attempt,"
                    " reason, delivered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [part_row(txn.id, p) for p in txn.parts],
                )
                return txn
            (winner,) = await db.execute_fetchall(
                "SELECT id FROM outbox_transaction WHERE identifier = ?", (txn.identifier,)
            )
        stored = await self.outbox_transaction(str(winner[0]))
        if stored is None:  # (a stored transaction is never deleted)
            raise StoreUnavailable("outbox transaction vanished")
        return stored

    async def outbox_transaction(self, txn_id: str) -> OutboxTransaction | None:
        rows = await self._fetch(
            "SELECT id, identifier, digest, patient, created, entries FROM outbox_transaction WHERE id = ?",
            txn_id,
        )
        if not rows:
            return None
        tid, identifier, digest, patient, created, entries = rows[0]
        parts = await self._fetch(
            f"SELECT {OUTBOX_PART_COLUMNS} FROM outbox_part WHERE txn_id = ? ORDER BY seq", txn_id
        )
        return OutboxTransaction(
            str(tid),
            str(identifier),
            str(digest),
            str(patient),
            float(created),
            bytes(entries),
            tuple(outbox_part(p) for p in parts),
        )

    async def claim(
        self, now: float, lease_s: float, limit: int, worker: str
    ) -> list[tuple[str, OutboxPart]]:
        async with self._immediate() as db:
            rows = await db.execute_fetchall(
                f"SELECT seq, txn_id, {OUTBOX_PART_COLUMNS} FROM outbox_part"
                " WHERE state = 'pending' AND next_attempt <= ?"
                " AND (claimed_until IS NULL OR claimed_until <= ?) ORDER BY next_attempt, seq LIMIT ?",
                (now, now, limit),
            )
            rows = list(rows)
            if rows:
                await db.execute(
                    "UPDATE outbox_part SET claimed_by = ?, claimed_until = ?, attempts = attempts + 1"
                    " WHERE seq IN (" + ", ".join("?" * len(rows)) + ")",
                    (worker, now + lease_s, *(r[0] for r in rows)),
                )
        # (the rows as they were before the UPDATE: this claim's attempt added)
        parts = [(str(r[1]), outbox_part(r[2:])) for r in rows]
        return [(t, replace(p, attempts=p.attempts + 1)) for t, p in parts]

    async def _outcome(self, sql: str, *args: object) -> bool:
        """One UPDATE of a part held by the worker (its last two arguments: part id, worker)."""
        try:
            cur = await self.db.execute(
                f"UPDATE outbox_part SET {sql}, claimed_by = NULL,"
                " claimed_until = NULL WHERE id = ? AND claimed_by = ? AND state = 'pending'",
                args,
            )
        except (ValueError, aiosqlite.Error) as exc:
            raise StoreUnavailable(f"outbox write failed ({type(exc).__name__})") from None
        return cur.rowcount == 1

    async def renew(self, part_id: str, until: float, worker: str) -> bool:
        try:
            cur = await self.db.execute(
                "UPDATE outbox_part SET claimed_until = ?"
                " WHERE id = ? AND claimed_by = ? AND state = 'pending'",
                (until, part_id, worker),
            )
        except (ValueError, aiosqlite.Error) as exc:
            raise StoreUnavailable(f"outbox write failed ({type(exc).__name__})") from None
        return cur.rowcount == 1

    async def delivered(self, part_id: str, now: float, worker: str) -> bool:
        return await self._outcome("state = 'delivered', delivered_at = ?", now, part_id, worker)

    async def retry(self, part_id: str, next_attempt: float, reason: str, worker: str) -> bool:
        return await self._outcome("next_attempt = ?, reason = ?", next_attempt, reason, part_id, worker)

    async def park(self, part_id: str, reason: str, worker: str) -> bool:
        return await self._outcome("state = 'parked', reason = ?", reason, part_id, worker)


async def _insert_rows(db: aiosqlite.Connection, rows: list[AuditRecord]) -> None:
    await db.execute(
        "INSERT INTO audit_event (id, recorded, patient_pnr, audience, user_hsa_id, outcome,"
        " request_id, asker_pnr, event) VALUES "
        + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(rows))
        + " ON CONFLICT (id) DO UPDATE SET outcome = excluded.outcome, event = excluded.event"
        f" WHERE audit_event.outcome = {NO_OUTCOME}",  # only a begun event is replaced
        [v for r in rows for v in (*r.row()[:-1], orjson.dumps(r.event))],
    )


def _row(r: Any) -> ConsentRow:
    cid, pnr, status, version, resource = r
    return ConsentRow(str(cid), str(pnr), str(status), int(version), orjson.loads(resource))
