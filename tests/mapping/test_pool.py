"""Long answers mapped in processes (``proxy.mapping.pool``, ``facade.map_workers``).

End to end: the long-history patient and a demo patient through a facade whose pool maps every
answer of 16 KiB or more — the same Bundle as the facade mapping everything in its loop, every
source answered, and the pool did map them; her list past the answer cap still asked again by
period. The processes run below the loop's priority. The queue in front of the processes: the
shortest answer waiting goes first, an asker that leaves gives its turn on, a process that dies
makes its answer unreadable (never empty) and the pool is opened again. ``HeldAnswer``: an answer
too large to read whole is held for a process; past the hold limit, or cut off, it is mapped as it
arrives, as without a pool.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import orjson
import pytest

from proxy.app import pool_mappings
from proxy.edge.http import FACADE_KEY
from proxy.mapping import pool as pool_module
from proxy.mapping.pool import NICE, HeldAnswer, MapPool, PoolJob
from proxy.mapping.run import MappedAnswer, map_answer
from proxy.mapping.stream import AnswerStream
from proxy.settings import DEMO_PATIENT_ID_KEY, Settings
from proxy.simulators.population import DEMO_PEOPLE, INGEGERD, LONG_HISTORIES
from proxy.slack import at_once
from tests import contract
from tests.conftest import BASE, pid
from tests.fhir.test_long_history import CAP
from tests.mapping.test_stream import answers, same, streamed
from tests.source_status import degraded, statuses

# (the processes run below the priority of everything else: on a machine busy with parallel tests
# they get the leftovers, and the windows of a cut list are asked within what is left of the deadline)
POOLED = {"max_count": 20_000, "map_workers": 1, "map_from_bytes": 16 * 1024, "deadline_s": 60.0}


def records(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """The Bundle's entries, but the OperationOutcome's (it times the sources); each ``fullUrl``
    without the server's address (each facade has its own port)."""
    return [
        {**e, "fullUrl": e["fullUrl"].partition(BASE)[2]}
        for e in bundle["entry"]
        if e["resource"]["resourceType"] != "OperationOutcome"
    ]


async def test_a_pool_answers_exactly_what_the_loop_answers(facade: Any) -> None:
    people = [*DEMO_PEOPLE, INGEGERD]
    asked = [INGEGERD, DEMO_PEOPLE[0]]
    bundles = {}
    for name, overrides in (("loop", {"max_count": 20_000}), ("pool", POOLED)):
        async with facade(people=people, facade_overrides=overrides) as f:
            bundles[name] = [
                (await f.get(f"{BASE}/Patient/{pid(p.pnr)}/$everything", params={"_count": "20000"}))[1]
                for p in asked
            ]
            pool = f.client.server.app[FACADE_KEY].map_pool
            if name == "pool":
                assert pool is not None and pool.mapped >= 10  # (her long lists, and the demo's)
            else:
                assert pool is None
    for loop, pooled in zip(bundles["loop"], bundles["pool"], strict=True):
        assert (
            statuses(pooled)
            == statuses(loop)
            == {"cosmic": "answered", "viva": "answered", "npo": "answered"}
        )
        assert records(pooled) == records(loop)
    assert len(records(bundles["pool"][0])) == LONG_HISTORIES[INGEGERD.pnr][0] + 1  # (+ her Patient)


async def test_with_a_pool_a_list_cut_at_the_answer_cap_is_still_asked_again_by_period(facade: Any) -> None:
    caps = {**POOLED, "max_body_bytes": 64 * 1024, "max_answer_bytes": CAP}
    async with facade(people=[*DEMO_PEOPLE, INGEGERD], facade_overrides=caps) as f:
        status, bundle = await f.get(
            f"{BASE}/Patient/{pid(INGEGERD.pnr)}/$everything", params={"_count": "20000"}
        )
    assert status == 200
    assert statuses(bundle) == {"cosmic": "answered", "viva": "answered", "npo": "answered"}, degraded(bundle)
    got = [e["resource"] for e in records(bundle) if e["resource"]["resourceType"] != "Patient"]
    assert len({(r["resourceType"], r["id"]) for r in got}) == len(got) == LONG_HISTORIES[INGEGERD.pnr][0]


