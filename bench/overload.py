"""Overload: offer twice the facade's maximum and see whether load is shed or answers degrade.

    python bench/overload.py [--latency-ms 20] [--patients 50] [--duration 5] [--factor 2]
                             [--concurrency 32] [--max-inflight 4096] [--timeout 15] [--out DIR]

The processes of ``bench/run.py`` (its helpers: the three simulators with ``--latency-ms`` each, a
benchmark token issuer, each patient's consent registered, one ``fhir-facade serve`` worker,
uncached, on loopback). Then, for two facades on the same code — admission control as configured
(``admission: {enabled: true}``, the shipped defaults) and admission control off — one after the
other, each started afresh:

1. (first facade only) the **closed-model maximum**: ``--concurrency`` workers back to back for
   ``--duration`` s, ``$everything`` over the patients round-robin; its throughput is the maximum;
2. the **open model at ``--factor`` × that maximum** (Poisson arrivals, one seeded schedule, the
   same for both facades) for ``--duration`` s, each latency from the request's intended send time;
   every request is sent (in flight bounded only by ``--max-inflight``), and each answer is judged:

   ``ok``             200 and every source answered
   ``partial-facade`` 200, a source missing for the facade's own load (issue code ``throttled``:
                      "not asked in time: the facade was overloaded") — should be 0 with admission
   ``partial-backend``200, a source missing for any other reason (timeout, error, breaker open)
   ``shed``           503 with ``Retry-After`` and an OperationOutcome ``throttled``
   ``error``          anything else (another status, no answer within ``--timeout`` s)

3. a scrape of the facade's ``/metrics`` (open to loopback in the bench's config): shed requests,
   breaker transitions to open, backend calls by outcome.

Reported per facade: % of the 200 answers partial, and of those for the facade's own queueing; the
503s with ``Retry-After``; the successful (``ok``) throughput as % of the maximum (the ``ok``
answers completed while the load was offered, per second: what is drained after it is a tail, not
throughput); whether any breaker opened (from ``/metrics``, and from the answers' "failed
repeatedly" outcomes); latency percentiles of the ``ok`` answers. Written to ``--out``:
``overload.json``, ``overload.md`` (also printed) and ``overload.png`` (answers per second by
outcome, for each facade).

Bounded: two phases of ``--duration`` s plus start-up and draining (``--timeout``); loopback only;
every process is stopped at the end, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run

from proxy.fhir.bundle import SOURCE_STATUS_SYSTEM
from proxy.fhir.ids import PatientIds
from proxy.simulators.population import population

OUTCOMES = ("ok", "partial-facade", "partial-backend", "shed", "error")
VARIANTS = (("admission", True), ("no-admission", False))  # (name, admission.enabled)


def judge(status: int, headers: Any, body: bytes) -> tuple[str, bool]:
    """(the answer's outcome, whether it names a source not asked because its breaker is open)."""
    if status == 503:
        try:
            issue = orjson.loads(body)["issue"][0]
        except (ValueError, KeyError, IndexError, TypeError):
            return "error", False
        return ("shed" if issue.get("code") == "throttled" and "Retry-After" in headers else "error"), False
    if status != 200:
        return "error", False
    if run.OUTCOME_MARK not in body:
        return "ok", False
    issues = [
        issue
        for entry in orjson.loads(body).get("entry", [])
        if entry.get("search", {}).get("mode") == "outcome"
        for issue in entry.get("resource", {}).get("issue", [])
    ]
    missing = [
        i
        for i in issues
        if any(
            c.get("system") == SOURCE_STATUS_SYSTEM and c.get("code") in ("failed", "stale")
            for c in i.get("details", {}).get("coding", [])
        )
    ]
    breaker = any("failed repeatedly" in i.get("details", {}).get("text", "") for i in missing)
    if not missing:
        return "ok", False
    if all(i.get("code") == "throttled" for i in missing):
        return "partial-facade", breaker
    return "partial-backend", breaker


async def open_phase(
    base: str, ids: list[str], token: str, rate: float, duration_s: float, max_inflight: int, timeout_s: float
) -> dict[str, Any]:
    """Request ``i`` due at ``start + schedule[i]``: sent then whatever is in flight; judged."""
    offsets = run.schedule(rate, max(1, round(rate * duration_s)), "poisson")
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}
    done: list[tuple[float, float, str, bool]] = []  # (due offset s, latency ms, outcome, breaker-open)
    lags: list[float] = []  # how late each request left the load generator (ms): is it keeping up?
    slots = asyncio.Semaphore(max_inflight)
    async with run.client(max_inflight, timeout_s) as http:

        async def fire(i: int, due: float) -> None:
            async with slots:
                lags.append((time.perf_counter() - due) * 1000)
                try:
                    url = f"{base}/fhir/Patient/{ids[i % len(ids)]}/$everything"
                    async with http.get(url, params={"_count": "500"}, headers=headers) as r:
                        outcome, breaker = judge(r.status, r.headers, await r.read())
                except (aiohttp.ClientError, TimeoutError, OSError):
                    outcome, breaker = "error", False
            done.append((offsets[i], (time.perf_counter() - due) * 1000, outcome, breaker))

        unfinished, elapsed = await run.fire_on_schedule(offsets, fire, timeout_s + 5)
    seen = Counter(outcome for _, _, outcome, _ in done)
    seen["error"] += unfinished
    answered = seen["ok"] + seen["partial-facade"] + seen["partial-backend"]
    partial = seen["partial-facade"] + seen["partial-backend"]
    return {
        "rate_rps": round(rate, 1),
        "scheduled": len(offsets),
        "elapsed_s": round(elapsed, 2),
        "outcomes": {k: seen[k] for k in OUTCOMES},
        "answered_200": answered,
        "partial_pct": round(100 * partial / answered, 1) if answered else None,
        "partial_facade_pct": round(100 * seen["partial-facade"] / answered, 1) if answered else None,
        # ok answers completed while the load was offered, per second: the throughput under overload
        # (what completes after, draining what was let in, is in ok_rps_to_the_end)
        "ok_rps": round(
            sum(1 for t, ms, o, _ in done if o == "ok" and t + ms / 1000 <= duration_s) / duration_s, 1
        ),
        "ok_rps_to_the_end": round(seen["ok"] / elapsed, 1),
        "send_lag_ms": run.percentiles(lags),
        "answers_naming_an_open_breaker": sum(1 for *_, b in done if b),
        **run.percentiles([ms for _, ms, o, _ in done if o == "ok"]),
        "shed_latency": run.percentiles([ms for _, ms, o, _ in done if o == "shed"]),
        "timeline": [(round(t, 3), o) for t, _, o, _ in sorted(done)],
    }


