"""Paging in proportion to the page: the first page's answer kept as a snapshot, later pages read from it.

A search or ``$everything`` whose answer has more than one page keeps that answer — merged,
redacted and filtered: exactly what this asker may see, in order, with its source outcomes and
withheld hint — as a *snapshot* in the shared store, for ``paging.snapshot_ttl_s``. The Bundle's
``self``/``first``/``previous``/``next``/``last`` links carry ``_page_token=<token>`` beside the
search's own parameters and ``_offset``; page k is then one lookup of the parts that hold it: no
backend is asked, nothing is mapped, merged or redacted again. Any worker or host reads it (the
store is shared).

**The token** is 128 random bits (``secrets``), URL-safe base64: never derived from the patient or
the asker. **Bound to the asker**: a snapshot is filed under sha256(token, binding), where the
binding is who asks (issuer, subject, client, audience, user, care unit and provider, the patient
they act for, the scopes), the access decision (the types permitted, emergency access) and the
query (interaction, patient, types, filters, ``_since``) — not the page (``_count``, ``_offset``).
Anyone else presenting the token looks up another key and finds nothing, exactly as for a made-up,
expired or malformed token: one answer for all, 410 Gone (``gone``). The store holds neither the
token nor who asked.

**Invalidation.** A consent or block written for the patient drops the patient's snapshots and
moves the patient's *generation* on (``drop_snapshots``). A snapshot carries the generation read
before its walk read the consents (for the patient's own reading, which reads none: when it is
kept), and is served only while that is still the patient's current one: a walk that read the
consents before the change never serves a snapshot after it, even one stored after the drop. A
snapshot also lives no longer than the next instant one of the patient's consents or blocks comes
into or goes out of force (``expiry``).

**The stores** (``SnapshotStore``): the facade's embedded store (``proxy.store``: a table in SQLite
or PostgreSQL), or Redis (``RedisSnapshots``) when the cache is configured with Redis. Layout: part
``HEADER`` (JSON: size, chunk, generation, expiry, outcomes, hint), then parts 0, 1, … of ``chunk``
resources each (orjson, zlib level 1). The header is written last, so a half-written snapshot is
never found.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from proxy.fhir.errors import FhirError
from proxy.store.base import StoreUnavailable
from proxy.types import FhirDict, Principal, Query, SourceOutcome, SourceStatus, Withheld

log = logging.getLogger(__name__)

TOKEN_PARAM = "_page_token"
HEADER = -1  # the part holding the header
LAYOUT = "fhir-facade:pages:v1"
_TOKEN = re.compile(r"[A-Za-z0-9_-]{22}")  # 16 random bytes, URL-safe base64 without padding
_THREAD_BYTES = 1 << 20  # an answer this large is compressed off the event loop (zlib frees the GIL)
MIN_CHUNK = 20  # resources per part at least (a page of 1 need not make a part per resource)


class SnapshotStore(Protocol):
    """Where snapshots live. ``patient`` is the opaque patient id, never a personnummer; ``now``
    and ``expires`` are epoch seconds of the app's clock. Each raises ``StoreUnavailable`` when it
    cannot be done."""

    async def snapshot_generation(self, patient: str) -> int:
        """The patient's current generation (0 before any consent change)."""
        ...

    async def put_snapshot(
        self, key: str, patient: str, parts: Sequence[tuple[int, bytes]], *, expires: float, now: float
    ) -> None:
        """Store the parts (the header last) until ``expires``; rows expired by ``now`` may go."""
        ...

    async def read_snapshot(
        self, key: str, patient: str, first: int, last: int, *, now: float
    ) -> tuple[int, dict[int, bytes]] | None:
        """(the patient's current generation, {part: data}) of the header and parts ``first`` ..
        ``last`` of an unexpired snapshot; None when there is no such snapshot."""
        ...

    async def drop_snapshots(self, patient: str) -> None:
        """Move the patient's generation on, then delete the patient's snapshots."""
        ...


@dataclass(frozen=True, slots=True)
class Window:
    """What a page needs of a snapshot: the resources around it (``resources[0]`` is the whole
    answer's ``start``-th of ``size``) and the first page's outcomes, patient-known and hint."""

    resources: list[FhirDict]
    start: int
    size: int
    outcomes: list[SourceOutcome]
    known: bool | None
    withheld: frozenset[Withheld]


