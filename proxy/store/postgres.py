"""The shared store: PostgreSQL through asyncpg, for several workers or hosts behind one load
balancer. Commits are synchronous (PostgreSQL's default), so a committed event survives a crash.

The outbox is shared by every worker: an enqueue races others of the same identifier on its unique
index (the loser's insert waits for the winner's commit, then does nothing and reads the winner's);
a claim locks the rows it takes ``FOR UPDATE SKIP LOCKED`` and leases them in the same statement,
so a second claimer skips them while the first commits and sees the lease after."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
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

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_event (
    seq BIGSERIAL PRIMARY KEY, id TEXT NOT NULL UNIQUE, recorded TIMESTAMPTZ NOT NULL,
    patient_pnr TEXT NOT NULL, audience TEXT NOT NULL, user_hsa_id TEXT, outcome SMALLINT NOT NULL,
    request_id TEXT NOT NULL, event JSONB NOT NULL, asker_pnr TEXT);
ALTER TABLE audit_event ADD COLUMN IF NOT EXISTS asker_pnr TEXT;
CREATE INDEX IF NOT EXISTS audit_by_patient ON audit_event (patient_pnr, recorded);
CREATE TABLE IF NOT EXISTS consent (
    seq BIGSERIAL PRIMARY KEY, id TEXT NOT NULL UNIQUE, patient_pnr TEXT NOT NULL,
    status TEXT NOT NULL, version INTEGER NOT NULL, resource JSONB NOT NULL);
CREATE INDEX IF NOT EXISTS consent_by_patient ON consent (patient_pnr);
CREATE TABLE IF NOT EXISTS page_snapshot (
    key TEXT NOT NULL, part INTEGER NOT NULL, patient TEXT NOT NULL, expires DOUBLE PRECISION NOT NULL,
    data BYTEA NOT NULL, PRIMARY KEY (key, part));
CREATE INDEX IF NOT EXISTS page_snapshot_by_patient ON page_snapshot (patient);
CREATE INDEX IF NOT EXISTS page_snapshot_by_expiry ON page_snapshot (expires);
CREATE TABLE IF NOT EXISTS page_generation (patient TEXT PRIMARY KEY, generation BIGINT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox_transaction (
    seq BIGSERIAL PRIMARY KEY, id TEXT NOT NULL UNIQUE, identifier TEXT NOT NULL UNIQUE,
    digest TEXT NOT NULL, patient TEXT NOT NULL, created DOUBLE PRECISION NOT NULL, entries BYTEA NOT NULL);
CREATE TABLE IF NOT EXISTS outbox_part (
    seq BIGSERIAL PRIMARY KEY, id TEXT NOT NULL UNIQUE,
    txn_id TEXT NOT NULL REFERENCES outbox_transaction (id), target TEXT NOT NULL,
    requests BYTEA NOT NULL, state TEXT NOT NULL, attempts INTEGER NOT NULL,
    next_attempt DOUBLE PRECISION NOT NULL, reason TEXT, delivered_at DOUBLE PRECISION,
    claimed_by TEXT, claimed_until DOUBLE PRECISION);
CREATE INDEX IF NOT EXISTS outbox_part_by_txn ON outbox_part (txn_id);
CREATE INDEX IF NOT EXISTS outbox_part_due ON outbox_part (next_attempt, seq) WHERE state = 'pending';
"""
# Store.claim: the due parts, each locked as it is picked (one another claimer has locked is
# skipped), leased in the same statement; the rows are returned with their transaction's id.
_CLAIM = (
    "WITH due AS (SELECT seq FROM outbox_part WHERE state = 'pending' AND next_attempt <= $1"
    " AND (claimed_until IS NULL OR claimed_until <= $1) ORDER BY next_attempt, seq LIMIT $2"
    " FOR UPDATE SKIP LOCKED)"
    " UPDATE outbox_part AS p SET claimed_by = $3, claimed_until = $4, attempts = p.attempts + 1"
    " FROM due WHERE p.seq = due.seq"
    " RETURNING p.seq, p.txn_id, " + ", ".join("p." + c for c in OUTBOX_PART_COLUMNS.split(", "))
)
# Several workers may start at once: creating the schema is serialised on an advisory lock.
_SCHEMA_LOCK = 0x66686972


async def _codecs(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: b"\x01" + orjson.dumps(v),
        decoder=lambda b: orjson.loads(b[1:]),
        schema="pg_catalog",
        format="binary",
    )


