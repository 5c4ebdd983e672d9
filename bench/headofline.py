"""Head-of-line: do other patients wait while the facade works through a long history?

    python bench/headofline.py [--rate 20] [--duration 20] [--big 3] [--patients 40]
                               [--latency-ms 20] [--workers 1] [--map-workers 0] [--pin]
                               [--sim-render-cache] [--out bench/results/headofline]

On loopback, each piece in its own process (``bench/run.py``'s helpers): the three simulators
(``fhir-facade simulate``, ``--latency-ms`` on every answer) and one facade (``fhir-facade serve``,
uncached, ``facade.max_count`` raised so a long history is one page: its whole Bundle is rendered;
``--workers``: ``serve --workers``; ``--map-workers``: ``facade.map_workers``, long answers mapped in
processes; ``--pin``: the facade's loop alone on the first CPU; ``--sim-render-cache``: the simulators
keep long answers once rendered — their own waits out of the measure).
The bench clinician asks, with each patient's consent registered (PDL):

* **alone**: small patients (the generated population, 3–58 records each) ``$everything`` at
  ``--rate`` requests a second (open model: Poisson arrivals, latency from the intended send time)
  for ``--duration`` seconds;
* **with big requests**: the same small patients at the same rate, while ``--big`` clients each ask,
  back to back, for the ``$everything`` of the long-history demo patient Ingegerd Långberg (about
  6,000 records across the three systems, ``proxy/simulators/population.py``).

In both phases a probe asks ``GET /healthz`` (answered at once, no backend) every 50 ms: its
latency is how long a ready request waits for the facade's event loop (the loop's lag, as a
client sees it). Reported per phase: the small patients' p50/p90/p99/max, the probe's p50/p99/max,
the big requests answered and their p50, and the ratio of the small patients' p99 with and
without the big requests (issue 21's target: at most 2).

Written to ``--out``: ``results.json``, ``results.md`` (the table, also printed) and, with matplotlib
(``pip install -e '.[bench]'``), ``results.png`` (the small patients' latencies, both phases). Bounded: every
request has ``--timeout`` s, every process is stopped at the end (Ctrl-C included).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run

from proxy.fhir.bundle import LATENCY_URL as SOURCE_LATENCY
from proxy.fhir.ids import PatientIds
from proxy.simulators.population import population

BIG_PNR = "194406289829"  # Ingegerd Långberg: the long-history demo patient
PROBE_EVERY_S = 0.05


def write_config(tmp: Path, sim_urls: dict[str, str], pem: Path, args: argparse.Namespace) -> Path:
    """``bench/run.py``'s config (uncached), one page for the long history."""
    return run.write_config(
        tmp,
        "facade",
        sim_urls,
        pem,
        {"enabled": False},
        facade={"max_count": args.big_count, "map_workers": args.map_workers},
        backend_total_s=args.timeout,
    )


async def probe(base: str, stop: asyncio.Event, timeout_s: float) -> list[float]:
    """``GET /healthz`` every ``PROBE_EVERY_S`` until ``stop``: each one's latency, ms."""
    out = []
    async with run.client(2, timeout_s) as http:
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                async with http.get(f"{base}/healthz") as r:
                    await r.read()
                out.append((time.perf_counter() - t0) * 1000)
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(PROBE_EVERY_S)
    return out


async def big_clients(
    url: str,
    headers: dict[str, str],
    n: int,
    stop: asyncio.Event,
    args: argparse.Namespace,
    rounds: int | None = None,
) -> dict[str, Any]:
    """``n`` clients asking for the long history back to back until ``stop`` (or ``rounds`` each)."""
    latencies: list[float] = []
    failed = 0
    entries = 0
    async with run.client(n, args.timeout) as http:

        async def one() -> None:
            nonlocal failed, entries
            asked = 0
            while not stop.is_set() and (rounds is None or asked < rounds):
                asked += 1
                t0 = time.perf_counter()
                try:
                    async with http.get(url, params={"_count": str(args.big_count)}, headers=headers) as r:
                        body = await r.read()
                        if r.status != 200:
                            failed += 1
                            continue
                    latencies.append((time.perf_counter() - t0) * 1000)
                    entries = body.count(b'"fullUrl"')
                except (aiohttp.ClientError, TimeoutError):
                    failed += 1

        await asyncio.gather(*(one() for _ in range(n)))
    return {
        "clients": n,
        "answered": len(latencies),
        "failed": failed,
        "entries": entries,
        "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
    }


