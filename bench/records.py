"""What a long history costs: ``$everything`` for patients with 50 / 500 / 5,000 (/ 20,000) records.

    python bench/records.py [--sizes 50,500,5000] [--requests N] [--inflight 3] [--latency-ms 20]
                            [--count 100000] [--out bench/results/records]

For each size, on loopback, each piece in its own process (``bench/run.py``'s helpers): the three
simulators (``fhir-facade simulate --records SIZE``: every generated patient has exactly SIZE records
across the three systems, ``proxy/simulators/history.py``; ``--latency-ms`` added to every answer) and
the facade (``fhir-facade serve``, uncached, ``facade.max_count`` raised so one page holds the whole
answer, the backends' total timeout ``--backend-timeout`` s so a slow simulator is not mistaken for a
cut). One generated patient known to all three systems is asked, as the bench clinician with the
patient's consent registered (PDL), ``--count`` entries a page. Both are restarted for each size, so
each size's memory figures start from a fresh facade.

Per size:

* one warm-up request (the simulators generate the records on first access), then ``--requests``
  (default 20,000 / size, 3 to 50: /proc counts CPU in 10 ms ticks)
  sequential ``$everything`` requests: latency p50 (and max), the facade's CPU (user + system, from
  /proc) per request and per record, the backend calls and bytes per request (the simulators' own
  counts, ``/_sim/stats``), the answer's size and resources per source;
* the facade's peak RSS: its high-water mark is reset (``/proc/<pid>/clear_refs``) and read after the
  sequential requests (one in flight) and after ``--inflight`` concurrent ones, less the RSS before:
  the growth per in-flight request;
* complete or partial: every source ``answered`` and every record a resource — or which source said
  what (the facade names a failed source and why in the answer's OperationOutcome).

Written to ``--out``: ``results.json``, ``results.md`` (the table, also printed) and, when matplotlib
is installed (``pip install -e '.[bench]'``), ``records.png``. Bounded: every request has
``--timeout`` s, every process is stopped at the end (Ctrl-C included).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import platform
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run

from proxy.fhir.bundle import SOURCE_STATUS_SYSTEM, SOURCE_SYSTEM
from proxy.fhir.ids import PatientIds
from proxy.simulators.population import generated_people

DEFAULT_SIZES = "50,500,5000"


def bench_patient() -> tuple[int, str]:
    """(how many generated patients to start, the personnummer of one known to all three systems)."""
    for i, p in enumerate(generated_people(50)):
        if p.in_cosmic and p.in_viva and p.in_npo:
            return i + 1, p.pnr
    raise RuntimeError("no generated patient in all three systems")


def reset_peak(pid: int) -> None:
    """Reset the process's peak RSS (VmHWM) to its RSS now (Linux: ``clear_refs`` 5)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def write_config(
    tmp: Path, sim_urls: dict[str, str], pem: Path, args: argparse.Namespace, **facade: Any
) -> Path:
    """``bench/run.py``'s config (uncached), one page for the whole answer, patient backend timeouts;
    ``facade``: more keys of its ``facade:`` section."""
    return run.write_config(
        tmp,
        "facade",
        sim_urls,
        pem,
        {"enabled": False},
        facade={"max_count": args.count, **facade},
        backend_total_s=args.backend_timeout,
    )


async def start_simulators(
    procs: run.Processes, size: int, patients: int, args: argparse.Namespace
) -> dict[str, str]:
    urls = {}
    for b in run.load_settings().backends:
        if b.simulator:
            port = run.free_port()
            argv = [*run.fhir_facade(), "simulate", b.simulator, "--host", run.HOST, "--port", str(port)]
            argv += ["--patients", str(patients), "--records", str(size), "--years", str(args.years)]
            procs.start(f"sim-{b.name}", argv)
            urls[b.name] = f"http://{run.HOST}:{port}"
    async with aiohttp.ClientSession() as http:
        for name, url in urls.items():
            await run.wait_up(procs, f"sim-{name}", f"{url}/_sim/health", args.start_timeout)
            async with http.put(f"{url}/_sim/faults", json={"latency_ms": args.latency_ms}) as r:
                if r.status != 200:
                    raise RuntimeError(f"could not set the latency of {name}: {await r.text()}")
    return urls


