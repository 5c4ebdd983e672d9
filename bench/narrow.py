"""A narrow search on a long history: what the backends send for ``Observation?date=ge…&_count=10``
and for a read by id, with the date push-down off (every backend sends its whole list) and on.

    python bench/narrow.py [--records 5000] [--since 2026-08-01] [--requests 10] [--latency-ms 20]
                           [--out bench/results/narrow]

On loopback, each piece in its own process (``bench/run.py``'s and ``bench/records.py``'s helpers):
the three simulators (``--records`` per generated patient, ``--latency-ms`` added to every answer),
and the facade (``fhir-facade serve``, uncached) started twice — ``facade.pushdown: false`` then
``true``. One generated patient known to all three systems asks about their own records (the
patient audience: push-down is off under PDL, see mappings/README.md "Filters at the source"):

* ``Observation?patient=…&date=ge<since>&_count=10``, ``--requests`` times;
* ``Observation/<id>`` of the first match, ``--requests`` times.

Per case: the backend calls and bytes per request (the simulators' own counts, ``/_sim/stats``),
latency p50, the answer's total — which must be equal with and without push-down. Written to
``--out``: ``results.json``, ``results.md`` (also printed) and, with matplotlib, ``results.png``.
Bounded: every request has ``--timeout`` s, every process is stopped at the end (Ctrl-C included).
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

import records
import run

from proxy.auth.demo import make_token
from proxy.fhir.ids import PatientIds
from proxy.settings import DEMO_PATIENT_ID_KEY


def patient_token(private: Any, pnr: str, ids: PatientIds, lifetime_s: int) -> str:
    """A demo patient token for ``pnr``, issued by the bench issuer (its launch patient in the
    bench's ids, not the demo key's)."""
    claims = jwt.decode(
        make_token("patient", pnr=pnr, lifetime_s=lifetime_s), options={"verify_signature": False}
    )
    demo_id = PatientIds(DEMO_PATIENT_ID_KEY).encode(pnr)
    claims = {k: ids.encode(pnr) if v == demo_id else v for k, v in claims.items()}
    claims["iss"] = run.BENCH_ISSUER
    return jwt.encode(claims, private, algorithm="ES256")


def write_config(
    tmp: Path, sims: dict[str, str], pem: Path, args: argparse.Namespace, pushdown: bool
) -> Path:
    return records.write_config(tmp, sims, pem, args, pushdown=pushdown)


async def measure(
    http: Any, sims: dict[str, str], url: str, params: dict[str, str], headers: dict[str, str], n: int
) -> dict[str, Any]:
    async def once() -> tuple[float, int, bytes]:
        t0 = time.perf_counter()
        async with http.get(url, params=params, headers=headers) as r:
            body = await r.read()
            return (time.perf_counter() - t0) * 1000, r.status, body

    await once()  # (warm: connections, the simulators' generation of the history)
    await records.sim_stats(sims, reset=True)
    latencies = []
    for _ in range(n):
        ms, status, body = await once()
        if status != 200:
            raise RuntimeError(f"{url}: {status} {body[:300]!r}")
        latencies.append(ms)
    backend = await records.sim_stats(sims)
    doc = orjson.loads(body)
    return {
        "latency_p50_ms": round(statistics.median(latencies), 1),
        "backend_calls_per_request": round(sum(b["requests"] for b in backend.values()) / n, 1),
        "backend_bytes_per_request": round(sum(b["bytes"] for b in backend.values()) / n),
        "backend_per_source": {
            k: {"calls": v["requests"] / n, "bytes": v["bytes"] // n} for k, v in backend.items()
        },
        "answer_bytes": len(body),
        "total": doc.get("total"),
        "first": next(
            (e["resource"]["id"] for e in doc.get("entry", []) if e.get("search", {}).get("mode") == "match"),
            doc.get("id"),
        ),
    }


async def bench(args: argparse.Namespace, procs: run.Processes, tmp: Path) -> dict[str, Any]:
    key = os.urandom(32)
    ids = PatientIds(key)
    private, pem = run.make_issuer(tmp)
    patients, pnr = records.bench_patient()
    patient_id = ids.encode(pnr)
    token = patient_token(private, pnr, ids, 4 * 3600)
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}
    print(f"{args.records} records: starting the simulators …", flush=True)
    sims = await records.start_simulators(procs, args.records, patients, args)
    out: dict[str, Any] = {}
    read_id = None
    for pushdown in (False, True):
        config = write_config(tmp, sims, pem, args, pushdown)
        base, _ = await run.start_facade(
            procs, "facade", config, base64.b64encode(key).decode(), args.start_timeout
        )
        async with run.client(4, args.timeout) as http:
            search = await measure(
                http,
                sims,
                f"{base}/fhir/Observation",
                {"patient": patient_id, "date": f"ge{args.since}", "_count": "10"},
                headers,
                args.requests,
            )
            read_id = read_id or search["first"]
            read = await measure(http, sims, f"{base}/fhir/Observation/{read_id}", {}, headers, args.requests)
        procs.stop("facade")
        label = "on" if pushdown else "off"
        out[label] = {"search": search, "read": read}
        for name, r in (("search", search), ("read by id", read)):
            print(
                f"  push-down {label:3} {name:10}: {r['backend_calls_per_request']:g} calls, "
                f"{r['backend_bytes_per_request'] / 1e3:,.0f} kB from the backends, "
                f"p50 {r['latency_p50_ms']} ms, "
                f"answer {r['answer_bytes'] / 1e3:,.1f} kB (total {r['total']})",
                flush=True,
            )
    if out["on"]["search"]["total"] != out["off"]["search"]["total"]:
        raise RuntimeError("the search's total differs with push-down: a bug")
    return {
        "config": {
            "records": args.records,
            "since": args.since,
            "requests": args.requests,
            "latency_ms": args.latency_ms,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        **out,
    }


def markdown(results: dict[str, Any]) -> str:
    cfg = results["config"]
    lines = [
        f"One patient with {cfg['records']:,} records, asking about their own; "
        f"backends +{cfg['latency_ms']:g} ms each; {cfg['requests']} sequential requests per case, "
        f"uncached; {cfg['cpus']} CPUs.",
        "",
        "| request | push-down | backend calls | backend kB | p50 ms | answer kB | total |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for case, name in (
        ("search", f"`Observation?date=ge{cfg['since']}&_count=10`"),
        ("read", "`Observation/<id>`"),
    ):
        for label in ("off", "on"):
            r = results[label][case]
            total = "" if r["total"] is None else r["total"]
            lines.append(
                f"| {name} | {label} | {r['backend_calls_per_request']:g} "
                f"| {r['backend_bytes_per_request'] / 1e3:,.0f} | {r['latency_p50_ms']:.0f} "
                f"| {r['answer_bytes'] / 1e3:,.1f} | {total} |"
            )
    off = results["off"]["search"]["backend_bytes_per_request"]
    on = results["on"]["search"]["backend_bytes_per_request"]
    lines += ["", f"Search backend bytes with push-down: {on / off:.1%} of without."]
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> bool:
    """Backend kB per request, push-down off and on, per case."""
    plt = run.pyplot()
    if plt is None:
        return False

    cases = (("search", f"date=ge{results['config']['since']}"), ("read", "read by id"))
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (label, shift) in enumerate((("off", -0.2), ("on", 0.2))):
        kb = [results[label][case]["backend_bytes_per_request"] / 1e3 for case, _ in cases]
        ax.bar(
            [j + shift for j in range(len(cases))], kb, width=0.4, label=f"push-down {label}", color=f"C{i}"
        )
    ax.set_xticks(range(len(cases)), [name for _, name in cases])
    ax.set_yscale("log")
    ax.set_ylabel("backend kB per request")
    ax.set_title(f"A narrow search on {results['config']['records']:,} records")
    ax.legend()
    return run.save_plot(plt, fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=5000, help="records per patient")
    ap.add_argument(
        "--since", default="2026-08-01", help="the search's date=ge… (the history ends 2026-11-01)"
    )
    ap.add_argument("--requests", type=int, default=10, help="sequential requests per case")
    ap.add_argument("--latency-ms", type=float, default=20.0, help="added to every simulator answer")
    ap.add_argument("--years", type=int, default=10, help="years of history")
    ap.add_argument("--count", type=int, default=500, help="facade.max_count")
    ap.add_argument(
        "--backend-timeout", type=float, default=60.0, help="the facade's total timeout per backend, s"
    )
    ap.add_argument("--timeout", type=float, default=120.0, help="per-request timeout, s")
    ap.add_argument("--start-timeout", type=float, default=120.0, help="seconds a process may take to start")
    ap.add_argument("--out", type=Path, default=run.REPO / "bench" / "results" / "narrow")
    args = ap.parse_args()
    results = run.with_processes("fhir-bench-narrow-", lambda procs, tmp: bench(args, procs, tmp))
    run.write_results(args.out, results, markdown(results), plot=plot)


if __name__ == "__main__":
    main()
