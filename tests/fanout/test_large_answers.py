"""A long history is never cut silently (issue 21): an answer larger than ``facade.max_body_bytes``
is decoded and mapped as it arrives, record by record, so every record of it is in the answer; an
answer cut off — the connection closed mid-body, or past ``facade.max_answer_bytes`` — names its
source as degraded, says that part of its answer is missing, keeps the records that arrived whole,
and is never cached as complete.

Long answers are made here, with the simulators' own record and envelope builders (the simulators'
data stays as it is): over the in-memory transport, and over HTTP from the NPÖ simulator.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import orjson
import pytest

from proxy.app import compile_mappings
from proxy.cache import MemoryCache
from proxy.fanout.client import BackendClient
from proxy.fanout.transport import CHUNK_BYTES, Canned, MemoryTransport
from proxy.fhir.ids import PatientIds
from proxy.mapping import engine
from proxy.mapping.engine import SHARE_FROM, map_records
from proxy.mapping.stream import AnswerStream
from proxy.pipeline.facade import Facade
from proxy.pipeline.fetch import context, fetch_and_map
from proxy.redact.policy import compile_policy
from proxy.settings import DEMO_PATIENT_ID_KEY, Settings, load_settings
from proxy.simulators import npo
from proxy.simulators.population import TOLVAN, at
from proxy.types import MappedResource, SourceOutcome, SourceStatus
from tests import contract
from tests.clock import FakeClock
from tests.conftest import BASE, RESOURCE_IDS, pid

NAMES = ("cosmic", "viva", "npo")
EMPTY = {name: contract.empty_answer(name) for name in ("cosmic", "viva", "npo")}
LAB = next(c for c in npo.CONTRACTS if c.record == "laboratoryOrderOutcome")
OLD_CAP = 8 * 1024 * 1024  # the cap an answer was dropped whole at, before this issue


def lab_records(n: int, *, pnr: str = TOLVAN.pnr) -> list[dict[str, Any]]:
    """``n`` NPÖ lab results for ``pnr`` from the other region, newest first, one a day."""
    rng = random.Random(n)
    out = []
    for i in range(n):
        npu, name, unit, low, high, lo, hi = rng.choice(npo._GEN_LABS)
        record = npo.lab(
            pnr, f"LONG-{i}", at(10 + i, 8), npu, name, round(rng.uniform(lo, hi)), unit, low, high
        )
        out.append(npo._drop_none(record))
    return out


@functools.cache
def lab_answer(n: int) -> bytes:
    """The NPÖ simulator's GetLaboratoryOrderOutcome answer holding ``lab_records(n)``."""
    return bytes(npo.response(LAB, TOLVAN.pnr, lab_records(n)).body)  # type: ignore[arg-type]


@functools.cache
def _settings() -> Settings:
    return load_settings()


def memory_facade(transports: Mapping[str, MemoryTransport], *, cache: bool = False, **caps: int) -> Facade:
    """The pipeline over in-memory backends, with the facade's caps (``max_body_bytes``,
    ``max_answer_bytes``) as configured unless ``caps`` says otherwise; ``cache``: a memory cache."""
    settings = _settings()
    facade = replace(settings.facade, **caps)
    settings = replace(settings, facade=facade)
    clients = {
        name: BackendClient.open(
            replace(settings.backend(name), base_url=f"http://{name}.test"),
            facade.max_body_bytes,
            max_answer_bytes=facade.max_answer_bytes,
            transport=transports[name],
            clock=FakeClock(),
        )
        for name in NAMES
    }
    return Facade(
        settings=settings,
        mappings=compile_mappings(settings, RESOURCE_IDS),
        clients=clients,
        ids=PatientIds(DEMO_PATIENT_ID_KEY),
        policy=compile_policy(settings.policy),
        cache=MemoryCache(ttl_s=30, max_stale_s=300, max_entries=1000, clock=FakeClock()) if cache else None,
    )


def lab_url(live: Facade) -> str:
    spec = next(m.request for m in live.mappings.by_backend["npo"] if m.name == "npo/laboratory-outcomes")
    ctx = context(live, "npo", live.ids.patient(TOLVAN.pnr))
    return live.clients["npo"].base + spec.render(ctx).target


