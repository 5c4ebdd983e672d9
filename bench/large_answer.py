"""One NPÖ answer over the old 8 MiB cap: what mapping it costs, in memory and CPU (issue 21).

    python bench/large_answer.py [--records 3500] [--repeat 3]

A throwaway HTTP server (its own process, loopback) answers NPÖ's GetLaboratoryOrderOutcome
with ``--records`` other-region lab results (the NPÖ simulator's own record and envelope
builders, one a day; 3,500 are ≈ 8.9 MB) and every other request with "nothing here". The facade's pipeline
(``fetch_and_map``, real aiohttp transport) asks for all types, each mode in a fresh process:

    before   the old setting, max_body_bytes 8 MiB and no incremental decode: the answer is refused
    whole    the cap raised past the answer: read whole, decoded in one go (map_answer)
    stream   this issue's default: read whole up to 1 MiB, a larger answer mapped as it arrives

Per mode, the median of ``--repeat`` fresh processes, each measuring its first fetch: records
mapped, the NPÖ outcome, the growth of the process's peak resident size (VmHWM, reset through
/proc/self/clear_refs just before) while fetching and mapping, the growth still held after it (the
mapped resources: the answer), and the CPU time of the fetch. Then the shared cache's compression:
every entry the demo patients' answers make, and the long answer's, as ``RedisCache`` stores them.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import random
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp import web

from proxy.app import compile_mappings
from proxy.cache import RedisCache
from proxy.fanout.client import BackendClient
from proxy.fhir.ids import PatientIds, ResourceIds
from proxy.pipeline.facade import Facade
from proxy.pipeline.fetch import fetch_and_map
from proxy.redact.policy import compile_policy
from proxy.settings import DEMO_PATIENT_ID_KEY, Settings, load_settings
from proxy.simulators import npo
from proxy.simulators.harness import running_simulators
from proxy.simulators.population import DEMO_PEOPLE, TOLVAN, at

LAB = next(c for c in npo.CONTRACTS if c.record == "laboratoryOrderOutcome")
MODES = {
    "before": {"max_body_bytes": 8 * 1024 * 1024, "max_answer_bytes": 8 * 1024 * 1024, "sink": False},
    "whole": {"max_body_bytes": 1 << 30, "max_answer_bytes": 1 << 30, "sink": True},
    "stream": {"max_body_bytes": 1024 * 1024, "max_answer_bytes": 256 * 1024 * 1024, "sink": True},
}


def lab_answer(n: int) -> bytes:
    rng = random.Random(n)
    records = []
    for i in range(n):
        npu, name, unit, low, high, lo, hi = rng.choice(npo._GEN_LABS)
        value = round(rng.uniform(lo, hi))
        records.append(
            npo._drop_none(npo.lab(TOLVAN.pnr, f"LONG-{i}", at(10 + i, 8), npu, name, value, unit, low, high))
        )
    return bytes(npo.response(LAB, TOLVAN.pnr, records).body)  # type: ignore[arg-type]


def serve(body: bytes, port: Any) -> None:
    """The throwaway backend (a child process): the lab answer, else nothing."""

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        if request.path == LAB.path:
            return web.Response(body=body, content_type="text/xml")
        if request.path.startswith("/vp/"):
            return web.Response(body=b"<Envelope><Body/></Envelope>", content_type="text/xml")
        return web.json_response({})

    async def main() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port.value = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        await asyncio.Event().wait()

    asyncio.run(main())


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def rss_kib() -> tuple[int, int]:
    """(VmRSS, VmHWM) of this process, KiB."""
    fields = dict(
        line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line
    )
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def facade(settings: Settings, base: str, mode: dict[str, Any]) -> Facade:
    settings = replace(
        settings,
        facade=replace(
            settings.facade, max_body_bytes=mode["max_body_bytes"], max_answer_bytes=mode["max_answer_bytes"]
        ),
        backends=tuple(replace(b, base_url=base, total_timeout_s=120) for b in settings.backends),
    )
    settings = replace(settings, facade=replace(settings.facade, deadline_s=120))
    clients = {
        b.name: BackendClient.open(
            b, settings.facade.max_body_bytes, max_answer_bytes=settings.facade.max_answer_bytes
        )
        for b in settings.backends
    }
    return Facade(
        settings=settings,
        mappings=compile_mappings(settings, ResourceIds(DEMO_PATIENT_ID_KEY)),
        clients=clients,
        ids=PatientIds(DEMO_PATIENT_ID_KEY),
        policy=compile_policy(settings.policy),
    )


def measure(name: str, base: str, out: Any) -> None:
    """One mode, in a fresh process: the figures into ``out`` (a queue)."""
    mode = MODES[name]

    async def run() -> dict[str, Any]:
        live = facade(load_settings(), base, mode)
        if not mode["sink"]:
            import proxy.pipeline.fetch as fetch_module

            original = fetch_module.fan_out

            async def without_sink(*args: Any, **kw: Any) -> Any:  # the old fan-out: no sink
                kw.pop("open_sink", None)
                return await original(*args, **kw)

            fetch_module.fan_out = without_sink  # type: ignore[assignment]
        patient = live.ids.patient(TOLVAN.pnr)
        types = live.mappings.resource_types
        # (the first fetch of a fresh process: memory freed by an earlier one would hide the peak)
        gc.collect()
        reset_peak()
        before, _ = rss_kib()
        started = time.process_time()
        mapped, outcomes = await fetch_and_map(live, patient, types)
        cpu = time.process_time() - started
        _, peak = rss_kib()
        after, _ = rss_kib()
        mapped_n = sum(1 for r in mapped if r.mapping == "npo/laboratory-outcomes")
        outcome = next(f"{o.status.value}: {o.detail}" for o in outcomes if o.source == "npo")
        for c in live.clients.values():
            await c.close()
        return {
            "mode": name,
            "records_mapped": mapped_n,
            "npo": outcome,
            "cpu_ms": round(cpu * 1000),
            "peak_rss_growth_mib": round((peak - before) / 1024, 1),
            "rss_growth_holding_the_result_mib": round((after - before) / 1024, 1),
        }

    out.put(asyncio.run(run()))


class _Captured:
    """A Redis client that keeps what ``RedisCache.put`` would store."""

    def __init__(self) -> None:
        self.values: list[bytes] = []

    async def get(self, key: str) -> None:
        return None  # (every lookup a miss: each answer is fetched, mapped and put)

    async def set(self, key: str, value: bytes, px: int) -> None:
        self.values.append(value)

    async def aclose(self) -> None:
        pass


async def compression(long_answer: bytes) -> dict[str, Any]:
    """The stored size of every entry of the demo patients' answers, and of the long answer's."""
    import orjson

    settings = load_settings()
    mappings = compile_mappings(settings, ResourceIds(DEMO_PATIENT_ID_KEY))
    ids = PatientIds(DEMO_PATIENT_ID_KEY)
    captured = _Captured()
    cache = RedisCache(captured, ttl_s=30, max_stale_s=30)
    plain = 0
    async with running_simulators(settings, list(DEMO_PEOPLE), faults={}) as urls:
        live = settings.with_backend_urls(urls)
        clients = {b.name: BackendClient.open(b, live.facade.max_body_bytes) for b in live.backends}
        f = Facade(
            settings=live,
            mappings=mappings,
            clients=clients,
            ids=ids,
            policy=compile_policy(settings.policy),
            cache=cache,
        )
        for person in DEMO_PEOPLE:
            await fetch_and_map(f, ids.patient(person.pnr), mappings.resource_types)
        for c in clients.values():
            await c.close()
    demo_values = list(captured.values)
    import zlib

    demo_plain = sum(len(zlib.decompress(v)) for v in demo_values)
    demo_stored = sum(len(v) for v in demo_values)
    captured.values.clear()
    # the long answer's entry (mapped whole here; the same resources either way)
    from proxy.mapping.registry import request_context
    from proxy.mapping.run import map_answer

    readers = next(
        v for (b, _), v in mappings.readers.items() if any(m.name == "npo/laboratory-outcomes" for m in v)
    )
    ctx = request_context(ids.patient(TOLVAN.pnr), "npo", dict(settings.backend("npo").vars))
    answer = map_answer(long_answer, readers, ctx, source_uri="urn:x", priority=2)
    await cache.put("npo", "k", "p", tuple(answer.resources))
    (stored,) = captured.values
    plain = len(orjson.dumps({"stored_at": 0.0, "resources": [r._asdict() for r in answer.resources]}))
    started = time.process_time()
    for _ in range(5):
        zlib.decompress(stored)
    decompress_ms = (time.process_time() - started) / 5 * 1000
    started = time.process_time()
    for _ in range(5):
        orjson.loads(zlib.decompress(stored))
    decode_ms = (time.process_time() - started) / 5 * 1000
    return {
        "demo_entries": len(demo_values),
        "demo_json_bytes": demo_plain,
        "demo_stored_bytes": demo_stored,
        "demo_ratio": round(demo_plain / demo_stored, 1),
        "long_entry_json_bytes": plain,
        "long_entry_stored_bytes": len(stored),
        "long_ratio": round(plain / len(stored), 1),
        "long_decompress_ms": round(decompress_ms, 1),
        "long_decompress_and_decode_ms": round(decode_ms, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--records", type=int, default=3500)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--modes", default="before,whole,stream")
    args = parser.parse_args()
    body = lab_answer(args.records)
    ctx = multiprocessing.get_context("spawn")
    port = ctx.Value("i", 0)
    server = ctx.Process(target=serve, args=(body, port), daemon=True)
    server.start()
    try:
        while not port.value:
            time.sleep(0.05)
        base = f"http://127.0.0.1:{port.value}"
        print(f"answer: {args.records} lab results, {len(body):,} bytes")
        results = []
        for name in args.modes.split(","):
            runs = []
            for _ in range(args.repeat):  # each in a fresh process
                out = ctx.Queue()
                p = ctx.Process(target=measure, args=(name, base, out))
                p.start()
                runs.append(out.get(timeout=600))
                p.join()
            best = dict(runs[0])
            for key in ("cpu_ms", "peak_rss_growth_mib", "rss_growth_holding_the_result_mib"):
                best[key] = sorted(r[key] for r in runs)[len(runs) // 2]  # the median
            results.append(best)
            print(json.dumps(best, ensure_ascii=False))
        print(json.dumps({"compression": asyncio.run(compression(body))}))
    finally:
        server.terminate()
        server.join()


if __name__ == "__main__":
    main()