def gone() -> FhirError:
    """The one answer to a page token that finds no snapshot — expired, never issued, another
    asker's or another search's: nothing tells them apart (HAPI FHIR answers 410 for an expired
    search id too)."""
    return FhirError(
        410,
        "not-found",
        "This page is no longer available: its search has expired or is unknown. Run the search again.",
    )


def may_keep(query: Query) -> bool:
    """Whether the query's answer is paged (a search or ``$everything`` with a page size)."""
    return query.interaction in ("search-type", "everything") and query.count > 0 and not query.summary_count


def chunk_for(count: int) -> int:
    """Resources per part of a snapshot kept by a first page of ``count``: a later page of the
    same size is read from one or two parts."""
    return max(count, MIN_CHUNK)


def new_token() -> str:
    return secrets.token_urlsafe(16)


def binding(
    principal: Principal,
    *,
    types: Iterable[str],
    permission: str,
    emergency: str | None,
    query: Query,
) -> bytes:
    """Everything a snapshot is bound to: the asker, the access decision and the query (not the page)."""
    assert query.patient is not None
    return orjson.dumps(
        [
            principal.issuer,
            principal.subject,
            principal.client_id,
            principal.audience.name,
            principal.user_hsa_id,
            principal.care_unit_hsa_id,
            principal.care_provider_hsa_id,
            principal.patient_pnr,
            principal.launch_pnr,
            sorted(list(s) for s in principal.scopes),
            sorted(types),
            permission,
            emergency,
            query.interaction,
            sorted(query.resource_types),
            query.patient.pnr,
            query.patient.fhir_id,
            query.resource_id,
            repr(query.filters),  # (frozen dataclasses of str and float: a deterministic text)
            query.since,
        ]
    )


def snapshot_key(token: str, bound: bytes) -> str | None:
    """Where the snapshot of ``token`` for this binding is filed; None for what is no token of ours."""
    if not _TOKEN.fullmatch(token):
        return None
    return hashlib.sha256(b"\0".join((LAYOUT.encode(), token.encode(), bound))).hexdigest()


def expiry(now: float, ttl_s: float, boundaries: Iterable[float | None]) -> float:
    """``now + ttl_s``, or sooner: the next instant after ``now`` among ``boundaries`` (when a
    consent or block of the patient starts or ends)."""
    return min([now + ttl_s, *(b for b in boundaries if b is not None and b > now)])


def _encode(resources: Sequence[FhirDict], chunk: int, header: dict[str, Any]) -> list[tuple[int, bytes]]:
    parts = [
        (i, zlib.compress(orjson.dumps(resources[at : at + chunk]), 1))
        for i, at in enumerate(range(0, len(resources), chunk))
    ]
    return [*parts, (HEADER, orjson.dumps(header))]  # the header last: written last


async def keep(
    store: SnapshotStore,
    key: str,
    *,
    patient: str,
    generation: int,
    resources: Sequence[FhirDict],
    chunk: int,
    outcomes: Sequence[SourceOutcome],
    known: bool | None,
    withheld: Iterable[Withheld],
    expires: float,
    now: float,
) -> None:
    """Store the answer as a snapshot of parts of ``chunk`` resources each."""
    header = {
        "size": len(resources),
        "chunk": chunk,
        "generation": generation,
        "expires": expires,
        "known": known,
        "withheld": sorted(w.value for w in withheld),
        "outcomes": [[o.source, o.status.value, o.detail, o.latency_ms] for o in outcomes],
    }
    if len(resources) * 512 > _THREAD_BYTES:  # (roughly: a resource is ~0.5-1 KB of JSON)
        parts = await asyncio.to_thread(_encode, resources, chunk, header)
    else:
        parts = _encode(resources, chunk, header)
    await store.put_snapshot(key, patient, parts, expires=expires, now=now)


def _span(offset: int, count: int, chunk: int, size: int | None = None) -> tuple[int, int]:
    """The parts that hold resources ``offset`` .. ``offset + count - 1`` (last < first: none)."""
    end = offset + count if size is None else min(offset + count, size)
    if count <= 0 or end <= offset:
        return 0, -1
    return offset // chunk, (end - 1) // chunk


