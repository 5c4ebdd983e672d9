"""The outbox (proxy/store): an accepted write is kept, whole or not at all, once per Bundle identifier,
until each target has its part; parts are claimed under a lease that no second worker (another
store on the same database: another process or host) can take while it runs, and only the lease's
holder records an outcome. On SQLite and PostgreSQL alike, and across a close and reopen."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from proxy.store.base import (
    OutboxPart,
    OutboxTransaction,
    PartRequest,
    Store,
    StoreUnavailable,
    backoff,
)
from proxy.store.postgres import PostgresStore
from proxy.store.sqlite import SqliteStore
from tests.conftest import postgres_dsn, reset_postgres

NOW = 1_800_000_000.0
LEASE = 30.0

Opener = Callable[[], Store]


@pytest.fixture(params=["sqlite", "postgres"])
async def new_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Opener]:
    """Makes (unopened) stores on one fresh database: each a separate worker or host."""
    if request.param == "postgres":
        await reset_postgres()

    def make() -> Store:
        if request.param == "postgres":
            return PostgresStore(postgres_dsn())
        return SqliteStore(tmp_path / "facade.sqlite")

    yield make


@contextlib.asynccontextmanager
async def opened(make: Opener) -> AsyncIterator[Store]:
    store = make()
    await store.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def store(new_store: Opener) -> AsyncIterator[Store]:
    async with opened(new_store) as s:
        yield s


def request(target: str, key: str, body: bytes = b'{"a": 1}') -> PartRequest:
    return PartRequest(
        "POST",
        f"/{target}/records",
        (("Content-Type", "application/json"), ("Idempotency-Key", key)),
        body,
        key,
    )


def transaction(
    identifier: str | None = None,
    *,
    targets: tuple[str, ...] = ("viva", "cosmic"),
    next_attempt: float = NOW,
    requests: int = 1,
) -> OutboxTransaction:
    tid = uuid.uuid4().hex
    parts = tuple(
        OutboxPart(
            id=uuid.uuid4().hex,
            target=t,
            requests=tuple(request(t, f"{tid}-{t}-{i}", f'{{"n": {i}}}'.encode()) for i in range(requests)),
            next_attempt=next_attempt,
        )
        for t in targets
    )
    return OutboxTransaction(
        id=tid,
        identifier=identifier or f"urn:ietf:rfc:3986|urn:uuid:{uuid.uuid4()}",
        digest=uuid.uuid4().hex * 2,
        patient="p-" + uuid.uuid4().hex[:8],
        created=NOW,
        entries=b'[{"type": "Encounter", "id": "abc"}]',
        parts=parts,
    )


def part_ids(claimed: list[tuple[str, OutboxPart]]) -> list[str]:
    return [p.id for _, p in claimed]


async def state_of(store: Store, txn: OutboxTransaction) -> dict[str, OutboxPart]:
    stored = await store.outbox_transaction(txn.id)
    assert stored is not None
    return {p.id: p for p in stored.parts}


# ---- enqueue ----------------------------------------------------------------------------------------


async def test_an_enqueued_transaction_is_read_back_whole(store: Store) -> None:
    body = bytes(range(256)) + "åäö".encode()  # any bytes, kept as they are
    txn = transaction(requests=2)
    txn = replace(txn, parts=(replace(txn.parts[0], requests=(request("viva", "k1", body),)), txn.parts[1]))
    assert await store.enqueue(txn) == txn
    assert await store.outbox_transaction(txn.id) == txn
    assert await store.outbox_transaction(uuid.uuid4().hex) is None
    stored = await store.outbox_transaction(txn.id)
    assert stored is not None and stored.parts[0].requests[0].body == body
    assert [len(p.requests) for p in stored.parts] == [1, 2]


async def test_a_second_enqueue_of_an_identifier_writes_nothing_and_returns_the_first(store: Store) -> None:
    first = transaction("sys|visit-1")
    again = transaction("sys|visit-1", targets=("viva", "cosmic", "npo"))  # another id, digest, parts
    assert await store.enqueue(first) == first
    assert await store.enqueue(again) == first
    assert await store.enqueue(first) == first  # the very same again (an enqueue retried): as well
    assert await store.outbox_transaction(again.id) is None
    claimed = await store.claim(NOW, LEASE, 100, "w1")
    assert sorted(part_ids(claimed)) == sorted(p.id for p in first.parts)  # none of the second's parts


async def test_concurrent_enqueues_of_one_identifier_store_one_and_all_get_it(new_store: Opener) -> None:
    async with opened(new_store) as a, opened(new_store) as b:
        for round_ in range(10):
            txns = [transaction(f"sys|race-{round_}") for _ in range(4)]
            results = await asyncio.gather(*(s.enqueue(t) for s, t in zip((a, b, a, b), txns, strict=True)))
            assert len({r.id for r in results}) == 1, results
            winner = results[0]
            assert winner in txns
            for t in txns:
                assert (await a.outbox_transaction(t.id) is not None) == (t.id == winner.id)
        claimed = await a.claim(NOW, LEASE, 1000, "w1")
        assert len(claimed) == 10 * 2  # two parts of each of the ten winners, nothing of the losers


async def test_an_enqueue_that_fails_stores_nothing_of_it(store: Store) -> None:
    first = transaction()
    await store.enqueue(first)
    clash = transaction()  # its second part's id is one stored already: the insert of the parts fails
    clash = replace(clash, parts=(clash.parts[0], replace(clash.parts[1], id=first.parts[0].id)))
    with pytest.raises(StoreUnavailable):
        await store.enqueue(clash)
    assert await store.outbox_transaction(clash.id) is None
    # nothing left of it: neither its first part nor its identifier
    assert sorted(part_ids(await store.claim(NOW, LEASE, 100, "w1"))) == sorted(p.id for p in first.parts)
    fixed = replace(clash, parts=clash.parts[:1])
    assert await store.enqueue(fixed) == fixed
    # and the store goes on working after the failure
    assert part_ids(await store.claim(NOW, LEASE, 100, "w1")) == [fixed.parts[0].id]


# ---- claim ------------------------------------------------------------------------------------------


async def test_claim_takes_due_parts_only(store: Store) -> None:
    later = transaction(next_attempt=NOW + 60, targets=("viva",))
    now = transaction(targets=("cosmic",))
    await store.enqueue(later)
    await store.enqueue(now)
    claimed = await store.claim(NOW, 1000, 10, "w1")  # (a lease that runs past the test)
    assert claimed == [(now.id, replace(now.parts[0], attempts=1))]  # (the claim's attempt counted)
    assert await store.claim(NOW + 59.9, 1000, 10, "w1") == []
    assert await store.claim(NOW + 60, 1000, 10, "w1") == [(later.id, replace(later.parts[0], attempts=1))]


async def test_claim_takes_at_most_limit_the_longest_due_first(store: Store) -> None:
    txns = [transaction(targets=("viva",), next_attempt=NOW - i) for i in range(5)]  # the last: longest due
    for t in txns:
        await store.enqueue(t)
    same = transaction(targets=("viva", "cosmic"), next_attempt=NOW - 10)  # equally due: enqueue order
    await store.enqueue(same)
    first = await store.claim(NOW, LEASE, 3, "w1")
    assert part_ids(first) == [same.parts[0].id, same.parts[1].id, txns[4].parts[0].id]
    assert [t for t, _ in first] == [same.id, same.id, txns[4].id]
    second = await store.claim(NOW, LEASE, 3, "w1")
    assert part_ids(second) == [txns[3].parts[0].id, txns[2].parts[0].id, txns[1].parts[0].id]
    assert part_ids(await store.claim(NOW, LEASE, 3, "w1")) == [txns[0].parts[0].id]
    assert await store.claim(NOW, LEASE, 3, "w1") == []


async def test_a_leased_part_is_not_claimed_again_until_its_lease_runs_out(store: Store) -> None:
    txn = transaction(targets=("viva",))
    await store.enqueue(txn)
    assert part_ids(await store.claim(NOW, LEASE, 10, "w1")) == [txn.parts[0].id]
    assert await store.claim(NOW, LEASE, 10, "w2") == []
    assert await store.claim(NOW + LEASE - 0.01, LEASE, 10, "w2") == []
    assert part_ids(await store.claim(NOW + LEASE, LEASE, 10, "w2")) == [txn.parts[0].id]  # expired
    assert await store.claim(NOW + LEASE + 1, LEASE, 10, "w1") == []  # w2's lease runs now


async def test_delivered_and_parked_parts_are_never_claimed(store: Store) -> None:
    txn = transaction()
    await store.enqueue(txn)
    viva, cosmic = txn.parts
    await store.claim(NOW, LEASE, 10, "w1")
    assert await store.delivered(viva.id, NOW + 1, "w1")
    assert await store.park(cosmic.id, "422 refused: bad code", "w1")
    assert await store.claim(NOW + 10 * LEASE, LEASE, 10, "w1") == []
    parts = await state_of(store, txn)
    assert (parts[viva.id].state, parts[viva.id].delivered_at, parts[viva.id].attempts) == (
        "delivered",
        NOW + 1,
        1,
    )
    assert (parts[cosmic.id].state, parts[cosmic.id].reason) == ("parked", "422 refused: bad code")
    assert parts[cosmic.id].delivered_at is None
    # an outcome is final: not even its worker changes it
    assert not await store.retry(viva.id, NOW, "late", "w1")
    assert not await store.delivered(cosmic.id, NOW, "w1")
    assert await state_of(store, txn) == parts


async def test_a_retried_part_counts_the_attempt_and_waits_for_its_next_attempt(store: Store) -> None:
    txn = transaction(targets=("cosmic",))
    await store.enqueue(txn)
    (part,) = txn.parts
    await store.claim(NOW, LEASE, 10, "w1")
    assert await store.retry(part.id, NOW + 5, "503 from cosmic", "w1")
    stored = (await state_of(store, txn))[part.id]
    assert (stored.state, stored.attempts, stored.next_attempt, stored.reason) == (
        "pending",
        1,
        NOW + 5,
        "503 from cosmic",
    )
    assert await store.claim(NOW + 4.9, LEASE, 10, "w2") == []  # not due yet (the lease is released, though)
    claimed = await store.claim(NOW + 5, LEASE, 10, "w2")
    assert [(t, p.attempts, p.reason) for t, p in claimed] == [(txn.id, 2, "503 from cosmic")]
    assert not await store.retry(part.id, NOW + 6, "w1 has no lease", "w1")
    assert await store.retry(part.id, NOW + 20, "timeout", "w2")
    assert (await state_of(store, txn))[part.id].attempts == 2


async def test_a_claim_counts_the_attempt_so_a_send_that_never_reports_still_spends_one(
    store: Store,
) -> None:
    """A worker killed mid-send records no outcome; were attempts counted only by outcomes, a part
    that kills its worker every time (or a host that keeps dying) would be claimed for ever."""
    txn = transaction(targets=("viva",))
    await store.enqueue(txn)
    for n in (1, 2, 3):
        claimed = await store.claim(NOW + (n - 1) * LEASE, LEASE, 10, f"w{n}")
        assert [p.attempts for _, p in claimed] == [n]  # (the worker is gone: no outcome)
    assert (await state_of(store, txn))[txn.parts[0].id].attempts == 3


async def test_only_the_lease_holder_records_an_outcome(store: Store) -> None:
    txn = transaction(targets=("viva",))
    await store.enqueue(txn)
    (part,) = txn.parts
    assert not await store.delivered(part.id, NOW, "w1")  # not claimed at all
    await store.claim(NOW, LEASE, 10, "w1")
    before = await state_of(store, txn)
    assert not await store.delivered(part.id, NOW, "w2")
    assert not await store.retry(part.id, NOW + 1, "x", "w2")
    assert not await store.park(part.id, "x", "w2")
    assert not await store.delivered(uuid.uuid4().hex, NOW, "w1")  # no such part
    assert await state_of(store, txn) == before
    # w1's lease runs out and w2 claims the part: w1, late, may not overwrite w2's outcome
    await store.claim(NOW + LEASE, LEASE, 10, "w2")
    assert not await store.park(part.id, "w1 gave up", "w1")
    assert not await store.delivered(part.id, NOW + LEASE + 1, "w1")
    assert await store.delivered(part.id, NOW + LEASE + 1, "w2")
    assert (await state_of(store, txn))[part.id].state == "delivered"


async def test_a_lease_is_renewed_by_its_holder_only_and_not_once_another_took_the_part(store: Store) -> None:
    txn = transaction(targets=("viva",))
    await store.enqueue(txn)
    (part,) = txn.parts
    await store.claim(NOW, LEASE, 10, "w1")
    assert not await store.renew(part.id, NOW + 2 * LEASE, "w2")  # not its lease
    assert await store.renew(part.id, NOW + 2 * LEASE, "w1")
    assert await store.claim(NOW + LEASE, LEASE, 10, "w2") == []  # (renewed: not yet run out)
    assert part_ids(await store.claim(NOW + 2 * LEASE, LEASE, 10, "w2")) == [part.id]
    assert not await store.renew(part.id, NOW + 4 * LEASE, "w1")  # taken over: w1 sends no more
    assert await store.delivered(part.id, NOW + 2 * LEASE + 1, "w2")
    assert not await store.renew(part.id, NOW + 5 * LEASE, "w2")  # settled: nothing to renew


async def test_a_late_outcome_of_an_expired_lease_nobody_took_over_counts(store: Store) -> None:
    """The lease ran out but no one claimed the part since: its worker still has the only word."""
    txn = transaction(targets=("viva",))
    await store.enqueue(txn)
    await store.claim(NOW, LEASE, 10, "w1")
    assert await store.delivered(txn.parts[0].id, NOW + 2 * LEASE, "w1")
    assert await store.claim(NOW + 3 * LEASE, LEASE, 10, "w2") == []


# ---- several workers, crashes, restarts -------------------------------------------------------------


async def test_two_stores_claiming_at_once_never_hold_one_part_together(new_store: Opener) -> None:
    """Two stores on one database (two hosts), two claimers each, all at once: a part is held by one
    claimer at a time, and each is delivered exactly once."""
    async with opened(new_store) as a, opened(new_store) as b:
        txns = [transaction(targets=("viva", "cosmic", "npo")) for _ in range(40)]
        for t in txns:
            await a.enqueue(t)
        total = sum(len(t.parts) for t in txns)
        held: dict[str, str] = {}  # part id -> the claimer holding it now
        delivered: list[str] = []
        doubles: list[str] = []
        rng = random.Random(22)

        async def work(store: Store, worker: str) -> None:
            for _ in range(300):  # bounded: each round claims some or finds none left
                if len(delivered) == total:
                    return
                claimed = await store.claim(NOW, LEASE, 3, worker)
                for _, part in claimed:
                    if part.id in held:
                        doubles.append(part.id)
                    held[part.id] = worker
                await asyncio.sleep(0)
                for _, part in claimed:
                    del held[part.id]  # (before the outcome: then another may take it, rightly)
                    if rng.random() < 0.3:  # a transient failure: due again at once
                        assert await store.retry(part.id, NOW, "503", worker)
                    else:
                        assert await store.delivered(part.id, NOW, worker)
                        delivered.append(part.id)
                if not claimed:
                    await asyncio.sleep(0.001)

        claimers = [work(a, "a1"), work(b, "b1"), work(a, "a2"), work(b, "b2")]
        await asyncio.wait_for(asyncio.gather(*claimers), 60)
        assert doubles == []
        assert sorted(delivered) == sorted(p.id for t in txns for p in t.parts)  # each exactly once


async def test_a_worker_that_dies_mid_delivery_leaves_the_part_to_another_after_its_lease(
    new_store: Opener,
) -> None:
    txn = transaction()
    crashed = new_store()
    await crashed.open()
    await crashed.enqueue(txn)
    assert len(await crashed.claim(NOW, LEASE, 10, "crashed-worker")) == 2
    await crashed.close()  # gone without an outcome (as a killed process: nothing but the lease is left)
    async with opened(new_store) as restarted:
        assert await restarted.claim(NOW + LEASE / 2, LEASE, 10, "new-worker") == []
        claimed = await restarted.claim(NOW + LEASE, LEASE, 10, "new-worker")
        assert sorted(part_ids(claimed)) == sorted(p.id for p in txn.parts)
        assert [p.requests for _, p in claimed] == [
            p.requests for p in txn.parts
        ]  # all that is needed to send
        for _, p in claimed:
            assert await restarted.delivered(p.id, NOW + LEASE + 1, "new-worker")


async def test_everything_survives_closing_and_reopening(new_store: Opener) -> None:
    txn = transaction(requests=3, targets=("viva", "cosmic", "npo"))
    async with opened(new_store) as s:
        await s.enqueue(txn)
        await s.claim(NOW, LEASE, 1, "w1")  # viva: claimed, lease running
        await s.claim(NOW, LEASE, 1, "w1")  # cosmic
        assert await s.retry(txn.parts[1].id, NOW + 50, "timeout", "w1")
        before = await state_of(s, txn)
    async with opened(new_store) as s:
        assert await state_of(s, txn) == before
        assert (await s.outbox_transaction(txn.id)) == replace(
            txn, parts=tuple(before[p.id] for p in txn.parts)
        )
        assert await s.enqueue(transaction(txn.identifier)) == await s.outbox_transaction(txn.id)
        # the lease survived too: only npo is free now, viva after the lease, cosmic at its next attempt
        assert part_ids(await s.claim(NOW + 1, LEASE, 10, "w2")) == [txn.parts[2].id]
        assert await s.park(txn.parts[2].id, "400 from npo", "w2")
        assert part_ids(await s.claim(NOW + LEASE, LEASE, 10, "w2")) == [txn.parts[0].id]
        assert await s.delivered(txn.parts[0].id, NOW + LEASE, "w2")
    async with opened(new_store) as s:
        viva = (await state_of(s, txn))[txn.parts[0].id]
        assert (viva.state, viva.delivered_at) == ("delivered", NOW + LEASE)
        assert part_ids(await s.claim(NOW + 50, LEASE, 10, "w3")) == [txn.parts[1].id]


async def test_a_closed_store_refuses_the_outbox(new_store: Opener) -> None:
    store = new_store()
    await store.open()
    await store.close()
    with pytest.raises(StoreUnavailable):
        await store.enqueue(transaction())
    with pytest.raises(StoreUnavailable):
        await store.claim(NOW, LEASE, 1, "w")
    with pytest.raises(StoreUnavailable):
        await store.outbox_transaction("x")
    with pytest.raises(StoreUnavailable):
        await store.delivered("x", NOW, "w")


# ---- backoff ----------------------------------------------------------------------------------------


def test_backoff_is_exponential_with_full_jitter_and_capped() -> None:
    rng = random.Random(7)
    for attempt, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (10_000, 60.0)):
        waits = [backoff(attempt, 1.0, 60.0, rng) for _ in range(400)]
        assert all(0.0 <= w <= ceiling for w in waits), attempt
        assert max(waits) > 0.9 * ceiling and min(waits) < 0.1 * ceiling  # jitter over the whole range
    assert backoff(3, 0.5, 60.0, random.Random(1)) == backoff(3, 0.5, 60.0, random.Random(1))
    assert backoff(0, 2.0, 60.0, rng) <= 2.0