async def test_an_answer_too_large_to_read_whole_is_held_for_the_pool(facade: Any) -> None:
    """Her NPÖ lab results (2.1 MB) are past ``max_body_bytes``: held, then mapped in the pool —
    the only answer there, with the threshold at 1 MiB — and every record is in the answer."""
    caps = {**POOLED, "max_body_bytes": 64 * 1024, "map_from_bytes": 1024 * 1024}
    async with facade(people=[*DEMO_PEOPLE, INGEGERD], facade_overrides=caps) as f:
        status, bundle = await f.get(
            f"{BASE}/Patient/{pid(INGEGERD.pnr)}/$everything", params={"_count": "20000"}
        )
        pool = f.client.server.app[FACADE_KEY].map_pool
        assert pool is not None and pool.mapped == 1
    assert status == 200
    assert statuses(bundle) == {"cosmic": "answered", "viva": "answered", "npo": "answered"}, degraded(bundle)
    assert len(records(bundle)) == LONG_HISTORIES[INGEGERD.pnr][0] + 1


async def test_the_processes_run_below_the_event_loops_priority(settings: Settings) -> None:
    pool = MapPool(pool_mappings, (settings, DEMO_PATIENT_ID_KEY), 2, 0)
    try:
        await pool.start()
        pids = list(pool._pool._processes)  # type: ignore[attr-defined]
        assert len(pids) == 2
        ours = os.getpriority(os.PRIO_PROCESS, 0)
        assert [os.getpriority(os.PRIO_PROCESS, p) for p in pids] == [min(19, ours + NICE)] * 2
        # and one maps as the loop does
        b = contract.COSMIC
        group, ctx, raw = max(await answers(b), key=lambda a: len(a[2]))
        whole_key = group[0].request.fetch_key
        got, took = await pool.map("cosmic", whole_key, raw, dict(ctx), source_uri="urn:test", priority=1)
        same(got, map_answer(raw, group, dict(ctx), source_uri="urn:test", priority=1))
        assert got.resources and took > 0
    finally:
        await pool.close()


# -- the queue in front of the processes (threads stand in for them) ---------------------------------


class Threads(MapPool):
    def _open(self) -> Executor:
        return ThreadPoolExecutor(self._workers)


class Held:
    """A stand-in for ``_map``: records each body it is given; ``b"first"`` (``waits_for``) waits
    for ``release``."""

    def __init__(self) -> None:
        self.order: list[bytes] = []
        self.waits_for: Callable[[bytes], bool] = lambda body: body == b"first"
        self.release = threading.Event()
        self.fail: type[BaseException] | None = None

    def __call__(self, backend: str, key: str, body: bytes, *rest: Any) -> tuple[MappedAnswer, float]:
        self.order.append(body)
        if self.waits_for(body):
            assert self.release.wait(10)
        if self.fail is not None:
            raise self.fail()
        return MappedAnswer([], readable=True), 1.0


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> Held:
    stand_in = Held()
    monkeypatch.setattr(pool_module, "_map", stand_in)
    return stand_in


def ask(pool: MapPool, body: bytes) -> asyncio.Task[tuple[MappedAnswer, float]]:
    return asyncio.ensure_future(pool.map("cosmic", "k", body, {}, source_uri="urn:test", priority=1))


async def until(condition: Any) -> None:
    for _ in range(500):  # (bounded: 5 s)
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("never happened")


async def test_the_shortest_answer_waiting_goes_first(held: Held) -> None:
    pool = Threads(pool_mappings, (), 1, 0)
    first = ask(pool, b"first")
    await until(lambda: held.order)
    waiting = [ask(pool, b"L" * 1000), ask(pool, b"s" * 10), ask(pool, b"m" * 100)]
    await asyncio.sleep(0.05)
    assert held.order == [b"first"]  # (one process: the others wait)
    held.release.set()
    await asyncio.wait_for(asyncio.gather(first, *waiting), 5)
    assert held.order == [b"first", b"s" * 10, b"m" * 100, b"L" * 1000]
    await until(lambda: pool._busy == 0)
    assert pool.mapped == 4
    await pool.close()


async def test_with_two_processes_a_long_answer_leaves_one_for_the_rest(held: Held) -> None:
    pool = Threads(pool_mappings, (), 2, 4)
    pool.long_bytes = 16  # (answers of 16 bytes or more are long)
    long = b"first" + b"L" * 20
    held.waits_for = lambda body: True  # (every answer waits for the release)
    first = ask(pool, long)
    await until(lambda: held.order)
    second_long = ask(pool, b"second" + b"L" * 20)
    modest = ask(pool, b"modest")
    await until(lambda: len(held.order) == 2)
    await asyncio.sleep(0.05)
    assert held.order == [long, b"modest"]  # (the free process was kept for it)
    held.release.set()
    await asyncio.wait_for(asyncio.gather(first, second_long, modest), 5)
    assert held.order[2] == b"second" + b"L" * 20
    await until(lambda: pool._busy == 0 and pool._long == 0)
    await pool.close()