async def scrape(base: str) -> dict[str, Any]:
    """Shed requests, breaker transitions to open, backend calls by outcome, from ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    async with aiohttp.ClientSession() as http, http.get(f"{base}/metrics") as r:
        text = await r.text()
    shed: Counter[str] = Counter()
    opened: Counter[str] = Counter()
    calls: Counter[str] = Counter()
    inside: Counter[str] = Counter()  # the facade's own view of $everything: seconds and count
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if (
                s.name.startswith("fhir_facade_request_duration_seconds_")
                and "everything" in s.labels["route"]
            ):
                inside[s.name.rsplit("_", 1)[1]] += s.value
            if s.name == "fhir_facade_requests_shed_total":
                shed[s.labels["reason"]] += int(s.value)
            elif s.name == "fhir_facade_breaker_transitions_total" and s.labels["state"] == "open":
                opened[s.labels["backend"]] += int(s.value)
            elif s.name == "fhir_facade_backend_calls_total":
                calls[f"{s.labels['backend']} {s.labels['outcome']}"] += int(s.value)
    return {
        "shed": dict(shed),
        "breaker_opened": dict(opened),
        "backend_calls": dict(sorted(calls.items())),
        "everything_s": dict(inside),
    }


def since(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """What the counters of ``after`` gained since ``before`` (the open phase alone)."""
    out: dict[str, Any] = {}
    for key in ("shed", "breaker_opened", "backend_calls", "everything_s"):
        gained = {k: v - before[key].get(k, 0) for k, v in after[key].items()}
        out[key] = {k: v for k, v in gained.items() if v}
    inside = out.pop("everything_s")
    count = inside.get("count", 0)
    # the mean time a $everything spent inside the facade's handlers (its own request duration)
    out["mean_ms_inside_the_facade"] = round(1000 * inside.get("sum", 0) / count, 1) if count else None
    return out


def listen_overflows() -> int | None:
    """The kernel's count of connections dropped because a listen queue was full (Linux; this
    network namespace, whoever's): a client then waits for its SYN to be sent again (1 s, 3 s, …)
    before any of the facade's own admission control can see it."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return None
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=True))
            return int(table.get("ListenOverflows", 0))
    return None


def config(tmp: Path, name: str, sim_urls: dict[str, str], pem: Path, admission: dict[str, Any]) -> Path:
    """bench/run.py's facade config (uncached), with ``admission`` over the config's own section
    and /metrics open to loopback."""
    path = run.write_config(tmp, name, sim_urls, pem, {"enabled": False})
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    doc["admission"] = {**(doc.get("admission") or {}), **admission}
    doc["metrics"] = {**(doc.get("metrics") or {}), "allow_unauthenticated_loopback": True}
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


