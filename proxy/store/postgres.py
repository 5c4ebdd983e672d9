"""The shared store: PostgreSQL through asyncpg, for several workers or hosts behind one load
balancer. Commits are synchronous (PostgreSQL's default), so a committed event survives a crash."""

from __future__ import annotations

from collections.abc import Sequence

import asyncpg
import orjson

from proxy.store.base import (
    AS_PATIENT,
    CONSENTS_AT,
    NO_OUTCOME,
    AuditRecord,
    ConsentRow,
    Store,
    StoreUnavailable,
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
"""
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