async def phase(
    name: str, small: run.Target, base: str, big: tuple[str, dict[str, str]] | None, args: argparse.Namespace
) -> dict[str, Any]:
    print(f"{name}: small patients at {args.rate:g} req/s for {args.duration:g} s", flush=True)
    stop = asyncio.Event()
    probing = asyncio.create_task(probe(base, stop, args.timeout))
    bigs = None
    if big is not None:
        bigs = asyncio.create_task(big_clients(big[0], big[1], args.big, stop, args))
        await asyncio.sleep(args.big_head_start)  # the long histories already under way
    small_result = await run.open_model(small, args.rate, args.duration, 64, args.timeout)
    stop.set()
    lag = run.percentiles(await probing)
    out: dict[str, Any] = {
        "small": small_result,  # (with its samples: the plot's)
        "probe_ms": {k: lag[k] for k in ("p50", "p99", "max")},
    }
    if bigs is not None:
        out["big"] = await bigs
    return out


def small_target(base: str, ids: list[str], token: str) -> tuple[run.Target, list[float]]:
    """``bench/run.py``'s ``$everything`` target, also noting in the list it returns how long each
    answer's slowest backend took (its source outcome's latency, as the facade measured it: the
    simulator's time — on the same two cores here — and the facade's own delay in reading the answer
    while its loop is busy)."""
    slowest: list[float] = []

    def note(body: bytes) -> None:
        latencies = [
            ext["valueDecimal"]
            for entry in orjson.loads(body).get("entry", [])
            if entry.get("search", {}).get("mode") == "outcome"
            for issue in entry["resource"].get("issue", [])
            for ext in issue.get("extension", [])
            if ext.get("url") == SOURCE_LATENCY
        ]
        if latencies:
            slowest.append(max(latencies))

    return run.facade_target("facade", "small patients", base, ids, token, on_body=note), slowest


