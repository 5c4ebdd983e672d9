"""Soak: does the facade's memory stay flat over many requests?

    python bench/soak.py [--requests 100000] [--patients 200] [--latency-ms 0] [--ttl-s 5]

Simulators and the facade (one worker) run in their own processes, as in ``bench/run.py``. The
cache TTL is short, so the run mixes fresh fetches (mapping, merge) with cached answers and the
cache fills to its steady size early. The facade's RSS is sampled every 5 % of the run; the growth
that counts is from the sample at 10 % (caches and pools warm) to the end. Target: ≤ 10 %.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run

from proxy.fhir.ids import PatientIds
from proxy.simulators.population import population


async def soak(args: argparse.Namespace, procs: run.Processes, tmp: Path) -> None:
    pnrs = [p.pnr for p in population(args.patients)]
    key = os.urandom(32)
    key_b64 = base64.b64encode(key).decode()
    ids = PatientIds(key)
    private, pem = run.make_issuer(tmp)
    token = run.clinician_token(private, lifetime_s=4 * 3600)
    sims = await run.start_simulators(procs, args)
    config = run.write_config(tmp, "soak", sims, pem, {"enabled": True, "ttl_s": args.ttl_s})
    base, pid = await run.start_facade(procs, "facade", config, key_b64, args.start_timeout)
    patient_ids = [ids.encode(p) for p in pnrs]
    await run.register_consents(base, patient_ids, token)
    target = run.facade_target("facade", "soak", base, patient_ids, token)

    samples: list[tuple[int, float]] = [(0, run.rss_mib(pid)["VmRSS"])]
    done, errors = 0, 0
    step = max(1, args.requests // 20)
    started = time.perf_counter()
    async with run.client(args.concurrency, args.timeout) as http:
        while done < args.requests:
            batch = min(step, args.requests - done)
            results = await _bounded(target, http, done, batch, args.concurrency)
            errors += sum(1 for r in results if r == "error")
            done += batch
            samples.append((done, run.rss_mib(pid)["VmRSS"]))
            print(f"  {done:>7} requests  RSS {samples[-1][1]:.1f} MiB  errors {errors}", flush=True)
    elapsed = time.perf_counter() - started
    warm = next(rss for n, rss in samples if n >= args.requests // 10)
    growth = (samples[-1][1] - warm) / warm * 100
    print(f"{done} requests in {elapsed:.0f} s ({done / elapsed:.0f} req/s), {errors} errors")
    print(
        f"RSS: start {samples[0][1]:.1f} MiB, at 10 % {warm:.1f} MiB, end {samples[-1][1]:.1f} MiB "
        f"→ growth after warm-up {growth:+.1f} % (target ≤ 10 %)"
    )


async def _bounded(target: run.Target, http: object, offset: int, count: int, concurrency: int) -> list[str]:
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> str:
        async with sem:
            return await run.attempt(target, http, offset + i)  # type: ignore[arg-type]

    return list(await asyncio.gather(*(one(i) for i in range(count))))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--patients", type=int, default=200)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--ttl-s", type=float, default=5.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--start-timeout", type=float, default=60.0)
    args = ap.parse_args()
    run.with_processes("fhir-facade-soak-", lambda procs, tmp: soak(args, procs, tmp))


if __name__ == "__main__":
    main()