def lab_cache_key(live: Facade) -> str:
    spec = next(m.request for m in live.mappings.by_backend["npo"] if m.name == "npo/laboratory-outcomes")
    return live.mappings.cache_key("npo", spec.key)


def nothing_held() -> dict[str, MemoryTransport]:
    """Every backend answers that it holds nothing (the test adds NPÖ's lab answer)."""
    return {name: MemoryTransport(default=Canned(EMPTY[name])) for name in NAMES}


async def fetch(
    transports: dict[str, MemoryTransport], lab: Canned, **kw: Any
) -> tuple[Facade, list[MappedResource], dict[str, SourceOutcome]]:
    live = memory_facade(transports, **kw)
    transports["npo"].answers[lab_url(live)] = lab
    mapped, outcomes = await fetch_and_map(live, live.ids.patient(TOLVAN.pnr), live.mappings.resource_types)
    for c in live.clients.values():
        await c.close()
    return live, mapped, {o.source: o for o in outcomes}


def lab_ids(mapped: list[MappedResource]) -> list[str]:
    """The NPÖ lab record ids of the mapped Observations, in the order mapped."""
    return [
        i["value"]
        for r in mapped
        if r.mapping == "npo/laboratory-outcomes"
        for i in r.resource["identifier"]
        if i.get("system", "").endswith(":record:laboratory-outcomes")
    ]


def every_lab_id(n: int) -> list[str]:
    return [f"{npo.OTHER_REGION_SYSTEM}|LONG-{i}" for i in range(n)]


# ---- an answer over the old cap is mapped whole ---------------------------------------------------


async def test_an_npo_answer_over_the_old_cap_is_mapped_completely() -> None:
    """Today's configuration: ≈ 3,500 other-region lab results, more than the 8 MiB an answer was
    dropped at, are every one in the answer, and NPÖ answered."""
    n = 3500
    body = lab_answer(n)
    assert len(body) > OLD_CAP
    _, mapped, outcomes = await fetch(nothing_held(), Canned(body))
    assert outcomes["npo"].status is SourceStatus.OK, outcomes["npo"]
    assert sorted(lab_ids(mapped)) == sorted(every_lab_id(n))


@pytest.mark.parametrize("chunked_from", [1024, 64 * 1024, 1 << 20])
async def test_the_answer_read_as_it_arrives_is_the_answer_read_whole(chunked_from: int) -> None:
    """The same answer read whole (under the cap) and decoded as it arrives (over it): the same
    resources, in the same order — whichever byte the incremental decode starts at."""
    body = lab_answer(400)
    _, whole, _ = await fetch(nothing_held(), Canned(body), max_body_bytes=len(body))
    _, streamed, outcomes = await fetch(nothing_held(), Canned(body), max_body_bytes=chunked_from)
    assert outcomes["npo"].status is SourceStatus.OK
    assert len(lab_ids(streamed)) == 400
    assert [orjson.dumps(r.resource) for r in streamed] == [orjson.dumps(r.resource) for r in whole]
    assert [r._replace(resource=None) for r in streamed] == [r._replace(resource=None) for r in whole]


async def test_a_complete_streamed_answer_is_cached() -> None:
    n = 300
    live, _, outcomes = await fetch(nothing_held(), Canned(lab_answer(n)), max_body_bytes=4096, cache=True)
    assert outcomes["npo"].status is SourceStatus.OK
    assert live.cache is not None
    entry = await live.cache.get("npo", lab_cache_key(live), live.ids.patient(TOLVAN.pnr).fhir_id)
    assert entry is not None and sorted(lab_ids(list(entry[0].resources))) == sorted(every_lab_id(n))


# ---- a cut answer is degraded, partial and never cached -------------------------------------------


async def _assert_cut(live: Facade, mapped: list[MappedResource], outcome: SourceOutcome, n: int) -> None:
    """NPÖ degraded, saying part of its answer is missing; what arrived whole is in the answer (at
    least one record, not all); nothing of the lab answer was cached."""
    assert outcome.status.degraded
    assert "part of its answer is missing" in outcome.detail
    got = lab_ids(mapped)
    assert 0 < len(got) < n
    assert set(got) < set(every_lab_id(n))
    assert TOLVAN.pnr not in outcome.detail
    assert live.cache is not None
    assert await live.cache.get("npo", lab_cache_key(live), live.ids.patient(TOLVAN.pnr).fhir_id) is None


