"""Paired comparison of facade variants against the baseline: is a change a gain, or noise?

    python bench/compare.py --variant "" --variant "PYTHONPATH=/path/to/other/worktree" \
                            [--rate 80] [--arrivals poisson] [--duration 8] [--settle 3] [--rounds 6] \
                            [--patients 200] [--latency-ms 20]

On this 2-core machine the p50 of one target moves by ±1 ms between runs of ``bench/run.py`` — more
than most single changes gain. Here every variant runs at the same time as the others (simulators,
baseline and one facade process per variant, as in ``bench/run.py``) and the open-model phases are
interleaved round by round — baseline, variant 1, variant 2, … — at one fixed ``--rate`` (the same
seeded Poisson schedule for each, as in ``bench/run.py``), so each round compares the targets under
the same conditions. Each phase is preceded by ``--settle`` s of the same load, not measured: a
process that waited for its turn longer than its keep-alive has to open its connections again.
Printed per round and target: p50, p90, p99, errors and the CPU its process used per answered
request; then per variant the median over rounds of its p50 gap to the baseline *in the same
round*, with each round's gap.

A variant is a comma-separated list of ``NAME=value`` environment settings for its facade process:
``""`` is the code of this checkout; ``PYTHONPATH=<git worktree>`` runs another commit (make one with
``git worktree add /tmp/prev HEAD~1``). Loopback only; every process is stopped at the end.
"""

from __future__ import annotations

import argparse
import base64
import os
import statistics
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run

from proxy.app import compile_mappings
from proxy.fhir.ids import PatientIds, ResourceIds
from proxy.pipeline.fetch import plan_requests
from proxy.settings import PATIENT_ID_KEY_ENV, load_settings
from proxy.simulators.population import population


def variant_env(text: str) -> dict[str, str]:
    env = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise SystemExit(f"--variant expects NAME=value[,NAME=value…], not {item!r}")
        env[name] = value
    return env


async def compare(args: argparse.Namespace, procs: run.Processes, tmp: Path) -> None:
    pnrs = [p.pnr for p in population(args.patients)]
    key = os.urandom(32)
    key_b64 = base64.b64encode(key).decode()
    ids = PatientIds(key)
    patient_ids = [ids.encode(p) for p in pnrs]
    private, pem = run.make_issuer(tmp)
    token = run.clinician_token(private, lifetime_s=4 * 3600)
    sims = await run.start_simulators(procs, args)
    config = run.write_config(tmp, "facade", sims, pem, {"enabled": False})
    settings = load_settings(config)
    mappings = compile_mappings(settings, ResourceIds(key))
    plan = plan_requests(mappings, settings.source_priority, mappings.resource_types)
    baseline_url = await run.start_baseline(procs, config, key_b64, args.start_timeout)
    targets = [run.baseline_target(baseline_url, pnrs, sum(len(s) for s in plan.values()))]
    for i, text in enumerate(args.variant):
        name = f"variant-{i + 1}"
        port = run.free_port()
        own = tmp / name  # each variant its own store (its access log, its registered consents)
        own.mkdir()
        config = run.write_config(own, "facade", sims, pem, {"enabled": False})
        argv = [*run.fhir_facade(), "--config", str(config), "serve", "--host", run.HOST, "--port", str(port)]
        procs.start(name, argv, {**variant_env(text), PATIENT_ID_KEY_ENV: key_b64})
        base = f"http://{run.HOST}:{port}"
        await run.wait_up(procs, name, f"{base}/fhir/metadata", args.start_timeout)
        await run.register_consents(base, patient_ids, token)
        targets.append(run.facade_target(name, text or "(this checkout)", base, patient_ids, token))
    for target in targets:
        await run.warm_up(target, min(len(pnrs), 50), 8, args.timeout)

    rounds: dict[str, list[dict[str, Any]]] = {t.name: [] for t in targets}
    for r in range(args.rounds):
        for target in targets:
            pid = procs.running[target.name].pid
            if args.settle > 0:  # not measured: connections idle past keep-alive are opened again
                await run.open_model(
                    target, args.rate, args.settle, args.max_inflight, args.timeout, args.arrivals
                )
            before = run.cpu_s(pid)
            result = await run.open_model(
                target, args.rate, args.duration, args.max_inflight, args.timeout, args.arrivals
            )
            result["cpu_ms"] = (run.cpu_s(pid) - before) / max(1, len(result["samples_ms"])) * 1000
            rounds[target.name].append(result)
            print(
                f"round {r + 1}  {target.name:<10} p50 {result['p50']:6.1f}  p90 {result['p90']:6.1f}  "
                f"p99 {result['p99']:6.1f} ms  errors {result['errors']}  CPU {result['cpu_ms']:.2f} ms/req",
                flush=True,
            )
    base_p50 = [x["p50"] for x in rounds["baseline"]]
    print(f"\nmedian of {args.rounds} rounds at {args.rate:g} req/s (gap: p50 - the baseline's, same round)")
    for target in targets:
        p50 = [x["p50"] for x in rounds[target.name]]
        gaps = [a - b for a, b in zip(p50, base_p50, strict=True)]
        cpu = statistics.median(x["cpu_ms"] for x in rounds[target.name])
        p50_ms = statistics.median(p50)
        line = f"{target.name:<10} {target.label:<36} p50 {p50_ms:6.2f} ms  CPU {cpu:.2f} ms/req"
        if target.name != "baseline":
            line += f"  gap {statistics.median(gaps):+.2f} ms  ({', '.join(f'{g:+.1f}' for g in gaps)})"
        print(line)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", action="append", default=[], help="NAME=value,… for one facade process")
    ap.add_argument("--rate", type=float, default=80.0, help="open-model req/s, the same for every target")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds per target per round")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--arrivals", choices=run.ARRIVALS, default="poisson", help="open-model arrival process")
    ap.add_argument(
        "--settle", type=float, default=3.0, help="unmeasured seconds at the rate before each phase"
    )
    ap.add_argument("--patients", type=int, default=200)
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--max-inflight", type=int, default=256)
    ap.add_argument("--timeout", type=float, default=10.0)
    ap.add_argument("--start-timeout", type=float, default=60.0)
    args = ap.parse_args()
    if not args.variant:
        args.variant = [""]
    if not (0 < args.rate <= 5000 and 0 < args.duration <= 600 and 1 <= args.rounds <= 100):
        ap.error("--rate 0-5000, --duration 0-600 s, --rounds 1-100")
    if not 0 <= args.settle <= 60:
        ap.error("--settle 0-60 s")
    if not 1 <= len(args.variant) <= 6:
        ap.error("1 to 6 variants")
    run.with_processes("fhir-facade-compare-", lambda procs, tmp: compare(args, procs, tmp))


if __name__ == "__main__":
    main()