async def overload(args: argparse.Namespace, procs: run.Processes, tmp: Path) -> dict[str, Any]:
    pnrs = [p.pnr for p in population(args.patients)]
    key = os.urandom(32)
    key_b64 = base64.b64encode(key).decode()
    ids = [PatientIds(key).encode(p) for p in pnrs]
    private, pem = run.make_issuer(tmp)
    token = run.clinician_token(private, lifetime_s=4 * 3600)
    print(f"starting simulators (+{args.latency_ms:g} ms each, {len(pnrs)} patients) …", flush=True)
    sim_urls = await run.start_simulators(procs, args)
    rate = maximum = None
    closed: dict[str, Any] | None = None
    variants = []
    for name, enabled in VARIANTS:
        given = ", ".join(f"{k}={v}" for k, v in args.admission.items()) or "the shipped defaults"
        label = f"admission control on ({given})" if enabled else "admission control off"
        cfg = config(tmp, name, sim_urls, pem, {**args.admission, "enabled": enabled})
        print(f"{label}: starting the facade …", flush=True)
        base, pid = await run.start_facade(procs, name, cfg, key_b64, args.start_timeout)
        if closed is None:  # (one store for both: the consents outlive the restart)
            print(f"registering {len(ids)} consents …", flush=True)
            await run.register_consents(base, ids, token)
        target = run.facade_target(name, label, base, ids, token)
        await run.warm_up(target, min(len(ids), 50), 8, args.timeout)
        if closed is None:
            print(f"  closed model, {args.concurrency} workers, {args.duration:g} s", flush=True)
            closed = await run.closed_model(target, args.concurrency, args.duration, args.timeout)
            maximum = closed["throughput_rps"]
            rate = args.factor * maximum
            print(f"  maximum {maximum:.1f} req/s: offering {rate:.1f} req/s", flush=True)
        assert rate is not None and maximum
        print(f"  open model, {rate:.1f} req/s for {args.duration:g} s", flush=True)
        cpu, before, dropped = run.cpu_s(pid), await scrape(base), listen_overflows()
        phase = await open_phase(base, ids, token, rate, args.duration, args.max_inflight, args.timeout)
        phase["cpu_s"] = round(run.cpu_s(pid) - cpu, 2)
        after = listen_overflows()
        phase["listen_overflows"] = None if dropped is None or after is None else after - dropped
        phase["ok_pct_of_max"] = round(100 * phase["ok_rps"] / maximum, 1)
        phase["metrics"] = since(before, await scrape(base))
        phase["breaker_opened"] = bool(phase["metrics"]["breaker_opened"]) or bool(
            phase["answers_naming_an_open_breaker"]
        )
        o = phase["outcomes"]
        print(
            f"  ok {o['ok']}, partial {o['partial-facade']} (facade) + {o['partial-backend']} (backend), "
            f"shed {o['shed']}, errors {o['error']}; ok {phase['ok_rps']} req/s = "
            f"{phase['ok_pct_of_max']} % of the maximum; breaker opened: {phase['breaker_opened']}; "
            f"ok p50 {phase['p50']} ms; send lag p99 {phase['send_lag_ms']['p99']} ms; "
            f"mean inside the facade {phase['metrics']['mean_ms_inside_the_facade']} ms; "
            f"listen-queue overflows {phase['listen_overflows']}",
            flush=True,
        )
        variants.append({"name": name, "label": label, "admission": enabled, **phase})
        procs.stop(name)
    return {
        "config": {
            "latency_ms": args.latency_ms,
            "patients_total": len(pnrs),
            "duration_s": args.duration,
            "factor": args.factor,
            "admission": args.admission,
            "concurrency": args.concurrency,
            "max_inflight": args.max_inflight,
            "timeout_s": args.timeout,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        "closed": closed,
        "maximum_rps": maximum,
        "offered_rps": round(rate or 0.0, 1),
        "variants": variants,
    }


def markdown(results: dict[str, Any]) -> str:
    cfg = results["config"]
    lines = [
        f"`$everything`, uncached, backends +{cfg['latency_ms']:g} ms each, "
        f"{cfg['patients_total']} patients; closed-model maximum ({cfg['concurrency']} workers, "
        f"{cfg['duration_s']:g} s): **{results['maximum_rps']:.1f} req/s**; offered "
        f"{cfg['factor']:g}× that, **{results['offered_rps']:.1f} req/s** (Poisson) for "
        f"{cfg['duration_s']:g} s; one worker, {cfg['cpus']} CPUs.",
        "",
        "| facade | answers 200 | partial % | of them for the facade's queueing | 503 + Retry-After "
        "| errors | ok req/s | ok % of max | ok p50 / p99 ms | breaker opened |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for v in results["variants"]:
        o = v["outcomes"]
        partial = o["partial-facade"] + o["partial-backend"]
        opened = ", ".join(f"{b} ×{n}" for b, n in v["metrics"]["breaker_opened"].items()) or "no"
        lines.append(
            f"| {v['label']} | {v['answered_200']} | {v['partial_pct']} | {o['partial-facade']} of {partial} "
            f"| {o['shed']} | {o['error']} | {v['ok_rps']} | {v['ok_pct_of_max']} "
            f"| {v['p50']} / {v['p99']} | {opened} |"
        )
    lines += [
        "",
        "partial: a 200 answer naming a source whose data is missing; *for the facade's queueing*: "
        "every missing source's issue code is `throttled` (the facade could not ask or hear it in time). "
        "ok: 200 and every source answered; ok req/s: those completed while the load was offered, "
        "per second.",
    ]
    for v in results["variants"]:
        m = v["metrics"]
        lines.append(f"{v['label']}: /metrics shed {m['shed'] or 0}, backend calls {m['backend_calls']}.")
    return "\n".join(lines) + "\n"


def plot(results: dict[str, Any], path: Path) -> bool:
    """The plot, when matplotlib is there (``pip install -e '.[bench]'``)."""
    plt = run.pyplot()
    if plt is None:
        return False

    variants = results["variants"]
    fig, axes = plt.subplots(1, len(variants), figsize=(6.5 * len(variants), 4.6), sharey=True, squeeze=False)
    for ax, v in zip(axes[0], variants, strict=True):
        seconds = int(max((t for t, _ in v["timeline"]), default=0)) + 1
        bottom = [0] * seconds
        for outcome in OUTCOMES:
            counts = [0] * seconds
            for t, o in v["timeline"]:
                if o == outcome and t >= 0:
                    counts[int(t)] += 1
            ax.bar(range(seconds), counts, bottom=bottom, label=outcome, width=0.9)
            bottom = [b + c for b, c in zip(bottom, counts, strict=True)]
        ax.axhline(
            results["maximum_rps"], color="black", linestyle="--", linewidth=1, label="closed-model max"
        )
        ax.set_title(v["label"])
        ax.set_xlabel("second of the phase the request was due in")
        ax.grid(True, axis="y", alpha=0.3)
    tallest = max(
        (sum(1 for t, _ in v["timeline"] if int(t) == k) for v in variants for k in range(60)), default=1
    )
    axes[0][0].set_ylim(0, tallest * 1.1)
    axes[0][0].set_ylabel("requests")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(
        f"Overload: {results['offered_rps']:.0f} req/s offered, {results['config']['factor']:g}× the maximum "
        f"{results['maximum_rps']:.0f} req/s"
    )
    return run.save_plot(plt, fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency-ms", type=float, default=20.0, help="added to every simulator answer")
    ap.add_argument("--patients", type=int, default=50, help="generated patients besides the 4 demo ones")
    ap.add_argument("--duration", type=float, default=5.0, help="seconds of the closed and each open phase")
    ap.add_argument("--factor", type=float, default=2.0, help="offered load, times the closed-model maximum")
    ap.add_argument("--concurrency", type=int, default=32, help="closed-model workers")
    ap.add_argument(
        "--max-inflight", type=int, default=4096, help="the load generator's bound on requests out"
    )
    ap.add_argument("--timeout", type=float, default=15.0, help="per-request timeout, s")
    ap.add_argument("--start-timeout", type=float, default=60.0, help="seconds a process may take to start")
    ap.add_argument(
        "--admission",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an admission setting for both facades (e.g. max_in_flight=16); repeatable",
    )
    ap.add_argument("--out", type=Path, default=run.REPO / "bench" / "results")
    args = ap.parse_args()
    try:
        args.admission = {k: yaml.safe_load(v) for k, _, v in (a.partition("=") for a in args.admission)}
    except yaml.YAMLError:
        ap.error("--admission expects KEY=VALUE")
    if not (0 <= args.patients <= 10_000 and 0 < args.duration <= 120 and 1 <= args.concurrency <= 1024):
        ap.error("--patients 0-10000, --duration 0-120 s, --concurrency 1-1024")
    if not (0 < args.factor <= 10 and 1 <= args.max_inflight <= 16_384 and 0 < args.timeout <= 120):
        ap.error("--factor 0-10, --max-inflight 1-16384, --timeout 0-120 s")
    results = run.with_processes("fhir-overload-", lambda procs, tmp: overload(args, procs, tmp))
    run.write_results(args.out, results, markdown(results), stem="overload", plot=plot)


if __name__ == "__main__":
    main()