class LeavesAtItsTurn(Threads):
    """Its ``victim`` leaves the moment its turn is given (before it can run)."""

    victim: asyncio.Task[Any] | None = None

    def _next(self) -> None:
        super()._next()
        if self.victim is not None and self._busy:
            self.victim.cancel()
            self.victim = None


async def test_an_asker_that_leaves_gives_its_turn_on(held: Held) -> None:
    pool = LeavesAtItsTurn(pool_mappings, (), 1, 0)
    first = ask(pool, b"first")
    await until(lambda: held.order)
    left, given_up, next_one = ask(pool, b"aa"), ask(pool, b"bbb"), ask(pool, b"cccc")
    await asyncio.sleep(0.05)
    left.cancel()  # while waiting: its place is skipped
    await asyncio.sleep(0)
    pool.victim = given_up  # and this one leaves when "first" ends and gives it its turn
    held.release.set()
    await asyncio.wait_for(asyncio.gather(first, next_one), 5)  # (without the pass-on: never)
    for task in (left, given_up):
        with pytest.raises(asyncio.CancelledError):
            await task
    assert held.order == [b"first", b"cccc"]
    await until(lambda: pool._busy == 0)
    await pool.close()


async def test_a_process_is_free_when_its_answer_is_mapped_not_when_its_asker_leaves(held: Held) -> None:
    pool = Threads(pool_mappings, (), 1, 0)
    first = ask(pool, b"first")
    await until(lambda: held.order)
    first.cancel()  # its asker leaves; the process still maps it
    nxt = ask(pool, b"next")
    await asyncio.sleep(0.05)
    assert held.order == [b"first"] and pool._busy == 1  # (not handed to the next yet)
    held.release.set()
    await asyncio.wait_for(nxt, 5)
    assert held.order == [b"first", b"next"]
    await until(lambda: pool._busy == 0)
    await pool.close()


async def test_a_process_that_dies_makes_its_answer_unreadable_and_the_pool_opens_again(held: Held) -> None:
    pool = Threads(pool_mappings, (), 1, 0)
    broken = pool._pool
    held.fail = BrokenProcessPool
    mapped, _ = await ask(pool, b"x")
    assert not mapped.readable and mapped.resources == []  # (a degraded source, never "nothing")
    assert pool._pool is not broken
    held.fail = None
    mapped, _ = await ask(pool, b"y")
    assert mapped.readable
    await pool.close()


class RefusingThreads(MapPool):
    """Its executor refuses the next submission with ``refuse`` (then takes them again)."""

    refuse: type[BaseException] | None = None

    def _open(self) -> Executor:
        pool = self

        class Refusing(ThreadPoolExecutor):
            def submit(self, *args: Any, **kwargs: Any) -> Any:
                refuse, pool.refuse = pool.refuse, None
                if refuse is not None:
                    raise refuse()
                return super().submit(*args, **kwargs)

        return Refusing(self._workers)


async def test_a_submission_refused_gives_its_place_on(held: Held) -> None:
    pool = RefusingThreads(pool_mappings, (), 1, 0)
    pool.refuse = RuntimeError  # (say, a pool being shut down)
    with pytest.raises(RuntimeError):
        await ask(pool, b"refused")
    pool.refuse = BrokenProcessPool  # a process died before it was sent: unreadable, pool reopened
    mapped, _ = await ask(pool, b"broken")
    assert not mapped.readable
    mapped, _ = await asyncio.wait_for(ask(pool, b"next"), 5)  # (with one process: never, if leaked)
    assert mapped.readable and held.order == [b"next"]
    await until(lambda: pool._busy == 0)
    await pool.close()


async def test_a_dropped_pool_job_stops_waiting_for_its_answer(held: Held) -> None:
    pool = Threads(pool_mappings, (), 1, 0)
    first = ask(pool, b"first")
    await until(lambda: held.order)
    finished: list[str] = []

    async def mapped_as() -> None:
        await pool.map("cosmic", "k", b"dropped", {}, source_uri="urn:test", priority=1)
        finished.append("dropped")

    job = PoolJob(mapped_as())
    await asyncio.sleep(0.05)
    job.drop()
    held.release.set()
    await asyncio.wait_for(first, 5)
    await until(lambda: pool._busy == 0)
    assert finished == [] and held.order == [b"first"]  # (never sent, never recorded)
    await pool.close()


