"""Mapping CPU in isolation: how long turning the backends' raw answers into FHIR takes, and where.

    python bench/mapping.py [--patients 40] [--repeat 5]

Asks the simulators (in this process, no added latency) every request of the ``$everything`` plan
for the demo and ``--patients`` generated patients, keeps the raw answers, then times
``map_answer`` over them with nothing else running: per contract, and split into decoding the body
(JSON, or XML into dicts), the engine's reference scan (``references``: redaction trusts it), the
clinical time merge sorts by (``sort_time``) and the rest (the compiled builders). Figures are
milliseconds per patient, the best of ``--repeat`` passes. Under load the same work costs more
(caches are colder, see ``bench/profile.py``); this is for comparing mapping changes, quickly.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp

from proxy import loop
from proxy.app import compile_mappings
from proxy.fhir.ids import PatientIds, ResourceIds
from proxy.mapping import engine
from proxy.mapping.compiler import CompiledMapping
from proxy.mapping.registry import MappingSet, request_context
from proxy.mapping.run import decode, map_answer
from proxy.pipeline.fetch import plan_requests
from proxy.settings import DEMO_PATIENT_ID_KEY, Settings, load_settings
from proxy.simulators.harness import people_for, running_simulators


@dataclass(frozen=True, slots=True)
class Answer:
    backend: str
    contract: str  # the request's path, as configured
    body: bytes | None
    ctx: dict[str, str]
    readers: tuple[CompiledMapping, ...]
    source_uri: str
    priority: int


async def capture(settings: Settings, mappings: MappingSet, patients: int) -> tuple[list[Answer], int]:
    """Every raw answer of the ``$everything`` plan, for every patient."""
    people = people_for(settings, patients, long_histories=False)  # (per-patient figures: as before)
    ids = PatientIds(DEMO_PATIENT_ID_KEY)
    plan = plan_requests(mappings, settings.source_priority, mappings.resource_types)
    priority = {name: i for i, name in enumerate(settings.source_priority)}
    answers = []
    async with running_simulators(settings, people) as urls, aiohttp.ClientSession() as http:
        for person in people:
            for backend, specs in plan.items():
                b = settings.backend(backend)
                ctx = request_context(ids.patient(person.pnr), backend, dict(b.vars))
                for spec in specs:
                    path, query, headers, body = spec.render(ctx)
                    url = urls[backend] + path
                    async with http.request(spec.method, url, params=query, data=body, headers=headers) as r:
                        raw = await r.read() if r.status == 200 else None
                    readers = tuple(mappings.readers.get((backend, spec.key), ()))
                    answers.append(
                        Answer(backend, spec.path, raw, ctx, readers, b.source_uri, priority[backend])
                    )
    return answers, len(people)


def best_ms(work: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - t0)
    return best * 1000


def map_all(answers: list[Answer]) -> None:
    for a in answers:
        map_answer(a.body, a.readers, a.ctx, source_uri=a.source_uri, priority=a.priority)


@contextmanager
def without(name: str, stand_in: Callable[[Any], Any]) -> Iterator[None]:
    """The engine with one of its per-resource steps replaced (to time the rest)."""
    real = getattr(engine, name)
    setattr(engine, name, stand_in)
    try:
        yield
    finally:
        setattr(engine, name, real)


def report(answers: list[Answer], patients: int, repeat: int) -> None:
    resources = sum(
        len(map_answer(a.body, a.readers, a.ctx, source_uri=a.source_uri, priority=a.priority).resources)
        for a in answers
    )
    total = best_ms(lambda: map_all(answers), repeat)
    with without("references", lambda r: ()):
        no_refs = best_ms(lambda: map_all(answers), repeat)
        with without("sort_time", lambda r: None):
            neither = best_ms(lambda: map_all(answers), repeat)
    bodies = [
        (a.body, a.readers[0].request.format) for a in answers if a.readers and a.body and a.body.strip()
    ]
    decoding = best_ms(lambda: [decode(body, fmt) for body, fmt in bodies], repeat)
    xml = best_ms(lambda: [decode(body, fmt) for body, fmt in bodies if fmt == "xml"], repeat)
    per = patients
    print(f"{patients} patients, {len(answers)} answers, {resources} resources")
    each_us = total * 1000 / max(1, resources)
    print(f"  mapping, all of it   {total / per:6.3f} ms/patient  ({each_us:.1f} µs/resource)")
    print(f"    decoding           {decoding / per:6.3f}  (of which XML {xml / per:.3f})")
    print(f"    reference scan     {(total - no_refs) / per:6.3f}")
    print(f"    clinical time      {(no_refs - neither) / per:6.3f}")
    print(f"    builders, the rest {(neither - decoding) / per:6.3f}")
    by_contract: dict[tuple[str, str], list[Answer]] = defaultdict(list)
    for a in answers:
        by_contract[(a.backend, a.contract)].append(a)
    print("  per contract (ms/patient):")
    timed = [(best_ms(functools.partial(map_all, group), repeat), key) for key, group in by_contract.items()]
    for ms, (backend, contract) in sorted(timed, reverse=True):
        print(f"    {ms / per:6.3f}  {backend:<7} {contract}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=40, help="generated patients besides the demo ones")
    ap.add_argument("--repeat", type=int, default=5, help="passes; the best one counts")
    args = ap.parse_args()
    if not (0 <= args.patients <= 2000 and 1 <= args.repeat <= 100):
        ap.error("--patients 0-2000, --repeat 1-100")
    settings = load_settings()
    mappings = compile_mappings(settings, ResourceIds(DEMO_PATIENT_ID_KEY))
    answers, patients = loop.run(capture(settings, mappings, args.patients))
    report(answers, patients, args.repeat)


if __name__ == "__main__":
    main()