async def test_an_answer_cut_off_mid_body_is_degraded_and_not_cached() -> None:
    n = 400
    body = lab_answer(n)
    live, mapped, outcomes = await fetch(
        nothing_held(), Canned(body, cut_after=len(body) // 2), max_body_bytes=4096, cache=True
    )
    assert outcomes["npo"].status is SourceStatus.ERROR
    assert outcomes["npo"].detail.startswith("connection closed before the answer was complete")
    await _assert_cut(live, mapped, outcomes["npo"], n)


async def test_an_answer_over_the_answer_cap_is_degraded_and_not_cached() -> None:
    n = 400
    body = lab_answer(n)
    cap = len(body) // 3
    live, mapped, outcomes = await fetch(
        nothing_held(), Canned(body), max_body_bytes=4096, max_answer_bytes=cap, cache=True
    )
    assert outcomes["npo"].status is SourceStatus.INVALID
    assert f"larger than {cap} bytes" in outcomes["npo"].detail
    await _assert_cut(live, mapped, outcomes["npo"], n)


async def test_a_body_malformed_mid_way_is_unreadable_not_partial() -> None:
    """A body that stops being XML half way is not a cut answer but a broken one: INVALID, nothing
    cached — and the records before the fault are not passed off as the answer either."""
    n = 300
    body = lab_answer(n)
    half = len(body) // 2
    broken = body[:half] + b"<<not xml>>" + body[half:]
    live, mapped, outcomes = await fetch(nothing_held(), Canned(broken), max_body_bytes=4096, cache=True)
    assert outcomes["npo"].status is SourceStatus.INVALID
    assert "could not be read" in outcomes["npo"].detail
    assert lab_ids(mapped) == []
    assert live.cache is not None
    assert await live.cache.get("npo", lab_cache_key(live), live.ids.patient(TOLVAN.pnr).fhir_id) is None


# ---- JSON (Cosmic) --------------------------------------------------------------------------------


def cosmic_labs(n: int) -> bytes:
    """A Cosmic labresults answer of ``n`` results (the shape of the simulator's)."""
    items = [
        {
            "resultId": f"LR-{i}",
            "analysisCode": "NPU02319",
            "analysisName": "B-Hemoglobin",
            "value": 120 + i % 30,
            "unit": "g/L",
            "referenceRange": {"low": 134, "high": 170},
            "sampledAt": "2024-01-02 08:00",
            "resultAt": "2024-01-02 14:30",
            "status": "FINAL",
            "comment": 'a "quoted" note, with {braces} and [brackets] \\ and ünïcödé',
            "careUnit": {
                "hsaId": "SE2321000016-15CG",
                "name": "VC Norr",
                "providerHsaId": "SE2321000016-1ABC",
            },
        }
        for i in range(n)
    ]
    return orjson.dumps({"patientId": "19121212-1212", "items": items, "total": n})


async def test_a_long_json_answer_is_mapped_completely() -> None:
    n = 2000
    body = cosmic_labs(n)
    transports = {name: MemoryTransport(default=Canned(EMPTY[name])) for name in NAMES}
    live = memory_facade(transports, max_body_bytes=16 * 1024)
    spec = next(m.request for m in live.mappings.by_backend["cosmic"] if m.name == "cosmic/labresults")
    url = (
        live.clients["cosmic"].base
        + spec.render(context(live, "cosmic", live.ids.patient(TOLVAN.pnr))).target
    )
    transports["cosmic"].answers[url] = Canned(body)
    mapped, outcomes = await fetch_and_map(live, live.ids.patient(TOLVAN.pnr), live.mappings.resource_types)
    whole_live = memory_facade(transports, max_body_bytes=len(body))
    whole, _ = await fetch_and_map(
        whole_live, whole_live.ids.patient(TOLVAN.pnr), whole_live.mappings.resource_types
    )
    labs = [r for r in mapped if r.mapping == "cosmic/labresults"]
    assert {o.source: o.status for o in outcomes}["cosmic"] is SourceStatus.OK
    assert len(labs) == n
    # (the same resources; the order the backends' answers came in is the transport's)
    assert sorted(orjson.dumps(r.resource) for r in mapped) == sorted(orjson.dumps(r.resource) for r in whole)


# ---- a long answer's repeated elements are shared ------------------------------------------------


@pytest.mark.parametrize("whole", [True, False])
async def test_a_long_answers_repeated_elements_are_one_object_and_the_same_json(
    monkeypatch: pytest.MonkeyPatch, whole: bool
) -> None:
    """From ``SHARE_FROM`` records an answer's equal elements (the lab's code, its performer, the
    subject, a meta) are one object, read whole or as it arrives — and every resource's JSON is
    the one it has when nothing is shared."""
    n = 600
    body = lab_answer(n)
    caps = {"max_body_bytes": len(body) if whole else 4096}
    _, shared, _ = await fetch(nothing_held(), Canned(body), **caps)
    monkeypatch.setattr(engine, "SHARE_FROM", 10**9)
    monkeypatch.setattr(engine, "SHARE_BYTES", -1)  # (the stream shares whatever its length: none)
    _, apart, _ = await fetch(nothing_held(), Canned(body), **caps)
    labs = [r.resource for r in shared if r.mapping == "npo/laboratory-outcomes"]
    alone = [r.resource for r in apart if r.mapping == "npo/laboratory-outcomes"]
    assert len(labs) == len(alone) == n
    assert [orjson.dumps(r) for r in labs] == [orjson.dumps(r) for r in alone]
    for key in ("subject", "meta", "code", "performer"):  # (one object per distinct value)
        assert len({id(r[key]) for r in labs}) == len({orjson.dumps(r[key]) for r in labs}), key
        assert len({id(r[key]) for r in alone}) == n  # (each built anew when nothing is shared)
    assert len({id(r["subject"]) for r in labs}) == 1
    assert len({id(r["code"]) for r in labs}) < n / 10


# ---- over HTTP, from the NPÖ simulator ------------------------------------------------------------


@pytest.fixture
def long_npo_history(monkeypatch: pytest.MonkeyPatch) -> int:
    """The NPÖ simulator holds 600 more lab results for Tolvan (the simulator's data otherwise as it is)."""
    n = 600
    entry_of = npo.entry_of

    def with_long_history(person: Any, *args: Any) -> Any:
        # (each patient's entry is made when first asked for: proxy/simulators/lazy.py)
        entry = entry_of(person, *args)
        if person.pnr == TOLVAN.pnr:
            entry = {**entry, "laboratoryOrderOutcome": lab_records(n) + entry["laboratoryOrderOutcome"]}
        return entry

    monkeypatch.setattr(npo, "entry_of", with_long_history)
    return n


EVERYTHING = f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything"


def long_labs(bundle: dict[str, Any]) -> list[str]:
    return [
        e["resource"]["id"]
        for e in bundle.get("entry", [])
        if e["resource"]["resourceType"] == "Observation"
        and any(
            i["value"].startswith(f"{npo.OTHER_REGION_SYSTEM}|LONG-")
            for i in e["resource"].get("identifier", [])
        )
    ]


def npo_issue(bundle: dict[str, Any]) -> str | None:
    from tests.source_status import degraded

    issue = degraded(bundle).get("npo")
    return None if issue is None else issue["details"]["text"]


async def test_over_http_a_long_npo_answer_is_complete(facade: Any, long_npo_history: int) -> None:
    async with facade(facade_overrides={"max_body_bytes": 64 * 1024, "max_count": 5000}) as f:
        status, bundle = await f.get(EVERYTHING, params={"_count": "5000"})
    assert status == 200 and npo_issue(bundle) is None
    assert len(long_labs(bundle)) == long_npo_history


async def test_over_http_a_long_answer_cut_mid_body_is_degraded_and_not_cached(
    facade: Any, long_npo_history: int
) -> None:
    """The simulator promises the whole body, sends half and closes the connection: NPÖ is named,
    part of its answer is missing, what arrived is shown — and nothing was cached to stand in for
    it when NPÖ then fails outright."""
    async with facade(facade_overrides={"max_body_bytes": 64 * 1024, "max_count": 5000}, cache=True) as f:
        await f.faults("npo", drop=True, path_contains="GetLaboratoryOrderOutcome")
        status, cut = await f.get(EVERYTHING, params={"_count": "5000"})
        await f.faults("npo", error_status=503)
        _, after = await f.get(EVERYTHING, params={"_count": "5000"})
    assert status == 200
    detail = npo_issue(cut)
    assert detail is not None and "part of its answer is missing" in detail
    assert 0 < len(long_labs(cut)) < long_npo_history
    assert long_labs(after) == []  # no stale entry of the cut answer stood in
    later = npo_issue(after)
    assert later is not None and "HTTP 503" in later


async def test_a_long_answer_is_mapped_a_piece_at_a_time_with_turns_of_the_loop_between(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Head-of-line: other requests get the event loop between the pieces of a long answer — at
    most ``CHUNK_BYTES`` of it are mapped in one go. (Before: the part read before the answer turned
    out long, ``max_body_bytes`` — 1 MiB, ~1,000 records — was mapped as one block, and so were
    chunks that arrived while the loop was busy.)"""
    fed, worst, done = 0, 0, False
    real = AnswerStream.feed

    def feed(self: AnswerStream, chunk: bytes) -> bool:
        nonlocal fed, worst
        fed += len(chunk)
        worst = max(worst, fed)
        return real(self, chunk)

    async def another_request() -> None:  # (a turn of the loop: what it fed since starts anew)
        nonlocal fed
        while not done:
            fed = 0
            await asyncio.sleep(0)

    monkeypatch.setattr(AnswerStream, "feed", feed)
    other = asyncio.ensure_future(another_request())
    n = 3500
    _, mapped, outcomes = await fetch(nothing_held(), Canned(lab_answer(n)))
    done = True
    await other
    assert outcomes["npo"].status is SourceStatus.OK
    assert sorted(lab_ids(mapped)) == sorted(every_lab_id(n))
    assert 0 < worst <= CHUNK_BYTES


async def test_mapping_a_long_answer_as_it_arrives_is_not_the_backends_time() -> None:
    """The budget of a backend and the request's deadline are for the backends' answers: the time
    the facade spends mapping a long one as it arrives is given back (here mapping takes many
    times the budget, the transport none of it) — NPÖ answered (so its breaker counted a success),
    nothing timed out."""
    n = 3500
    transports = nothing_held()
    live = memory_facade(transports)
    live = replace(
        live,
        settings=replace(live.settings, facade=replace(live.settings.facade, deadline_s=0.15)),
        clients={
            name: replace(c, settings=replace(c.settings, total_timeout_s=0.1))
            for name, c in live.clients.items()
        },
    )
    transports["npo"].answers[lab_url(live)] = Canned(lab_answer(n))
    mapped, outcomes = await fetch_and_map(live, live.ids.patient(TOLVAN.pnr), live.mappings.resource_types)
    assert {o.source: o.status for o in outcomes} == dict.fromkeys(NAMES, SourceStatus.OK)
    assert len(lab_ids(mapped)) == n


def test_a_value_that_is_not_json_skips_its_record_in_a_long_answer_as_in_a_short_one() -> None:
    """(Sharing serialises each element: a value JSON cannot carry must still only skip its record.)"""
    live = memory_facade(nothing_held())
    labs = next(m for m in live.mappings.by_backend["cosmic"] if m.name == "cosmic/labresults")
    real = labs.fields

    def fields(record: Any, ctx: Any) -> Any:
        built = real(record, ctx)
        return {**built, "note": [{"text": b"not json"}]} if record["resultId"] == "LR-5" else built

    broken = replace(labs, fields=fields)
    ctx = context(live, "cosmic", live.ids.patient(TOLVAN.pnr))
    for n in (SHARE_FROM + 10, 20):
        body = orjson.loads(cosmic_labs(n))
        out, skipped = map_records(broken, body, ctx, source_uri="urn:x", priority=0)
        assert skipped == 1 and len(out) == n - 1