async def test_a_pool_process_logs_through_the_worker(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """A warning a process logs (records skipped) is the worker's: its loggers, its format."""
    b = contract.COSMIC
    group, ctx, raw = max(await answers(b), key=lambda a: len(a[2]))
    doc = orjson.loads(raw)
    records = doc["items"] if isinstance(doc, dict) else doc
    records[0] = "not a record"  # (skipped, with a warning)
    pool = MapPool(pool_mappings, (settings, DEMO_PATIENT_ID_KEY), 1, 0)
    try:
        await pool.start()
        with caplog.at_level(logging.WARNING, logger="proxy.mapping.run"):
            await pool.map(
                "cosmic",
                group[0].request.fetch_key,
                orjson.dumps(doc),
                dict(ctx),
                source_uri="urn:test",
                priority=1,
            )
            await until(lambda: any("skipped" in r.getMessage() for r in caplog.records))
        [record] = [r for r in caplog.records if "skipped" in r.getMessage()]
        assert record.name == "proxy.mapping.run" and record.process != os.getpid()
        assert record.getMessage().startswith("cosmic: 1 record(s) were skipped")  # (not formatted twice)
    finally:
        await pool.close()


# -- an answer too large to read whole, held for a process ----------------------------------------------


async def test_a_held_answer_is_whole_or_past_its_limit_or_cut_mapped_as_it_arrives() -> None:
    b = contract.NPO
    group, ctx, raw = max(await answers(b), key=lambda a: len(a[2]))
    whole = map_answer(raw, group, dict(ctx), source_uri="urn:test", priority=1)
    assert len(whole.resources) > 10

    def stream() -> AnswerStream:
        return AnswerStream(group, dict(ctx), source_uri="urn:test", priority=1)

    def fed(limit: int, end: int, complete: bool) -> HeldAnswer:
        sink = HeldAnswer(limit, stream)
        for at in range(0, end, 1000):
            assert sink.feed(raw[at : min(at + 1000, end)])
        sink.close(complete)
        if sink.stream is not None:
            at_once(sink.steps())
        return sink

    kept = fed(len(raw), len(raw), True)  # within the limit: the body, for a process
    assert kept.body == raw and kept.stream is None
    past = fed(len(raw) // 3, len(raw), True)  # past it: mapped as it arrived, as without a pool
    assert past.body is None and past.stream is not None
    same(past.stream.answer(), whole)
    cut = fed(len(raw), len(raw) * 2 // 3, False)  # cut off: what arrived whole, unreadable
    assert cut.body is None and cut.stream is not None
    same(cut.stream.answer(), streamed(group, ctx, raw, [1000], cut=len(raw) * 2 // 3))
    assert not cut.stream.answer().readable and cut.stream.answer().resources


class Counting:
    """A stand-in stream: counts the pieces fed to it; ``broken_at``: the piece it cannot read."""

    def __init__(self, broken_at: int | None = None) -> None:
        self.fed = 0
        self.closed: bool | None = None
        self.broken_at = broken_at

    def feed(self, chunk: bytes) -> bool:
        self.fed += 1
        return self.fed != self.broken_at

    def close(self, complete: bool) -> None:
        self.closed = complete


def test_what_was_held_is_fed_a_piece_at_a_time_never_at_once() -> None:
    """Past the limit, each arriving piece feeds at most two: the backlog shrinks, and no call does
    a backlog's work at once (a 64 MiB one would be seconds of one block in the loop)."""
    counting = Counting()
    sink = HeldAnswer(10 * 100, lambda: counting)  # type: ignore[arg-type,return-value]
    for _ in range(10):  # held
        assert sink.feed(b"x" * 100)
    assert counting.fed == 0
    steps = []
    for _ in range(4):  # past the limit: the stream opens, and catches up two pieces a call
        before = counting.fed
        assert sink.feed(b"x" * 100)
        steps.append(counting.fed - before)
    assert steps == [2, 2, 2, 2]
    sink.close(True)
    assert counting.closed is None  # (a backlog is left: fed in the mapping job's steps)
    job = sink.steps()
    left = 14 - counting.fed
    for _ in range(left):
        before = counting.fed
        next(job)
        assert counting.fed - before == 1  # one piece a step
    with pytest.raises(StopIteration):
        next(job)
    assert counting.fed == 14 and counting.closed is True


def test_a_held_document_that_breaks_past_the_limit_stops_the_reading() -> None:
    counting = Counting(broken_at=3)
    sink = HeldAnswer(500, lambda: counting)  # type: ignore[arg-type,return-value]
    for _ in range(5):
        assert sink.feed(b"x" * 100)
    assert sink.feed(b"x" * 100)  # (pieces 1 and 2 fed)
    assert not sink.feed(b"x" * 100)  # piece 3 cannot be read: nothing more is wanted
    sink.close(False)
    at_once(sink.steps())
    assert counting.fed == 3 and counting.closed is False