async def sim_stats(urls: dict[str, str], reset: bool = False) -> dict[str, dict[str, int]]:
    out = {}
    async with aiohttp.ClientSession() as http:
        for name, url in urls.items():
            async with http.request("DELETE" if reset else "GET", f"{url}/_sim/stats") as r:
                body = await r.json()
                out[name] = {"requests": body["requests"], "bytes": body["bytes"]}
    return out


def read_answer(body: bytes) -> dict[str, Any]:
    """Resources per source, each source's status and what a degraded one said."""
    bundle = orjson.loads(body)
    per_source: Counter[str] = Counter()
    patients = 0
    statuses: dict[str, str] = {}
    said: dict[str, str] = {}
    for entry in bundle.get("entry", []):
        resource = entry.get("resource", {})
        if entry.get("search", {}).get("mode") == "match":
            if resource.get("resourceType") != "Patient":
                per_source[str(resource.get("meta", {}).get("source", "?")).rsplit(":", 1)[-1]] += 1
            else:
                patients += 1
            continue
        for issue in resource.get("issue", []):
            codes = {c.get("system"): c.get("code") for c in issue.get("details", {}).get("coding", [])}
            if SOURCE_SYSTEM in codes:
                name = str(codes[SOURCE_SYSTEM])
                statuses[name] = str(codes.get(SOURCE_STATUS_SYSTEM))
                if statuses[name] != "answered":
                    said[name] = str(issue.get("details", {}).get("text", issue.get("diagnostics", "")))
    total = bundle.get("total")
    return {
        "resources": sum(per_source.values()),  # on this page, the Patient not counted
        # every record of the answer (the Bundle's total less the Patient), whatever the page size
        "records_answered": (total - max(1, patients)) if total is not None else sum(per_source.values()),
        "per_source": dict(per_source),
        "statuses": statuses,
        "degraded": said,
    }