class PostgresStore(Store):
    def __init__(self, dsn: str, *, max_batch: int = 500, pool_size: int = 4) -> None:
        super().__init__(max_batch=max_batch)
        self.dsn = dsn
        self.pool_size = pool_size
        self._pool: asyncpg.Pool | None = None

    async def _connect(self) -> None:
        self._pool = await asyncpg.create_pool(
            self.dsn, min_size=1, max_size=self.pool_size, init=_codecs, command_timeout=10
        )
        async with self._pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
            await conn.execute(SCHEMA)

    async def _disconnect(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    async def _ping(self) -> None:
        await self.pool.fetchval("SELECT 1")

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None or self._pool.is_closing():
            raise StoreUnavailable("store is not open")
        return self._pool

    async def _insert_audit(self, records: list[AuditRecord]) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.executemany(
                "INSERT INTO audit_event (id, recorded, patient_pnr, audience, user_hsa_id, outcome,"
                " request_id, asker_pnr, event)"
                " VALUES ($1, $2::text::timestamptz, $3, $4, $5, $6, $7, $8, $9)"
                " ON CONFLICT (id) DO UPDATE SET outcome = EXCLUDED.outcome, event = EXCLUDED.event"
                f" WHERE audit_event.outcome = {NO_OUTCOME}",  # only a begun event is replaced
                [r.row() for r in records],
            )

    async def _fetch(self, sql: str, *args: object) -> list[asyncpg.Record]:
        try:
            async with self.pool.acquire() as conn:
                return list(await conn.fetch(sql, *args))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"store read failed ({type(exc).__name__})") from None

    async def _execute(self, sql: str, *args: object) -> str:
        try:
            async with self.pool.acquire() as conn:
                return str(await conn.execute(sql, *args))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"store write failed ({type(exc).__name__})") from None

    async def _audit_events(
        self, patient_pnr: str, *, limit: int, offset: int, as_patient: bool
    ) -> tuple[int, list[FhirDict]]:
        where = "patient_pnr = $1" + (f" AND {AS_PATIENT}" if as_patient else "")
        ((total,),) = await self._fetch(f"SELECT count(*) FROM audit_event WHERE {where}", patient_pnr)
        rows = await self._fetch(
            f"SELECT event FROM audit_event WHERE {where} ORDER BY recorded DESC, seq DESC"
            " LIMIT $2 OFFSET $3",
            patient_pnr,
            limit,
            offset,
        )
        return int(total), [r["event"] for r in rows]

    async def _all_audit_events(self) -> list[FhirDict]:
        return [r["event"] for r in await self._fetch("SELECT event FROM audit_event ORDER BY seq")]

    async def add_consent(self, row: ConsentRow) -> None:
        await self._execute(
            "INSERT INTO consent (id, patient_pnr, status, version, resource) VALUES ($1, $2, $3, $4, $5)",
            row.id,
            row.patient_pnr,
            row.status,
            row.version,
            row.resource,
        )

    async def update_consent(self, row: ConsentRow, *, expected_version: int) -> bool:
        done = await self._execute(
            "UPDATE consent SET status = $1, version = $2, resource = $3 WHERE id = $4 AND version = $5",
            row.status,
            row.version,
            row.resource,
            row.id,
            expected_version,
        )
        return done == "UPDATE 1"

    async def consent(self, consent_id: str) -> ConsentRow | None:
        rows = await self._fetch(
            "SELECT id, patient_pnr, status, version, resource FROM consent WHERE id = $1", consent_id
        )
        return ConsentRow(*rows[0]) if rows else None

    async def consents(self, patient_pnr: str) -> list[ConsentRow]:
        rows = await self._fetch(
            "SELECT id, patient_pnr, status, version, resource FROM consent WHERE patient_pnr = $1"
            " ORDER BY seq",
            patient_pnr,
        )
        return [ConsentRow(*r) for r in rows]

    async def consents_at(self, patient_pnr: str, patient: str) -> tuple[list[ConsentRow], int]:
        rows = await self._fetch(CONSENTS_AT, patient, patient_pnr)
        return [ConsentRow(*tuple(r)[1:]) for r in rows if r[1] is not None], int(rows[0][0])

    # ---- page snapshots (proxy/paging.py: key is a hash, patient the opaque patient id) ----------

    async def snapshot_generation(self, patient: str) -> int:
        rows = await self._fetch("SELECT generation FROM page_generation WHERE patient = $1", patient)
        return int(rows[0][0]) if rows else 0

    async def put_snapshot(
        self, key: str, patient: str, parts: Sequence[tuple[int, bytes]], *, expires: float, now: float
    ) -> None:
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                if self._sweep_due(now):
                    await conn.execute("DELETE FROM page_snapshot WHERE expires <= $1", now)
                await conn.executemany(
                    "INSERT INTO page_snapshot (key, part, patient, expires, data)"
                    " VALUES ($1, $2, $3, $4, $5)",
                    [(key, part, patient, expires, data) for part, data in parts],
                )
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"store write failed ({type(exc).__name__})") from None

    async def read_snapshot(
        self, key: str, patient: str, first: int, last: int, *, now: float
    ) -> tuple[int, dict[int, bytes]] | None:
        rows = await self._fetch(
            "SELECT part, data, (SELECT generation FROM page_generation WHERE patient = $1)"
            " FROM page_snapshot WHERE key = $2 AND expires > $3 AND (part = -1 OR part BETWEEN $4 AND $5)",
            patient,
            key,
            now,
            first,
            last,
        )
        if not rows:
            return None
        return int(rows[0][2] or 0), {int(r[0]): bytes(r[1]) for r in rows}

    async def drop_snapshots(self, patient: str) -> None:
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "INSERT INTO page_generation (patient, generation) VALUES ($1, 1)"
                    " ON CONFLICT (patient) DO UPDATE SET generation = page_generation.generation + 1",
                    patient,
                )
                await conn.execute("DELETE FROM page_snapshot WHERE patient = $1", patient)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"store write failed ({type(exc).__name__})") from None

    # ---- the outbox ------------------------------------------------------------------------------

    async def enqueue(self, txn: OutboxTransaction) -> OutboxTransaction:
        try:
            async with self.pool.acquire() as conn, conn.transaction():
                stored = await conn.fetchval(
                    "INSERT INTO outbox_transaction (id, identifier, digest, patient, created, entries)"
                    " VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (identifier) DO NOTHING RETURNING id",
                    txn.id,
                    txn.identifier,
                    txn.digest,
                    txn.patient,
                    txn.created,
                    txn.entries,
                )
                if stored is not None:
                    await conn.executemany(
                        "INSERT INTO outbox_part (id, txn_id, target, requests, state, attempts,"
                        " next_attempt, reason, delivered_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                        [part_row(txn.id, p) for p in txn.parts],
                    )
                    return txn
                # another's, committed (an insert of the same identifier waits for the other to end)
                winner = await self._outbox_transaction(conn, "identifier = $1", txn.identifier)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"outbox write failed ({type(exc).__name__})") from None
        if winner is None:  # (a stored transaction is never deleted)
            raise StoreUnavailable("outbox transaction vanished")
        return winner

    async def outbox_transaction(self, txn_id: str) -> OutboxTransaction | None:
        try:
            async with (
                self.pool.acquire() as conn,
                conn.transaction(isolation="repeatable_read", readonly=True),
            ):
                return await self._outbox_transaction(conn, "id = $1", txn_id)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"store read failed ({type(exc).__name__})") from None

    @staticmethod
    async def _outbox_transaction(conn: asyncpg.Connection, where: str, key: str) -> OutboxTransaction | None:
        row = await conn.fetchrow(
            f"SELECT id, identifier, digest, patient, created, entries FROM outbox_transaction WHERE {where}",
            key,
        )
        if row is None:
            return None
        parts = await conn.fetch(
            f"SELECT {OUTBOX_PART_COLUMNS} FROM outbox_part WHERE txn_id = $1 ORDER BY seq", row["id"]
        )
        return OutboxTransaction(
            row["id"],
            row["identifier"],
            row["digest"],
            row["patient"],
            float(row["created"]),
            bytes(row["entries"]),
            tuple(outbox_part(tuple(p)) for p in parts),
        )

    async def claim(
        self, now: float, lease_s: float, limit: int, worker: str
    ) -> list[tuple[str, OutboxPart]]:
        # One statement, one transaction: the rows are locked as they are picked (a row another
        # claimer has locked is skipped; one whose claim committed meanwhile is re-checked against
        # the WHERE and left out) and leased before the locks are released.
        try:
            async with self.pool.acquire() as conn:
                rows = await conn.fetch(_CLAIM, now, limit, worker, now + lease_s)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            raise StoreUnavailable(f"outbox claim failed ({type(exc).__name__})") from None
        rows = sorted(rows, key=lambda r: (r["next_attempt"], r["seq"]))  # (RETURNING keeps no order)
        return [(str(r["txn_id"]), outbox_part(tuple(r)[2:])) for r in rows]

    async def _outcome(self, sql: str, *args: object) -> bool:
        """One UPDATE of a part held by the worker (its last two arguments: part id, worker)."""
        n = len(args)
        done = await self._execute(
            f"UPDATE outbox_part SET {sql}, claimed_by = NULL, claimed_until = NULL"
            f" WHERE id = ${n - 1} AND claimed_by = ${n} AND state = 'pending'",
            *args,
        )
        return done == "UPDATE 1"

    async def renew(self, part_id: str, until: float, worker: str) -> bool:
        done = await self._execute(
            "UPDATE outbox_part SET claimed_until = $1"
            " WHERE id = $2 AND claimed_by = $3 AND state = 'pending'",
            until,
            part_id,
            worker,
        )
        return done == "UPDATE 1"

    async def delivered(self, part_id: str, now: float, worker: str) -> bool:
        return await self._outcome("state = 'delivered', delivered_at = $1", now, part_id, worker)

    async def retry(self, part_id: str, next_attempt: float, reason: str, worker: str) -> bool:
        return await self._outcome("next_attempt = $1, reason = $2", next_attempt, reason, part_id, worker)

    async def park(self, part_id: str, reason: str, worker: str) -> bool:
        return await self._outcome("state = 'parked', reason = $1", reason, part_id, worker)
