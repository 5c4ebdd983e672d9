"""A long history's stages give the event loop turns (``proxy.slack``: steps driven at once or in
turns): the same result either way, and other tasks run between the slices (no head-of-line)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any, TypeVar

from proxy.merge.facts import merge, merge_in_turns
from proxy.merge.lookalike import mark, mark_in_turns
from proxy.pipeline import stages
from proxy.pipeline.exchange import Exchange
from proxy.redact.policy import compile_policy, redact, redact_in_turns
from proxy.settings import load_settings
from proxy.slack import SLICE, SLICE_S, Steps, at_once, in_turns, slice_ends
from proxy.types import MappedResource, PatientRef, Query

T = TypeVar("T")
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ICD = "urn:oid:1.2.752.116.1.1.1.1.3"
THREAT = {"system": "urn:fhir-facade:security-label", "code": "THREAT"}
SOURCES = (("cosmic", "P1"), ("viva", "P2"), ("npo", "P3"))
N = 6 * SLICE  # records: a long history, several slices


def history(n: int = N) -> list[MappedResource]:
    """``n`` records over ten years from three producers: visits and diagnoses with look-alikes
    (the same day, another producer), facts held twice (the same origin from two sources), some
    labelled away from care staff, some referring to others (one of them hidden)."""
    out = []
    for i in range(n):
        source, producer = SOURCES[i % 3]
        day = (i // 3) % 3650
        date = f"{2015 + day // 365}-{1 + day // 31 % 12:02d}-{1 + day % 28:02d}"
        rid = f"r{i}"
        r: dict[str, Any] = {
            "id": rid,
            "meta": {"source": f"urn:x:{source}"},
            "subject": {"reference": "Patient/p"},
        }
        if i % 2:
            r |= {
                "resourceType": "Encounter",
                "status": "finished",
                "class": {"system": ACT, "code": "AMB" if i % 5 else "HH"},
                "period": {"start": f"{date}T10:00:00+01:00", "end": f"{date}T11:00:00+01:00"},
            }
        else:
            r |= {"resourceType": "Condition", "code": {"coding": [{"system": ICD, "code": f"I{i % 7}"}]}}
            r["onsetDateTime"] = date
        if i % 97 == 0:
            r["meta"]["security"] = [THREAT]
        refs: tuple[str, ...] = ()
        if i % 11 == 0 and i > 0:
            target = out[i - 1].resource
            r["extension"] = [
                {"url": "urn:x", "valueReference": {"reference": f"{target['resourceType']}/{target['id']}"}}
            ]
            refs = (f"{target['resourceType']}/{target['id']}",)
        origin_id = rid if i % 13 else f"r{i - i % 3}"  # every 13th: one fact, held by two sources
        origin = f"{r['resourceType']}|{producer if i % 13 else 'P1'}|{origin_id}"
        out.append(MappedResource(r, source, f"{source}/x", origin, i % 3, refs))
    return out


async def ticks_during(work: Awaitable[T]) -> tuple[T, int]:
    """``work``'s result, and how many times another task ran while it was awaited."""
    ticks, done = 0, False

    async def other() -> None:
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(other())
    await asyncio.sleep(0)
    before = ticks
    try:
        result = await work
    finally:
        during, done = ticks - before, True
        await task
    return result, during


async def _now(value: T) -> T:
    return value


def _counting(n: int, seen: list[int]) -> Steps[int]:
    total = 0
    for i in range(n):
        if slice_ends(i):
            yield
        seen.append(i)
        total += i
    return total


async def test_steps_give_the_same_result_at_once_and_in_turns_and_only_in_turns_let_others_run() -> None:
    assert at_once(_counting(3 * SLICE, [])) == sum(range(3 * SLICE))
    seen: list[int] = []
    total, during = await ticks_during(in_turns(_counting(3 * SLICE, seen)))
    assert total == sum(range(3 * SLICE)) and seen == list(range(3 * SLICE))
    assert during >= 3  # a turn after each slice
    _, during = await ticks_during(_now(at_once(_counting(3 * SLICE, []))))
    assert during == 0  # (the test can tell: run at once, nothing else runs)


def _slow(n: int, each_s: float) -> Steps[int]:
    for i in range(n):
        until = time.perf_counter() + each_s
        while time.perf_counter() < until:  # (a record that takes each_s to handle)
            pass
        if slice_ends(i):
            yield
    return n


async def test_a_slice_ends_after_its_time_as_well_as_after_its_records() -> None:
    """256 records of 0.1 ms: half of SLICE, so a count alone gives no turn; a slice ends after
    SLICE_S (the clock read every 32 records, here every 3.2 ms) — about eight turns."""
    assert 256 < SLICE and 32 * 0.0001 > SLICE_S
    done, during = await ticks_during(in_turns(_slow(256, 0.0001)))
    assert done == 256 and during >= 4


async def test_merge_redact_and_look_alikes_in_turns_give_the_same_answer_and_let_others_run() -> None:
    records = history()
    policy = compile_policy(load_settings().policy)
    kept = merge(records)
    assert len(kept) < len(records)  # (facts held twice were merged)
    kept_in_turns, during = await ticks_during(merge_in_turns(records))
    assert kept_in_turns == kept and during >= N // SLICE - 1
    shown = redact(kept, policy, "clinician", subject="Patient/p")
    assert len(shown) < len(kept)  # (the labelled ones are hidden)
    shown_in_turns, during = await ticks_during(
        redact_in_turns(kept, policy, "clinician", subject="Patient/p")
    )
    assert shown_in_turns == shown and during >= N // SLICE - 1
    marked = mark(kept, shown)
    assert any("extension" in r and r not in shown for r in marked)  # (look-alikes were marked)
    marked_in_turns, during = await ticks_during(mark_in_turns(kept, shown))
    assert marked_in_turns == marked and during >= N // SLICE - 1


async def test_the_filters_stage_over_a_long_history_lets_others_run_and_selects_the_same() -> None:
    resources = [r.resource for r in history()]
    query = Query(
        interaction="search-type",
        resource_types=frozenset({"Encounter"}),
        patient=PatientRef(pnr="191212121212", fhir_id="p", system="urn:x"),
    )
    x = Exchange(request_id="", principal=None, query=query)
    x.resources = resources
    _, during = await ticks_during(stages.select(None, x))  # type: ignore[arg-type]  # (unused)
    assert x.answer is not None
    assert x.answer.resources == [r for r in resources if r["resourceType"] == "Encounter"]
    assert during >= N // SLICE - 1