async def one_size(
    size: int, args: argparse.Namespace, procs: run.Processes, tmp: Path, keys: dict[str, Any]
) -> dict[str, Any]:
    patients, pnr = bench_patient()
    print(f"{size} records: starting the simulators and the facade …", flush=True)
    sims = await start_simulators(procs, size, patients, args)
    config = write_config(tmp, sims, keys["pem"], args, map_workers=args.map_workers)
    base, pid = await run.start_facade(procs, "facade", config, keys["key_b64"], args.start_timeout)
    # the facade's mapping processes (--map-workers): their CPU is the facade's, their memory too
    pool = run.mapping_processes(pid)
    patient_id = keys["ids"].encode(pnr)
    await run.register_consents(base, [patient_id], keys["token"])
    url = f"{base}/fhir/Patient/{patient_id}/$everything"
    headers = {"Authorization": f"Bearer {keys['token']}", "Accept": "application/fhir+json"}
    params = {"_count": str(args.count)}
    result: dict[str, Any] = {"records": size}
    async with run.client(max(4, args.inflight), args.timeout) as http:

        async def everything() -> tuple[float, bytes, int]:
            t0 = time.perf_counter()
            async with http.get(url, params=params, headers=headers) as r:
                body = await r.read()
                return (time.perf_counter() - t0) * 1000, body, r.status

        warm_ms, body, status = await everything()  # (the simulators generate the history here)
        if status != 200:
            raise RuntimeError(f"$everything: {status} {body[:300]!r}")
        result["warm_up_ms"] = round(warm_ms, 1)

        await sim_stats(sims, reset=True)
        rss_before = run.rss_mib(pid)["VmRSS"]
        reset_peak(pid)
        pool_before = {p: run.rss_mib(p)["VmRSS"] for p in pool}
        for p in pool:
            reset_peak(p)
        cpu_before = sum(run.cpu_s(p) for p in [pid, *pool])
        latencies, sizes = [], []
        n = args.requests or max(3, min(50, 20_000 // size))
        for _ in range(n):
            ms, body, status = await everything()
            if status != 200:
                raise RuntimeError(f"$everything: {status} {body[:300]!r}")
            latencies.append(ms)
            sizes.append(len(body))
        cpu = sum(run.cpu_s(p) for p in [pid, *pool]) - cpu_before
        peak_one = run.rss_mib(pid)["VmHWM"] - rss_before
        pool_peak_one = sum(run.rss_mib(p)["VmHWM"] - pool_before[p] for p in pool)
        backend = await sim_stats(sims)
        answer = read_answer(body)

        rss_idle = run.rss_mib(pid)["VmRSS"]
        reset_peak(pid)
        together = await asyncio.gather(*(everything() for _ in range(args.inflight)))
        peak_many = run.rss_mib(pid)["VmHWM"] - rss_idle
        if any(s != 200 for _, _, s in together):
            raise RuntimeError("an in-flight $everything failed")

    complete = answer["records_answered"] == size and all(
        s == "answered" for s in answer["statuses"].values()
    )
    result.update(
        {
            "requests": n,
            "latency_p50_ms": round(statistics.median(latencies), 1),
            "latency_max_ms": round(max(latencies), 1),
            "cpu_ms_per_request": round(cpu / n * 1000, 1),
            "cpu_ms_per_record": round(cpu / n * 1000 / size, 4),
            "backend_calls_per_request": round(sum(b["requests"] for b in backend.values()) / n, 1),
            "backend_bytes_per_request": round(sum(b["bytes"] for b in backend.values()) / n),
            "backend_per_source": {
                k: {"calls": v["requests"] / n, "bytes": v["bytes"] // n} for k, v in backend.items()
            },
            "answer_bytes": sizes[-1],
            "rss_before_mib": rss_before,
            "peak_rss_growth_one_in_flight_mib": round(peak_one, 1),
            "inflight": args.inflight,
            "peak_rss_growth_per_in_flight_mib": round(peak_many / args.inflight, 1),
            "map_workers": len(pool),
            "pool_peak_rss_growth_one_in_flight_mib": round(pool_peak_one, 1),
            "pool_peak_rss_mib": round(sum(run.rss_mib(p)["VmHWM"] for p in pool), 1),
            **answer,
            "complete": complete,
        }
    )
    print(
        f"  p50 {result['latency_p50_ms']} ms, CPU {result['cpu_ms_per_request']} ms "
        f"({result['cpu_ms_per_record']} ms/record), backends {result['backend_calls_per_request']:g} calls "
        f"{result['backend_bytes_per_request'] / 1e6:.2f} MB, {answer['resources']} resources "
        f"{answer['per_source']}, peak RSS +{result['peak_rss_growth_per_in_flight_mib']} MiB per in-flight, "
        f"{'complete' if complete else 'PARTIAL: ' + json.dumps(answer['degraded'], ensure_ascii=False)}",
        flush=True,
    )
    procs.stop("facade")
    for name in sims:
        procs.stop(f"sim-{name}")
    return result


async def bench(args: argparse.Namespace, procs: run.Processes, tmp: Path) -> dict[str, Any]:
    key = os.urandom(32)
    private, pem = run.make_issuer(tmp)
    keys = {
        "key_b64": base64.b64encode(key).decode(),
        "ids": PatientIds(key),
        "pem": pem,
        "token": run.clinician_token(private, lifetime_s=4 * 3600),
    }
    sizes = [await one_size(size, args, procs, tmp, keys) for size in args.sizes]
    return {
        "config": {
            "sizes": args.sizes,
            "requests": args.requests or "20000 / size, 3 to 50",
            "inflight": args.inflight,
            "latency_ms": args.latency_ms,
            "count": args.count,
            "years": args.years,
            "backend_timeout_s": args.backend_timeout,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        "sizes": sizes,
    }


def markdown(results: dict[str, Any]) -> str:
    cfg = results["config"]
    lines = [
        f"`$everything` of one patient per size, uncached, `_count={cfg['count']}`"
        f"{' (one page holds it all)' if cfg['count'] >= max(cfg['sizes']) + 1 else ''}; backends "
        f"+{cfg['latency_ms']:g} ms each; sequential requests per size ({cfg['requests']}), then "
        f"{cfg['inflight']} at once; {cfg['cpus']} CPUs.",
        "",
        "| records | resources on the page (cosmic / viva / npo) | complete | p50 ms | facade CPU ms/req "
        "| CPU ms/record | backend calls | backend MB | answer MB | peak RSS +MiB, 1 in flight "
        f"| +MiB per in-flight ({cfg['inflight']}) |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["sizes"]:
        src = r["per_source"]
        state = (
            "yes" if r["complete"] else "**no**: " + "; ".join(f"{k}: {v}" for k, v in r["degraded"].items())
        )
        lines.append(
            f"| {r['records']:,} | {r['resources']:,} ({src.get('cosmic', 0)} / {src.get('viva', 0)} / "
            f"{src.get('npo', 0)}) | {state} | {r['latency_p50_ms']:.0f} | {r['cpu_ms_per_request']:.0f} "
            f"| {r['cpu_ms_per_record']:.3f} | {r['backend_calls_per_request']:g} "
            f"| {r['backend_bytes_per_request'] / 1e6:.2f} | {r['answer_bytes'] / 1e6:.2f} "
            f"| {r['peak_rss_growth_one_in_flight_mib']:.0f} | {r['peak_rss_growth_per_in_flight_mib']:.0f} |"
        )
    lines += [
        "",
        "CPU: the facade process's user + system time per request (not the simulators'). Backend calls and "
        "bytes: what the simulators served per request (`/_sim/stats`). Peak RSS: the facade's high-water "
        "mark over its RSS before, reset before each phase.",
    ]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> bool:
    plt = run.pyplot()
    if plt is None:
        return False

    rows = results["sizes"]
    xs = [r["records"] for r in rows]
    fig, (cpu, mem) = plt.subplots(1, 2, figsize=(12, 4.8))
    cpu.loglog(xs, [r["cpu_ms_per_request"] for r in rows], "o-", label="facade CPU ms per request")
    cpu.loglog(xs, [r["latency_p50_ms"] for r in rows], "s--", label="latency p50 ms")
    cpu.set_xlabel("records in the patient's history")
    cpu.grid(True, which="both", alpha=0.3)
    cpu.legend()
    mem.semilogx(
        xs, [r["peak_rss_growth_per_in_flight_mib"] for r in rows], "o-", label="peak RSS MiB per in-flight"
    )
    mem.semilogx(
        xs, [r["backend_bytes_per_request"] / 2**20 for r in rows], "s--", label="backend MiB per request"
    )
    mem.set_xlabel("records in the patient's history")
    mem.grid(True, which="both", alpha=0.3)
    mem.legend()
    fig.suptitle("$everything of one long history, uncached")
    return run.save_plot(plt, fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--sizes", default=DEFAULT_SIZES, help="records per patient, comma-separated (also 20000)"
    )
    ap.add_argument(
        "--requests",
        type=int,
        default=0,
        help="sequential $everything requests per size (default: 20000 / size, 3 to 50: /proc counts CPU "
        "in 10 ms ticks, so small sizes need many)",
    )
    ap.add_argument("--inflight", type=int, default=3, help="concurrent requests for the peak-RSS figure")
    ap.add_argument(
        "--map-workers",
        type=int,
        default=0,
        help="facade.map_workers (their CPU counted, their peak RSS reported)",
    )
    ap.add_argument("--latency-ms", type=float, default=20.0, help="added to every simulator answer")
    ap.add_argument("--count", type=int, default=100_000, help="_count (and facade.max_count): one page")
    ap.add_argument("--years", type=int, default=10, help="years of history")
    ap.add_argument(
        "--backend-timeout", type=float, default=60.0, help="the facade's total timeout per backend, s"
    )
    ap.add_argument("--timeout", type=float, default=120.0, help="per-request timeout, s")
    ap.add_argument("--start-timeout", type=float, default=120.0, help="seconds a process may take to start")
    ap.add_argument("--out", type=Path, default=run.REPO / "bench" / "results" / "records")
    args = ap.parse_args()
    try:
        args.sizes = [int(s) for s in args.sizes.split(",")]
    except ValueError:
        ap.error("--sizes: comma-separated numbers of records")
    if not all(1 <= s <= 100_000 for s in args.sizes):
        ap.error("--sizes: each 1 to 100000")
    if not (0 <= args.requests <= 100 and 1 <= args.inflight <= 16 and 1 <= args.count <= 100_000):
        ap.error("--requests 0-100, --inflight 1-16, --count 1-100000")

    results = run.with_processes("fhir-bench-records-", lambda procs, tmp: bench(args, procs, tmp))
    run.write_results(args.out, results, markdown(results), plot=plot)


if __name__ == "__main__":
    main()
