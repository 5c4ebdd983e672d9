"""Where the facade's CPU goes on ``$everything``: py-spy samples the facade process under load.

    python bench/profile.py [--cache] [--latency-ms 20] [--patients 200] [--duration 15]
                            [--concurrency 32 | --rate R] [--top 30] [--out bench/results]

The same processes as ``bench/run.py`` (simulators, one facade worker, each its own process, the
bench's consents registered); a closed-model load of ``--concurrency`` workers (or, with ``--rate``,
the open model at that arrival rate, as the latency targets are measured) runs for ``--duration`` s
while ``py-spy record`` samples the facade (GIL-holding samples only, so idle
waiting on the network does not count). Printed: the share of CPU samples per function — *self*
(in the function itself) and *total* (in it or anything it calls) — for the facade's own code and
the libraries it calls; written: ``profile.txt`` (the table), ``profile.collapsed.txt`` (py-spy's
collapsed stacks, for grep or flamegraph.pl) and, with ``--flame``, ``profile.speedscope.json``
(open it on speedscope.app). Needs py-spy (``pip install -e '.[bench]'``) and ptrace rights (root,
or ``kernel.yama.ptrace_scope=0``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run

from proxy.fhir.ids import PatientIds
from proxy.simulators.population import population


def cpu_seconds(procs: run.Processes) -> dict[str, float]:
    """User + system CPU seconds so far of every process of the run, and of this one (the load)."""
    out = {name: run.cpu_s(proc.pid) for name, proc in procs.running.items()}
    out["load generator"] = sum(os.times()[:2])
    return out


def summarise(collapsed: Path, top: int) -> str:
    """Self and total share of samples per frame ("function (file)") from py-spy's raw output."""
    self_count: Counter[str] = Counter()
    total_count: Counter[str] = Counter()
    samples = 0
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        samples += n
        frames = [f.rsplit(":", 1)[0] for f in stack.split(";")]  # drop the line numbers
        self_count[frames[-1]] += n
        for frame in set(frames):
            total_count[frame] += n
    if not samples:
        return "no samples (was the facade busy? py-spy needs ptrace rights)"

    def table(counter: Counter[str], title: str) -> list[str]:
        rows = [f"{title} (of {samples} samples)", "   %  function (file)"]
        rows += [f"{n / samples * 100:5.1f}  {frame}" for frame, n in counter.most_common(top)]
        return rows

    return "\n".join([*table(self_count, "self"), "", *table(total_count, "total")])


async def profile(args: argparse.Namespace, procs: run.Processes, tmp: Path) -> str:
    pnrs = [p.pnr for p in population(args.patients)]
    key = os.urandom(32)
    ids = PatientIds(key)
    private, pem = run.make_issuer(tmp)
    token = run.clinician_token(private, lifetime_s=4 * 3600)
    sims = await run.start_simulators(procs, args)
    cache = {"enabled": args.cache, "ttl_s": 3600}
    config = run.write_config(tmp, "profile", sims, pem, cache)
    base, pid = await run.start_facade(procs, "facade", config, base64.b64encode(key).decode(), 60.0)
    patient_ids = [ids.encode(p) for p in pnrs]
    await run.register_consents(base, patient_ids, token)
    target = run.facade_target("facade", "profile", base, patient_ids, token)
    await run.warm_up(target, len(patient_ids), 8, args.timeout)

    raw, speedscope = args.out / "profile.collapsed.txt", args.out / "profile.speedscope.json"
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")

    async def record(seconds: float, fmt: str, out: Path) -> asyncio.subprocess.Process:
        argv = ["record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "250", "--gil"]
        return await asyncio.create_subprocess_exec(
            spy, *argv, "--format", fmt, "--output", str(out), stdout=asyncio.subprocess.DEVNULL
        )

    sampler = await record(args.duration, "raw", raw)
    before = cpu_seconds(procs)
    try:
        if args.rate:
            result = await run.open_model(target, args.rate, args.duration, 256, args.timeout)
            result["requests"] = len(result["samples_ms"])
        else:
            result = await run.closed_model(target, args.concurrency, args.duration, args.timeout)
    finally:
        after = cpu_seconds(procs)
        await asyncio.wait_for(sampler.wait(), timeout=args.duration + 30)
    model = f"open model, {args.rate:g} req/s" if args.rate else f"closed model, {args.concurrency} workers"
    print(
        f"{model}: {result['throughput_rps']} req/s, "
        f"p50 {result['p50']} ms, p99 {result['p99']} ms, errors {result['errors']}"
    )
    print("CPU per answered request, by process (2 cores shared by all of them):")
    for name, seconds in after.items():
        used = seconds - before[name]
        share, per_request = used / result["duration_s"] * 100, used / max(1, result["requests"]) * 1000
        print(f"  {name:<14} {share:5.0f} % of a core, {per_request:.2f} ms")
    if args.flame:  # a second, short recording under the same load, in speedscope's format
        flame = await record(5, "speedscope", speedscope)
        await run.closed_model(target, args.concurrency, 5.0, args.timeout)
        await asyncio.wait_for(flame.wait(), timeout=35)
    return summarise(raw, args.top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", action="store_true", help="warm cache (default: uncached)")
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--patients", type=int, default=200)
    ap.add_argument("--duration", type=float, default=15.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument(
        "--rate", type=float, default=0.0, help="open model at this req/s instead of the closed model"
    )
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--start-timeout", type=float, default=60.0)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--flame", action="store_true", help="also write profile.speedscope.json")
    ap.add_argument("--out", type=Path, default=run.REPO / "bench" / "results")
    args = ap.parse_args()
    if not (0 < args.duration <= 600 and 1 <= args.concurrency <= 1024 and 0 <= args.patients <= 100_000):
        ap.error("--duration 0-600 s, --concurrency 1-1024, --patients 0-100000")
    args.out.mkdir(parents=True, exist_ok=True)
    text = run.with_processes("fhir-facade-profile-", lambda procs, tmp: profile(args, procs, tmp))
    (args.out / "profile.txt").write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