async def read(
    store: SnapshotStore, key: str, *, patient: str, offset: int, count: int, now: float
) -> Window | None:
    """The window of the snapshot ``key`` that holds the page at ``offset`` of ``count``
    resources, or None when there is no such snapshot (expired, dropped, another generation's)."""
    first, last = _span(offset, count, chunk_for(count))  # (if the first page had this size)
    found = await store.read_snapshot(key, patient, first, last, now=now)
    if found is None or HEADER not in found[1]:
        return None
    generation, parts = found
    header = orjson.loads(parts[HEADER])
    if header["generation"] != generation or header["expires"] <= now:
        return None
    size, chunk = header["size"], header["chunk"]
    first, last = _span(offset, count, chunk, size)
    wanted = range(first, last + 1)
    if any(p not in parts for p in wanted):  # another page size than the first page's: read again
        found = await store.read_snapshot(key, patient, first, last, now=now)
        if found is None or found[0] != generation:
            return None
        parts = found[1]
        if any(p not in parts for p in wanted):
            return None
    resources: list[FhirDict] = []
    for p in wanted:
        resources.extend(orjson.loads(zlib.decompress(parts[p])))
    return Window(
        resources=resources,
        start=first * chunk,
        size=size,
        outcomes=[SourceOutcome(s, SourceStatus(st), d, ms) for s, st, d, ms in header["outcomes"]],
        known=header["known"],
        withheld=frozenset(Withheld(w) for w in header["withheld"]),
    )


class RedisSnapshots:
    """Snapshots in Redis: a hash per snapshot (its parts, by number), a set per patient naming
    the patient's snapshots, and the patient's generation (a counter, without expiry: volatile-*
    eviction policies never drop it). Redis expires the snapshots; ``read_snapshot`` checks the
    expiry against the app's clock as well."""

    def __init__(self, client: Any, *, prefix: str) -> None:  # client: redis.asyncio.Redis
        self.client = client
        self.prefix = prefix

    def _page(self, key: str) -> str:
        return f"{self.prefix}:page:{key}"

    def _patient(self, patient: str) -> str:
        return f"{self.prefix}:patient:{patient}"

    def _generation(self, patient: str) -> str:
        return f"{self.prefix}:generation:{patient}"

    async def snapshot_generation(self, patient: str) -> int:
        try:
            return int(await self.client.get(self._generation(patient)) or 0)
        except Exception as exc:
            raise StoreUnavailable(f"snapshot store failed ({type(exc).__name__})") from None

    async def put_snapshot(
        self, key: str, patient: str, parts: Sequence[tuple[int, bytes]], *, expires: float, now: float
    ) -> None:
        ttl_ms = max(1, int((expires - now) * 1000))
        page, mine = self._page(key), self._patient(patient)
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.hset(page, mapping={str(p): data for p, data in parts})
                pipe.pexpire(page, ttl_ms)
                pipe.sadd(mine, key)
                pipe.pexpire(mine, ttl_ms, nx=True)  # (a new set: its first expiry)
                pipe.pexpire(mine, ttl_ms, gt=True)  # (else only ever later)
                await pipe.execute()
        except Exception as exc:
            raise StoreUnavailable(f"snapshot store failed ({type(exc).__name__})") from None

    async def read_snapshot(
        self, key: str, patient: str, first: int, last: int, *, now: float
    ) -> tuple[int, dict[int, bytes]] | None:
        fields = [str(HEADER), *(str(p) for p in range(first, last + 1))]
        try:
            async with self.client.pipeline(transaction=False) as pipe:
                pipe.get(self._generation(patient))
                pipe.hmget(self._page(key), fields)
                generation, values = await pipe.execute()
        except Exception as exc:
            raise StoreUnavailable(f"snapshot store failed ({type(exc).__name__})") from None
        if values[0] is None:
            return None
        found = {int(f): v for f, v in zip(fields, values, strict=True) if v is not None}
        return int(generation or 0), found

    async def drop_snapshots(self, patient: str) -> None:
        mine = self._patient(patient)
        try:
            async with self.client.pipeline(transaction=True) as pipe:
                pipe.incr(self._generation(patient))
                pipe.smembers(mine)
                _, keys = await pipe.execute()
            await self.client.delete(mine, *(self._page(k.decode()) for k in keys))
        except Exception as exc:
            raise StoreUnavailable(f"snapshot store failed ({type(exc).__name__})") from None

    async def close(self) -> None:
        await self.client.aclose()
