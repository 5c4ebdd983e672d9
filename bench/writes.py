"""Writing a home visit (issue 22): the latency of the 201 path, and how fast the outbox drains
with one target slow.

    python bench/writes.py [--visits 60] [--rate 5] [--slow-ms 300] [--latency-ms 20] [--concurrency 8]

The processes of ``bench/run.py`` (the three simulators with ``--latency-ms`` on every answer, one
facade worker on SQLite, a home-care nurse's token with the write scopes). Each visit is the README's
example (examples/home-visit.json: an Encounter, six vital signs, a note, two administrations — ten
entries, written to Viva and to Cosmic: 20 requests) under a fresh Bundle.identifier, for Tolvan
(known to both: a target that does not know the patient refuses the visit, and its part is parked).

1. **The 201 path**: ``--visits`` POSTs at ``--rate`` a second (open model); per POST the time to its
   answer, and whether every entry was 201 (delivered to both targets within ``outbox.wait_s``).
2. **Drain with Cosmic slow**: Cosmic's simulator answers ``--slow-ms`` later; ``--visits`` POSTs,
   ``--concurrency`` at a time; then every visit's Task is polled until completed. Reported: the
   POSTs' latency (each waits ``outbox.wait_s`` at most, then answers 202), how many were 202, the
   time from the first POST until every part was delivered, and the drain rate (parts and requests
   a second).

Loopback only; every process is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from yarl import URL

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run

from proxy.fhir.ids import PatientIds
from proxy.simulators.population import TOLVAN

EXAMPLE = run.REPO / "examples" / "home-visit.json"
EXAMPLE_PATIENT = "Patient/kremj5bexrrkx4tqbkshl4dvai"


def visit(patient_id: str) -> bytes:
    text = EXAMPLE.read_text(encoding="utf-8").replace(EXAMPLE_PATIENT, f"Patient/{patient_id}")
    bundle: dict[str, Any] = orjson.loads(text)
    bundle["identifier"] = {"system": "urn:bench:visits", "value": uuid.uuid4().hex}
    return orjson.dumps(bundle)


async def post(
    http: aiohttp.ClientSession, base: str, body: bytes, headers: dict[str, str]
) -> dict[str, Any]:
    started = time.perf_counter()
    async with http.post(f"{base}/fhir", data=body, headers=headers) as resp:
        answer = await resp.json(content_type=None)
        ms = (time.perf_counter() - started) * 1000
        if resp.status != 200:
            return {"ms": ms, "status": resp.status, "created": False, "task": None}
        statuses = {e["response"]["status"] for e in answer["entry"]}
        return {
            "ms": ms,
            "status": 200,
            "created": statuses == {"201 Created"},
            "task": resp.headers["Location"],
        }


def summary(label: str, results: list[dict[str, Any]]) -> dict[str, Any]:
    ms = sorted(r["ms"] for r in results)
    pct = run.percentiles(ms)
    out = {
        "posts": len(results),
        "errors": sum(r["status"] != 200 for r in results),
        "created_201": sum(r["created"] for r in results),
        "p50_ms": pct["p50"],
        "p90_ms": pct["p90"],
        "p99_ms": pct["p99"],
    }
    print(f"{label}: {out}")
    return out


async def bench(args: argparse.Namespace, procs: run.Processes, tmp: Path) -> dict[str, Any]:
    urls = await run.start_simulators(procs, args)
    private, pem = run.make_issuer(tmp)
    config = run.write_config(tmp, "facade", urls, pem, {"enabled": False})
    secret = os.urandom(32)  # (serve refuses the public demo key: the example's patient id is replaced)
    key = PatientIds(secret)
    base, _ = await run.start_facade(
        procs, "facade", config, base64.b64encode(secret).decode(), args.start_timeout
    )
    token = run.clinician_token(private, 4 * 3600, audience="homecare")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    patients = [key.encode(TOLVAN.pnr)]  # (known to Viva and Cosmic alike: neither refuses the visit)
    results: dict[str, Any] = {"visits": args.visits, "rate": args.rate, "slow_ms": args.slow_ms}
    async with aiohttp.ClientSession() as http:
        # 1. the 201 path, at a steady rate
        pending: list[asyncio.Task[dict[str, Any]]] = []
        start = time.perf_counter()
        for i in range(args.visits):
            await asyncio.sleep(max(0.0, start + i / args.rate - time.perf_counter()))
            body = visit(patients[i % len(patients)])
            pending.append(asyncio.ensure_future(post(http, base, body, headers)))
        results["created_path"] = summary("201 path", list(await asyncio.gather(*pending)))
        # 2. Cosmic slow: how fast does the outbox drain?
        async with http.put(f"{urls['cosmic']}/_sim/faults", json={"latency_ms": args.slow_ms}) as r:
            assert r.status == 200, await r.text()
        gate = asyncio.Semaphore(args.concurrency)

        async def one(i: int) -> dict[str, Any]:
            async with gate:
                return await post(http, base, visit(patients[i % len(patients)]), headers)

        started = time.perf_counter()
        drained = list(await asyncio.gather(*(one(i) for i in range(args.visits))))
        accepted_s = time.perf_counter() - started
        tasks = [r["task"] for r in drained if r["task"]]
        failed = 0
        for location in tasks:  # (bounded: each waits at most the deadline below)
            while time.perf_counter() - started < args.drain_timeout_s:
                async with http.get(base + URL(location).path, headers=headers) as resp:
                    status = (await resp.json(content_type=None))["status"]
                if status in ("completed", "failed"):
                    failed += status == "failed"
                    break
                await asyncio.sleep(0.05)
        done_s = time.perf_counter() - started
        slow = summary(f"drain, Cosmic +{args.slow_ms:g} ms", drained)
        parts = 2 * len(tasks)
        slow.update(
            accepted_s=round(accepted_s, 2),
            delivered_s=round(done_s, 2),
            parts_per_s=round(parts / done_s, 1),
            requests_per_s=round(10 * parts / done_s, 1),
            not_delivered=failed,
        )
        print(
            f"  accepted {len(tasks)} visits in {accepted_s:.1f} s; all delivered after {done_s:.1f} s: "
            f"{slow['parts_per_s']} parts/s, {slow['requests_per_s']} backend requests/s"
        )
        results["drain"] = slow
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--visits", type=int, default=60)
    ap.add_argument("--rate", type=float, default=5.0, help="POSTs a second on the 201 path")
    ap.add_argument("--slow-ms", type=float, default=300.0, help="Cosmic's added latency while draining")
    ap.add_argument("--concurrency", type=int, default=8, help="POSTs at once while draining")
    ap.add_argument("--latency-ms", type=float, default=20.0, help="added to every simulator answer")
    ap.add_argument("--patients", type=int, default=0, help="generated patients besides the demo ones")
    ap.add_argument("--drain-timeout-s", type=float, default=300.0)
    ap.add_argument("--start-timeout", type=float, default=60.0)
    args = ap.parse_args()
    if not (1 <= args.visits <= 2000 and 0 < args.rate <= 200 and 1 <= args.concurrency <= 64):
        ap.error("--visits 1-2000, --rate up to 200, --concurrency 1-64")
    results = run.with_processes("bench-writes-", lambda procs, tmp: bench(args, procs, tmp))
    print(orjson.dumps(results, option=orjson.OPT_INDENT_2).decode())


if __name__ == "__main__":
    main()