def pin(facade_pid: int) -> None:
    """``--pin``: the facade's worker on the first CPU, everything else the bench runs — the
    simulators, the load, the facade's mapping processes — on the others: the facade's loop has a
    core of its own, as it would with the backends on other hosts. Every thread of each process (an
    affinity is a thread's); a process gone meanwhile is skipped."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit("--pin needs two CPUs or more")
    first, rest = {cpus[0]}, set(cpus[1:])
    for p in [*run.descendants(os.getpid()), os.getpid()]:
        for task in Path(f"/proc/{p}/task").glob("[0-9]*"):
            try:
                os.sched_setaffinity(int(task.name), first if p == facade_pid else rest)
            except OSError:  # (it has ended)
                continue


async def bench(args: argparse.Namespace, procs: run.Processes, tmp: Path) -> dict[str, Any]:
    key = os.urandom(32)
    ids = PatientIds(key)
    key_b64 = base64.b64encode(key).decode()
    private, pem = run.make_issuer(tmp)
    token = run.clinician_token(private, lifetime_s=4 * 3600)
    print("starting the simulators and the facade …", flush=True)
    sims = await run.start_simulators(procs, args)
    config = write_config(tmp, sims, pem, args)
    base, pid = await run.start_facade(procs, "facade", config, key_b64, args.start_timeout, args.workers)
    if args.pin:
        pin(pid)  # (one worker: checked below)
    small_ids = [ids.encode(p.pnr) for p in population(args.patients)]
    big_id = ids.encode(BIG_PNR)
    await run.register_consents(base, [*small_ids, big_id], token)
    small, slowest = small_target(base, small_ids, token)
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}
    big_url = f"{base}/fhir/Patient/{big_id}/$everything"

    print("warming up (the simulators generate the long history on first access) …", flush=True)
    await run.warm_up(small, min(args.patients, 40), 4, args.timeout)
    warm = await big_clients(big_url, headers, 1, asyncio.Event(), args, rounds=1)
    if not warm["answered"]:
        raise RuntimeError("the long-history patient's $everything failed")
    cpu_before = run.cpu_s(pid)
    slowest.clear()
    alone = await phase("alone", small, base, None, args)
    alone["slowest_backend_ms"] = run.percentiles(slowest)
    slowest.clear()
    loaded = await phase(f"with {args.big} big requests", small, base, (big_url, headers), args)
    loaded["slowest_backend_ms"] = run.percentiles(slowest)
    p99 = alone["small"]["p99"], loaded["small"]["p99"]
    return {
        "config": {
            "rate_rps": args.rate,
            "duration_s": args.duration,
            "big_clients": args.big,
            "big_entries": warm["entries"],
            "big_count": args.big_count,
            "patients": args.patients,
            "latency_ms": args.latency_ms,
            "workers": args.workers,
            "map_workers": args.map_workers,
            "pinned": args.pin,
            "sim_render_cache": args.sim_render_cache,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        "alone": alone,
        "with_big": loaded,
        "p99_ratio": round(p99[1] / p99[0], 2) if p99[0] and p99[1] else None,
        # (one process's: with several workers, not the facade's whole)
        "facade_cpu_s": round(run.cpu_s(pid) - cpu_before, 1) if args.workers == 1 else None,
    }


def markdown(results: dict[str, Any]) -> str:
    c = results["config"]
    lines = [
        f"Small patients' `$everything` at {c['rate_rps']:g} req/s for {c['duration_s']:g} s, alone and with "
        f"{c['big_clients']} clients asking back to back for the long-history patient ({c['big_entries']:,} "
        f"entries, one page); backends +{c['latency_ms']:g} ms; {c['cpus']} CPUs.",
        "",
        "| phase | small p50 ms | p90 | p99 | max | answered / scheduled | `/healthz` p50 ms | p99 | max "
        "| big answered | big p50 ms | slowest backend p50 ms | p99 |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, key in (("alone", "alone"), ("with big requests", "with_big")):
        p = results[key]
        s, lag, big, slow = p["small"], p["probe_ms"], p.get("big") or {}, p["slowest_backend_ms"]
        answered = s["scheduled"] - s["errors"]
        lines.append(
            f"| {label} | {s['p50']} | {s['p90']} | {s['p99']} | {s['max']} | {answered} / {s['scheduled']} "
            f"| {lag['p50']} | {lag['p99']} | {lag['max']} | {big.get('answered', '–')} "
            f"| {big.get('p50_ms', '–')} | {slow['p50']} | {slow['p99']} |"
        )
    lines += [
        "",
        f"Small patients' p99 with the big requests over p99 alone: **{results['p99_ratio']}** (target ≤ 2).",
        "Slowest backend: per small answer, its slowest source's latency as the facade measured it — the "
        "simulator's time, and the facade's own delay in reading the answer while its loop is busy.",
    ]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> bool:
    """The small patients' latencies, alone and beside the long histories, as distributions."""
    plt = run.pyplot()
    if plt is None:
        return False

    fig, ax = plt.subplots(figsize=(8, 4.8))
    for key, label in (
        ("alone", "alone"),
        ("with_big", f"with {results['config']['big_clients']} long histories"),
    ):
        ms = sorted(results[key]["small"]["samples_ms"])
        if ms:
            ax.semilogx(ms, [100 * (i + 1) / len(ms) for i in range(len(ms))], label=label)
    ax.set_xlabel("small patient's $everything latency, ms")
    ax.set_ylabel("% of requests at most this long")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    ax.set_title(f"Head-of-line: p99 ratio {results['p99_ratio']}")
    return run.save_plot(plt, fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=20.0, help="small patients' requests a second")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per phase")
    ap.add_argument("--big", type=int, default=3, help="clients asking for the long history")
    ap.add_argument("--big-count", type=int, default=10_000, help="_count of the long history (one page)")
    ap.add_argument("--big-head-start", type=float, default=2.0, help="s the big requests start earlier")
    ap.add_argument("--patients", type=int, default=40, help="generated (small) patients")
    ap.add_argument("--latency-ms", type=float, default=20.0, help="added to every simulator answer")
    ap.add_argument("--workers", type=int, default=1, help="facade worker processes (serve --workers)")
    ap.add_argument(
        "--map-workers", type=int, default=0, help="processes mapping long answers (facade.map_workers)"
    )
    ap.add_argument("--pin", action="store_true", help="the facade's loop alone on the first CPU (Linux)")
    ap.add_argument(
        "--sim-render-cache",
        action="store_true",
        help="simulators keep long answers once rendered (simulate --render-cache-mb 256)",
    )
    ap.add_argument("--timeout", type=float, default=60.0, help="per-request timeout, s")
    ap.add_argument("--start-timeout", type=float, default=120.0, help="seconds a process may take to start")
    ap.add_argument("--out", type=Path, default=run.REPO / "bench" / "results" / "headofline")
    args = ap.parse_args()
    if args.pin and args.workers > 1:
        ap.error("--pin pins one worker: use it with --workers 1")
    if not (1 <= args.rate <= 200 and 1 <= args.duration <= 120 and 0 <= args.big <= 8):
        ap.error("--rate 1-200, --duration 1-120, --big 0-8")
    results = run.with_processes("fhir-bench-headofline-", lambda procs, tmp: bench(args, procs, tmp))
    run.write_results(args.out, results, markdown(results), plot=plot)


if __name__ == "__main__":
    main()
