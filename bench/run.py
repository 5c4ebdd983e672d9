"""Load benchmark of ``$everything``: the facade against the floor beneath it, on loopback.

    python bench/run.py [--latency-ms 20] [--patients 200] [--duration 10] [--rate R]
                        [--concurrency 32] [--gap-rounds 6] [--gap-round-s 5] [--out bench/results]

What runs, each in its own process (the load generator is this process):

* the three simulators (``fhir-facade simulate``), each with ``latency_ms`` added to every answer
  through its fault-control endpoint, serving the demo patients plus ``--patients`` generated ones;
* the facade (``fhir-facade serve``) with a temporary config: backends on the simulators, a
  benchmark ES256 issuer (key pair made for this run), a fresh patient-id key and a SQLite store in
  the run's temporary directory, where each patient's consent (PDL) for the bench clinician's care
  provider is registered at start-up (``POST /fhir/Consent``), so answers hold every source;
* ``bench/baseline.py``, a minimal pass-through aggregator.

Every process runs on the same event loop (``proxy.loop``: uvloop where installed).

What is measured, for ``$everything`` over the demo and generated patients in round-robin:

(a) ``direct``         one call straight to the slowest backend endpoint (found by a probe): the floor
(b) ``baseline``       the same backend calls the facade makes, concurrently, raw bodies concatenated
(c) ``facade``         the facade, uncached (``cache: {enabled: false}`` when the config knows it)
(d) ``facade-cached``  the facade restarted with ``cache: {enabled: true}``, after a warm-up pass
                       over every patient; "not available" while the config has no ``cache`` section

How: for each target first a closed model — ``--concurrency`` workers back to back for
``--duration`` s — gives the maximum throughput; then an open model sends at a fixed mean arrival
rate (``--rate``, default half the uncached facade's closed-model maximum, the same rate for every
target; ``--arrivals poisson``, the default, or ``uniform``; the same seeded schedule for every
target) for ``--duration`` s, each latency measured from the request's *intended* send time, so a
stalled server or load generator shows up in the figures (no coordinated omission). In-flight
requests are bounded (``--max-inflight``); a request still unfinished ``--timeout`` s after the
last send is an error. An answer that is 200 but degraded (the facade's source status naming a
source failed or stale, the baseline's failed-call header) counts as "partial"; a facade answer
naming a source ``cached`` counts as answered from the cache — so (d) shows how many answers the
cache really served (``judge_bundle``).

Then the latency gap of (c) to (b), paired: the two alternate at the same rate in ``--gap-rounds``
rounds of ``--gap-round-s`` s each, and the median over the rounds of (c) minus (b), p50 and p99, is
reported under the table. Rows measured minutes apart differ by machine drift as well; the paired
figure is the one to compare with the targets.

Outputs in ``--out``: ``results.json`` (settings, every figure, the open-model samples),
``results.md`` (the table printed at the end) and ``latency.png`` (latency CDF and percentiles per
target). Facade RSS (VmRSS, and the peak VmHWM) is read from /proc before and after its load.

Every process listens on 127.0.0.1 only and is stopped on exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import math
import os
import platform
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import aiohttp
import jwt
import orjson
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from proxy import loop
from proxy.app import compile_mappings
from proxy.auth.demo import make_token as demo_token
from proxy.fhir.bundle import SOURCE_STATUS_SYSTEM
from proxy.fhir.ids import PatientIds, ResourceIds
from proxy.hsa import HSA_SYSTEM
from proxy.mapping.requests import RequestSpec
from proxy.pipeline.fetch import context, plan_requests
from proxy.pnr import system_of
from proxy.settings import (
    DEFAULT_CONFIG,
    LEASE_USE,
    PATIENT_ID_KEY_ENV,
    ConfigError,
    Settings,
    load_settings,
)
from proxy.simulators.population import population
from proxy.types import PatientRef

REPO = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"
T = TypeVar("T")
BENCH_ISSUER = "urn:fhir-facade:bench-issuer"
OUTCOME_MARK = b'"outcome"'  # in every Bundle with a source note (search.mode = outcome): parse only those


# ---------------------------------------------------------------- processes


class Processes:
    """The subprocesses of one run; ``stop_all`` ends each of them by its own pid."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.running: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.log_dir / f"{name}.log", "wb")  # closed below; the child keeps its copy
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches only us; we stop the children ourselves
        )
        log.close()
        self.running[name] = proc
        return proc

    def stop(self, name: str) -> None:
        proc = self.running.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def stop_all(self) -> None:
        for name in list(self.running):
            self.stop(name)

    def log_tail(self, name: str) -> str:
        text = (self.log_dir / f"{name}.log").read_text(errors="replace")
        return "\n".join(text.splitlines()[-15:])


def with_processes(prefix: str, work: Callable[[Processes, Path], Coroutine[Any, Any, T]]) -> T:
    """Run ``work`` on the facade's event loop with a temporary directory and a ``Processes``; every
    process it started is stopped on return, on Ctrl-C and on kill — also when started with SIGINT
    ignored (``cmd &``)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        procs = Processes(Path(tmp))
        try:
            return loop.run(work(procs, Path(tmp)))
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            sys.exit(130)
        finally:
            procs.stop_all()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def fhir_facade() -> list[str]:
    script = Path(sys.executable).parent / "fhir-facade"
    return [str(script)] if script.exists() else [sys.executable, "-m", "proxy.cli"]


async def wait_up(procs: Processes, name: str, url: str, timeout_s: float = 60.0) -> None:
    """Poll ``url`` until it answers 200; fail early if the process died."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while time.monotonic() < deadline:
            if procs.running[name].poll() is not None:
                raise RuntimeError(f"{name} exited:\n{procs.log_tail(name)}")
            try:
                async with http.get(url) as r:
                    if r.status == 200:
                        return
            except (aiohttp.ClientError, TimeoutError):
                pass
            await asyncio.sleep(0.2)
    raise RuntimeError(f"{name} did not come up within {timeout_s:g} s:\n{procs.log_tail(name)}")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used so far (``/proc/<pid>/stat`` fields 14, 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """``pid``'s child processes, theirs, and so on (Linux: /proc)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def mapping_processes(facade_pid: int) -> list[int]:
    """The facade's mapping processes (``facade.map_workers``: spawned children)."""
    return [p for p in descendants(facade_pid) if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]


def rss_mib(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak) of a process, in MiB."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


# ---------------------------------------------------------------- configuration, keys, tokens


def make_issuer(tmp: Path) -> tuple[ec.EllipticCurvePrivateKey, Path]:
    """A fresh ES256 key pair; the public key as PEM for the facade's ``auth.issuers``."""
    private = ec.generate_private_key(ec.SECP256R1())
    pem = tmp / "bench-issuer.pem"
    pem.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, pem


def clinician_token(private: ec.EllipticCurvePrivateKey, lifetime_s: int, audience: str = "clinician") -> str:
    """The claims of a demo token of ``audience`` (a clinician's: HSA-ids, scopes …), issued by the
    bench issuer, ES256."""
    claims = jwt.decode(demo_token(audience, lifetime_s=lifetime_s), options={"verify_signature": False})
    claims["iss"] = BENCH_ISSUER
    return jwt.encode(claims, private, algorithm="ES256")


def write_config(
    tmp: Path,
    name: str,
    sim_urls: dict[str, str],
    pem: Path,
    cache: dict | None,
    *,
    facade: dict[str, Any] | None = None,
    backend_total_s: float | None = None,
) -> Path:
    """config/facade.yaml with the backends on the simulators, the bench issuer and ``cache``;
    ``facade``: keys over its ``facade:`` section (e.g. ``max_count``), ``backend_total_s``: every
    backend's total timeout (the long-history scenarios)."""
    doc = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    doc["mappings_dir"] = str((DEFAULT_CONFIG.parent / doc.get("mappings_dir", "../mappings")).resolve())
    for backend, b in doc["backends"].items():
        if backend in sim_urls:
            b["base_url"] = sim_urls[backend]
    doc["auth"] = {
        "issuers": [{"issuer": BENCH_ISSUER, "pem_file": str(pem), "algorithms": ["ES256"]}],
        "max_token_lifetime_s": 4 * 3600,  # (the bench's tokens outlive a run: clinician_token)
    }
    # One SQLite store per run, shared by the facade's restarts: the consents registered at start-up
    # (register_consents) hold for the cached facade too; the access log of the run stays in tmp.
    doc["store"] = {"kind": "sqlite", "sqlite_path": str(tmp / "facade.sqlite")}
    # `serve` needs the address clients use for links (never taken from a request's Host header);
    # the bench follows no links, so one base for every facade it starts will do
    doc["facade"] = {**(doc.get("facade") or {}), "public_base_url": f"http://{HOST}/fhir", **(facade or {})}
    if backend_total_s is not None:
        for b in doc["backends"].values():
            b["timeout"] = {**(b.get("timeout") or {}), "total_s": backend_total_s}
        # (the outbox's lease must outlast any one request to a backend: the configuration insists)
        lease = max(float(doc["outbox"]["lease_s"]), backend_total_s / LEASE_USE + 1.0)
        doc["outbox"] = {**doc["outbox"], "lease_s": lease}
    if cache is not None:  # over the section config/facade.yaml may have, keeping its other keys
        doc["cache"] = {**(doc.get("cache") or {}), **cache}
    # The learned engagement index is a negative cache (it skips backends known to hold nothing):
    # off, so "uncached" asks every backend every time, like the baseline; on with the cache.
    if "engagement" in doc and cache is not None:
        doc["engagement"] = {**(doc.get("engagement") or {}), "enabled": bool(cache.get("enabled"))}
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def cache_support(tmp: Path, pem: Path) -> str | None:
    """None when ``load_settings`` accepts a ``cache`` section, else why not."""
    try:
        load_settings(write_config(tmp, "cache-probe", {}, pem, {"enabled": True, "ttl_s": 3600}))
    except ConfigError as exc:
        return str(exc)
    return None


RECIPIENT_ROLE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"


async def register_consents(base: str, patient_ids: list[str], token: str, concurrency: int = 8) -> None:
    """Each bench patient's consent (PDL) for the token's care provider, through ``POST /fhir/Consent``.

    The facade withholds other providers' records from a clinician without one; with it the answer
    holds every source, like the baseline's concatenation. Registered once: the store outlives the
    facade's restart for (d)."""
    provider = jwt.decode(token, options={"verify_signature": False})["care_provider_hsa_id"]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json"}
    queue = iter(patient_ids)

    def body(patient_id: str) -> bytes:
        return orjson.dumps(
            {
                "resourceType": "Consent",
                "status": "active",
                "scope": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                            "code": "patient-privacy",
                        }
                    ]
                },
                "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
                "patient": {"reference": f"Patient/{patient_id}"},
                "provision": {
                    "type": "permit",
                    "actor": [
                        {
                            "role": {"coding": [{"system": RECIPIENT_ROLE, "code": "IRCP"}]},
                            "reference": {"identifier": {"system": HSA_SYSTEM, "value": provider}},
                        }
                    ],
                },
            }
        )

    async with aiohttp.ClientSession(headers=headers) as http:

        async def worker() -> None:
            for patient_id in queue:
                async with http.post(f"{base}/fhir/Consent", data=body(patient_id)) as r:
                    if r.status != 201:
                        raise RuntimeError(f"POST Consent: {r.status} {await r.text()}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))


# ---------------------------------------------------------------- targets


@dataclass
class Target:
    """One thing to load: how to send request number ``i`` and how to judge its answer."""

    name: str
    label: str
    send: Callable[[aiohttp.ClientSession, int], Coroutine[Any, Any, str]]  # ok | cached | partial | error
    note: str = ""
    results: dict[str, Any] = field(default_factory=dict)


def judge_bundle(body: bytes) -> str:
    """``partial`` when an OperationOutcome entry says the answer is short of the baseline's: a
    source failed or stale (severity warning) or records withheld under PDL (code ``suppressed``:
    the bench patient's consent was not registered). ``cached`` when a source's status (README
    "Source status") is ``cached`` or ``not-asked`` (answered from the cache, or skipped by the
    engagement index), else ``ok``. Every answer names its sources, ``answered`` ones included, so
    informational notes alone do not make an answer ``cached``."""
    if OUTCOME_MARK not in body:
        return "ok"
    issues = [
        issue
        for entry in orjson.loads(body).get("entry", [])
        if entry.get("search", {}).get("mode") == "outcome"
        for issue in entry.get("resource", {}).get("issue", [])
    ]
    if any(i.get("severity") != "information" or i.get("code") == "suppressed" for i in issues):
        return "partial"
    statuses = {
        c.get("code")
        for i in issues
        for c in i.get("details", {}).get("coding", [])
        if c.get("system") == SOURCE_STATUS_SYSTEM
    }
    return "cached" if statuses & {"cached", "not-asked"} else "ok"


def facade_target(
    name: str,
    label: str,
    base: str,
    ids: list[str],
    token: str,
    on_body: Callable[[bytes], None] | None = None,
) -> Target:
    """``$everything`` of the ``ids`` in turn; ``on_body`` sees each answer's body (a 200's)."""
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/fhir+json"}

    async def send(http: aiohttp.ClientSession, i: int) -> str:
        url = f"{base}/fhir/Patient/{ids[i % len(ids)]}/$everything"
        async with http.get(url, params={"_count": "500"}, headers=headers) as r:
            body = await r.read()
            if r.status != 200:
                return "error"
        if on_body is not None:
            on_body(body)
        return judge_bundle(body)

    return Target(name, label, send)


def pyplot() -> Any | None:
    """matplotlib's pyplot, drawing to files (Agg), or None when matplotlib is not installed
    (``pip install -e '.[bench]'``): the benches then write no plot."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_plot(plt: Any, fig: Any, path: Path) -> bool:
    """``fig`` laid out and written to ``path`` (PNG), then let go; True (a plot was written)."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def baseline_target(base: str, pnrs: list[str], calls: int) -> Target:
    async def send(http: aiohttp.ClientSession, i: int) -> str:
        async with http.get(f"{base}/everything/{pnrs[i % len(pnrs)]}") as r:
            await r.read()
            if r.status != 200:
                return "error"
            return "partial" if r.headers.get("X-Bench-Failed", "0") != "0" else "ok"

    return Target("baseline", "(b) pass-through baseline", send, note=f"{calls} backend calls per request")


def render(settings: Settings, backend: str, spec: RequestSpec, patient: PatientRef) -> tuple[Any, ...]:
    """(method, url, query, headers, body) of one backend request, exactly as the facade renders it."""
    ctx = context(SimpleNamespace(settings=settings), backend, patient)  # type: ignore[arg-type]
    path, query, headers, body = spec.render(ctx)  # (context() reads only .settings of the facade)
    return spec.method, settings.backend(backend).base_url + path, query, headers, body


def direct_target(settings: Settings, backend: str, spec: RequestSpec, refs: list[PatientRef]) -> Target:
    """Request ``i``: the one backend call ``spec`` for patient ``i`` (round-robin), sent directly."""
    unknown = spec.unknown_patient
    rendered = [render(settings, backend, spec, p) for p in refs]

    async def send(http: aiohttp.ClientSession, i: int) -> str:
        method, url, query, headers, body = rendered[i % len(rendered)]
        async with http.request(method, url, params=query, headers=headers, data=body) as r:
            raw = await r.read()
            says_unknown = unknown is not None and unknown.says_unknown(r.status, raw, spec.format)
            return "ok" if 200 <= r.status < 300 or says_unknown else "error"

    words = [w for w in spec.path.split("/") if w and "{" not in w and not w.isdigit() and w != "rivtabp21"]
    return Target("direct", f"(a) slowest backend call, direct ({backend} {words[-1]})", send)


async def slowest_call(
    settings: Settings, plan: dict[str, list[RequestSpec]], refs: list[PatientRef], rounds: int = 3
) -> tuple[str, RequestSpec, float]:
    """The request of the ``$everything`` plan with the highest median latency (a sequential probe)."""
    medians = []
    async with aiohttp.ClientSession() as http:
        for backend, specs in plan.items():
            for spec in specs:
                samples = []
                for p in refs * rounds:
                    method, url, query, headers, body = render(settings, backend, spec, p)
                    t0 = time.perf_counter()
                    async with http.request(method, url, params=query, headers=headers, data=body) as r:
                        await r.read()
                    samples.append((time.perf_counter() - t0) * 1000)
                medians.append((sorted(samples)[len(samples) // 2], backend, spec))
    median, backend, spec = max(medians, key=lambda m: m[0])
    return backend, spec, median


# ---------------------------------------------------------------- load models


def client(limit: int, timeout_s: float) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit),
        timeout=aiohttp.ClientTimeout(total=timeout_s),
    )


async def attempt(target: Target, http: aiohttp.ClientSession, i: int) -> str:
    try:
        return await target.send(http, i)
    except (aiohttp.ClientError, TimeoutError, OSError):
        return "error"


def percentiles(ms: list[float]) -> dict[str, float | None]:
    """Nearest-rank p50/p90/p99 and max, in ms (None without samples)."""
    if not ms:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    s = sorted(ms)

    def rank(p: float) -> float:
        return round(s[max(0, min(len(s) - 1, math.ceil(len(s) * p / 100) - 1))], 1)  # nearest rank

    return {"p50": rank(50), "p90": rank(90), "p99": rank(99), "max": round(s[-1], 1)}


async def warm_up(target: Target, requests: int, concurrency: int, timeout_s: float) -> Counter[str]:
    """``requests`` requests (round-robin from 0), ``concurrency`` at a time: connections, caches."""
    counter = itertools.count()
    seen: Counter[str] = Counter()
    async with client(concurrency, timeout_s) as http:

        async def worker() -> None:
            while (i := next(counter)) < requests:
                seen[await attempt(target, http, i)] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return seen


async def closed_model(
    target: Target, concurrency: int, duration_s: float, timeout_s: float
) -> dict[str, Any]:
    """``concurrency`` workers, each sending its next request when the last one answered."""
    counter = itertools.count()
    latencies: list[float] = []
    seen: Counter[str] = Counter()
    async with client(concurrency, timeout_s) as http:
        start = time.perf_counter()
        end = start + duration_s

        async def worker() -> None:
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                status = await attempt(target, http, next(counter))
                seen[status] += 1
                if status != "error":
                    latencies.append((time.perf_counter() - t0) * 1000)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    answered = sum(seen.values()) - seen["error"]
    return {
        "concurrency": concurrency,
        "duration_s": round(elapsed, 2),
        "requests": sum(seen.values()),
        "throughput_rps": round(answered / elapsed, 1),
        "errors": seen["error"],
        "partial": seen["partial"],
        "from_cache": seen["cached"],
        **percentiles(latencies),
    }


ARRIVALS = ("poisson", "uniform")


def schedule(rate: float, n: int, arrivals: str, seed: int = 1177) -> list[float]:
    """When each of ``n`` requests is due, in seconds from the start, at a mean of ``rate`` per second.

    ``poisson``: exponential gaps, as from many independent clients; seeded, so every target gets
    the same schedule. ``uniform``: one every ``1 / rate`` s. Uniform gaps resonate with the
    backends' latency: when a request's answers fall due just as a later request starts its fan-out
    the two collide every time, and the measured overhead swings with the exact rate (on this
    machine, +0.6 ms at 60 req/s, +3.8 at 80, +1.7 at 90)."""
    if arrivals == "uniform":
        return [i / rate for i in range(n)]
    rng = random.Random(seed)
    due, t = [], 0.0
    for _ in range(n):
        due.append(t)
        t += rng.expovariate(rate)
    return due


async def fire_on_schedule(
    offsets: list[float], fire: Callable[[int, float], Awaitable[None]], wait_s: float
) -> tuple[int, float]:
    """Start ``fire(i, due)`` at ``due = start + offsets[i]`` (an open model: never waiting for an
    answer before the next send); then wait at most ``wait_s`` for them, cancelling the rest.
    Returns (how many were cancelled, seconds from start to the end)."""
    start = time.perf_counter() + 0.05
    tasks = []
    for i, offset in enumerate(offsets):
        due = start + offset
        if (delay := due - time.perf_counter()) > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(fire(i, due)))
    _, pending = await asyncio.wait(tasks, timeout=wait_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    return len(pending), time.perf_counter() - start


def write_results(
    out: Path,
    results: dict[str, Any],
    table: str,
    *,
    stem: str = "results",
    plot: Callable[[dict[str, Any], Path], bool | None] | None = None,
) -> None:
    """``<stem>.json``, ``<stem>.md`` and, with ``plot`` and matplotlib, ``<stem>.png`` in ``out``;
    the table printed."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(results, indent=1, ensure_ascii=False) + "\n")
    (out / f"{stem}.md").write_text(table)
    plotted = plot is not None and plot(results, out / f"{stem}.png") is not False
    print()
    print(table)
    written = f"written: {out}/{stem}.json, {stem}.md"
    print(written + (f", {stem}.png" if plotted else "" if plot is None else " (no matplotlib: no plot)"))


async def open_model(
    target: Target,
    rate: float,
    duration_s: float,
    max_inflight: int,
    timeout_s: float,
    arrivals: str = "poisson",
) -> dict[str, Any]:
    """Request ``i`` is due at ``start + schedule[i]``; its latency counts from then, not from its send."""
    n = max(1, round(rate * duration_s))
    offsets = schedule(rate, n, arrivals)
    slots = asyncio.Semaphore(max_inflight)
    done: list[tuple[float, float, str]] = []  # (latency ms from intended time, send lag ms, status)
    async with client(max_inflight, timeout_s) as http:

        async def fire(i: int, due: float) -> None:
            async with slots:
                lag = time.perf_counter() - due
                status = await attempt(target, http, i)
            done.append(((time.perf_counter() - due) * 1000, lag * 1000, status))

        unfinished, elapsed = await fire_on_schedule(offsets, fire, timeout_s + 2)
    statuses = Counter(s for _, _, s in done)
    latencies = [ms for ms, _, s in done if s != "error"]
    return {
        "rate_rps": round(rate, 1),
        "duration_s": round(elapsed, 2),
        "scheduled": n,
        "throughput_rps": round(len(latencies) / elapsed, 1),
        "errors": statuses["error"] + unfinished,
        "unfinished": unfinished,
        "partial": statuses["partial"],
        "from_cache": statuses["cached"],
        "max_send_lag_ms": round(max((lag for _, lag, _ in done), default=0.0), 1),
        **percentiles(latencies),
        "samples_ms": [round(ms, 2) for ms in latencies],
    }


# ---------------------------------------------------------------- outputs


COLUMNS = ("p50", "p90", "p99", "max")


def markdown(results: dict[str, Any]) -> str:
    cfg = results["config"]
    lines = [
        f"`$everything`, backends +{cfg['latency_ms']:g} ms each, {cfg['patients_total']} patients "
        f"round-robin; open model at {cfg['rate_rps']:g} req/s ({cfg.get('arrivals', 'uniform')} arrivals) "
        f"for {cfg['duration_s']:g} s (latency from the intended send time); closed model "
        f"{cfg['concurrency']} workers.",
        "",
        "| target | p50 ms | p90 ms | p99 ms | max ms | open req/s | closed max req/s "
        "| errors | partial | CPU ms/req | facade RSS before → after (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for t in results["targets"]:
        if "skipped" in t:
            lines.append(f"| {t['label']} | {t['skipped']} |{' – |' * 9}")
            continue
        o, c = t["open"], t["closed"]
        cells = [f"{o[k]:.1f}" if o[k] is not None else "–" for k in COLUMNS]
        rss = ""
        if "rss_before" in t:
            before, after = t["rss_before"], t["rss_after"]
            rss = f"{before['VmRSS']:.0f} → {after['VmRSS']:.0f} (peak {after['VmHWM']:.0f})"
        lines.append(
            f"| {t['label']} | {' | '.join(cells)} | {o['throughput_rps']:.1f} | {c['throughput_rps']:.1f} "
            f"| {o['errors']} / {c['errors']} | {o['partial']} / {c['partial']} "
            f"| {o.get('cpu_ms_per_request', '')} | {rss} |"
        )
    lines += [
        "",
        "errors and partial: open / closed model. CPU ms/req: the target's own process (facade or "
        "baseline; not the simulators) per answered request in the open model.",
    ]
    gap = results.get("paired_gap")
    if gap and gap["rounds"]:
        lines.append(
            f"Latency gap of (c) to (b), paired: the two alternate in {gap['rounds']} rounds of "
            f"{gap['round_s']:g} s each at {gap['rate_rps']:g} req/s; median over the rounds of "
            f"(c) − (b): **p50 {gap['p50_gap_ms']:+.2f} ms, p99 {gap['p99_gap_ms']:+.2f} ms** "
            f"(p50 per round: {', '.join(f'{g:+.1f}' for g in gap['p50_gaps_ms'])}). The table's rows "
            "are measured minutes apart; this is the figure to read the gap from."
        )
    for t in results["targets"]:
        if "open" in t and (t["open"]["from_cache"] or t["closed"]["from_cache"]):
            o, c = t["open"], t["closed"]
            lines.append(
                f"{t['label']}: answered from the cache {o['from_cache']} of {o['scheduled']} (open), "
                f"{c['from_cache']} of {c['requests']} (closed)."
            )
        elif t.get("note") and "skipped" in t:
            lines.append(f"{t['label']}: {t['note']}")
    return "\n".join(lines) + "\n"


def _plain_log_axis(axis: Any, values: list[float]) -> None:
    """Log scale with ticks at 1-2-5 steps (finer over a narrow range) written as plain numbers."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    lo, hi = min(values), max(values)
    steps = (1, 2, 5) if hi / lo > 10 else (1, 1.5, 2, 3, 4, 5, 7)
    ticks = [m * 10**e for e in range(-1, 6) for m in steps if lo / 1.5 <= m * 10**e <= hi * 1.5]
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    measured = [t for t in results["targets"] if "open" in t and t["open"]["samples_ms"]]
    everything = [ms for t in measured for ms in t["open"]["samples_ms"]]
    fig, (cdf, bars) = plt.subplots(1, 2, figsize=(13, 5.6))
    for t in measured:
        s = sorted(t["open"]["samples_ms"])
        cdf.step(s, [(k + 1) / len(s) for k in range(len(s))], where="post", label=t["label"])
    cdf.set_xscale("log")
    _plain_log_axis(cdf.xaxis, everything)
    cdf.set_xlabel("latency from the intended send time (ms, log scale)")
    cdf.set_ylabel("share of requests answered within")
    cdf.set_ylim(0, 1.01)
    cdf.grid(True, which="both", alpha=0.3)
    cdf.set_title("Latency CDF, open model")

    width = 0.8 / max(1, len(measured))
    for k, t in enumerate(measured):
        xs = [j + (k - (len(measured) - 1) / 2) * width for j in range(len(COLUMNS))]
        bar = bars.bar(xs, [t["open"][c] for c in COLUMNS], width)
        bars.bar_label(bar, fmt="%.0f", fontsize=7)
    bars.set_xticks(range(len(COLUMNS)), COLUMNS)
    bars.set_ylabel("ms")
    bars.grid(True, axis="y", alpha=0.3)
    bars.set_title("Percentiles, open model")

    cfg = results["config"]
    skipped = [f"{t['label']}: {t['skipped']}" for t in results["targets"] if "skipped" in t]
    fig.suptitle(
        rf"\$everything, backends +{cfg['latency_ms']:g} ms each, open model {cfg['rate_rps']:g} req/s "
        f"for {cfg['duration_s']:g} s, {cfg['patients_total']} patients, {cfg['cpus']} CPUs"
        + ("\n" + "; ".join(skipped) if skipped else "")
    )
    fig.legend(loc="lower center", ncols=2, fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- the run


async def start_facade(
    procs: Processes, name: str, config: Path, key_b64: str, timeout_s: float, workers: int = 1
) -> tuple[str, int]:
    """``fhir-facade serve`` (``workers`` processes on one port) on a free loopback port: its base
    URL and pid (with several workers, the first process's)."""
    port = free_port()
    argv = [*fhir_facade(), "--config", str(config), "serve", "--host", HOST, "--port", str(port)]
    proc = procs.start(
        name, [*argv, *(["--workers", str(workers)] if workers > 1 else [])], {PATIENT_ID_KEY_ENV: key_b64}
    )
    base = f"http://{HOST}:{port}"
    await wait_up(procs, name, f"{base}/fhir/metadata", timeout_s)
    return base, proc.pid


async def start_simulators(procs: Processes, args: argparse.Namespace) -> dict[str, str]:
    """One ``fhir-facade simulate`` process per simulated backend, ``latency_ms`` set on each."""
    urls = {}
    for b in load_settings().backends:
        if b.simulator:
            port = free_port()
            argv = [*fhir_facade(), "simulate", b.simulator, "--host", HOST, "--port", str(port)]
            cache = ["--render-cache-mb", "256"] if getattr(args, "sim_render_cache", False) else []
            procs.start(f"sim-{b.name}", [*argv, "--patients", str(args.patients), *cache])
            urls[b.name] = f"http://{HOST}:{port}"
    async with aiohttp.ClientSession() as http:
        for name, url in urls.items():
            await wait_up(procs, f"sim-{name}", f"{url}/_sim/health", args.start_timeout)
            async with http.put(f"{url}/_sim/faults", json={"latency_ms": args.latency_ms}) as r:
                if r.status != 200 or (await r.json())["latency_ms"] != args.latency_ms:
                    raise RuntimeError(f"could not set the latency of {name}: {await r.text()}")
    return urls


async def start_baseline(procs: Processes, config: Path, key_b64: str, timeout_s: float) -> str:
    port = free_port()
    argv = [sys.executable, str(REPO / "bench" / "baseline.py"), "--config", str(config), "--port", str(port)]
    procs.start("baseline", argv, {PATIENT_ID_KEY_ENV: key_b64})
    url = f"http://{HOST}:{port}"
    await wait_up(procs, "baseline", f"{url}/health", timeout_s)
    return url


async def measure(target: Target, args: argparse.Namespace, rate: float | None, procs: Processes) -> float:
    """Closed model (max throughput), then the open model at ``rate`` (default: half that maximum),
    with the CPU the target's own process (the facade, the baseline) used per answered request."""
    print(f"  {target.label}: closed model, {args.concurrency} workers, {args.duration:g} s", flush=True)
    target.results["closed"] = await closed_model(target, args.concurrency, args.duration, args.timeout)
    rate = rate or max(1.0, target.results["closed"]["throughput_rps"] / 2)
    print(f"  {target.label}: open model, {rate:.1f} req/s, {args.duration:g} s", flush=True)
    proc = procs.running.get(target.name)
    before = cpu_s(proc.pid) if proc else 0.0
    target.results["open"] = result = await open_model(
        target, rate, args.duration, args.max_inflight, args.timeout, args.arrivals
    )
    if proc:
        answered = max(1, len(result["samples_ms"]))
        result["cpu_ms_per_request"] = round((cpu_s(proc.pid) - before) / answered * 1000, 2)
    return rate


async def paired_gaps(
    baseline: Target, facade: Target, rate: float, args: argparse.Namespace
) -> dict[str, Any]:
    """The facade's latency gap to the baseline, from rounds that alternate the two at ``rate``.

    The table's rows are measured one after the other, minutes apart; on a shared machine the CPU a
    request costs drifts by ±10 % over minutes, and a single pair of rows moves the p50 gap by ±1 ms.
    Each round here measures both for ``--gap-round-s`` s, back to back (which goes first alternates);
    the gap of each round is facade minus baseline, and the median over the rounds is the figure."""
    p50: list[float] = []
    p99: list[float] = []
    for r in range(args.gap_rounds):
        got: dict[str, dict[str, Any]] = {}
        for t in (baseline, facade) if r % 2 == 0 else (facade, baseline):
            got[t.name] = await open_model(
                t, rate, args.gap_round_s, args.max_inflight, args.timeout, args.arrivals
            )
        f, b = got[facade.name], got[baseline.name]
        if None in (f["p50"], b["p50"], f["p99"], b["p99"]):  # (nothing answered: no gap to read)
            continue
        p50.append(round(f["p50"] - b["p50"], 2))
        p99.append(round(f["p99"] - b["p99"], 2))
        print(f"  round {r + 1}: p50 gap {p50[-1]:+.1f} ms, p99 gap {p99[-1]:+.1f} ms", flush=True)
    return {
        "rounds": len(p50),
        "round_s": args.gap_round_s,
        "rate_rps": round(rate, 1),
        "p50_gap_ms": round(statistics.median(p50), 2) if p50 else None,
        "p99_gap_ms": round(statistics.median(p99), 2) if p99 else None,
        "p50_gaps_ms": p50,
        "p99_gaps_ms": p99,
    }


async def bench(args: argparse.Namespace, procs: Processes, tmp: Path) -> dict[str, Any]:
    people = population(args.patients)
    pnrs = [p.pnr for p in people]
    key = os.urandom(32)
    key_b64 = base64.b64encode(key).decode()
    ids = PatientIds(key)
    refs = [PatientRef(pnr=p, fhir_id=ids.encode(p), system=system_of(p)) for p in pnrs]
    private, pem = make_issuer(tmp)
    token = clinician_token(private, lifetime_s=4 * 3600)
    no_cache = cache_support(tmp, pem)

    print(f"starting simulators (+{args.latency_ms:g} ms each, {len(pnrs)} patients) …", flush=True)
    sim_urls = await start_simulators(procs, args)
    uncached_cfg = write_config(tmp, "facade", sim_urls, pem, None if no_cache else {"enabled": False})
    settings = load_settings(uncached_cfg)
    mappings = compile_mappings(settings, ResourceIds(key))
    plan = plan_requests(mappings, settings.source_priority, mappings.resource_types)
    calls = sum(len(s) for s in plan.values())

    print("starting the baseline aggregator and the facade …", flush=True)
    baseline_url = await start_baseline(procs, uncached_cfg, key_b64, args.start_timeout)
    facade_url, facade_pid = await start_facade(procs, "facade", uncached_cfg, key_b64, args.start_timeout)

    backend, spec, probe_ms = await slowest_call(settings, plan, refs[:4])
    print(f"slowest backend call (sequential probe, median): {backend} {spec.path} {probe_ms:.1f} ms")
    patient_ids = [r.fhir_id for r in refs]
    print(f"registering {len(patient_ids)} consents (PDL) for the bench clinician's care provider …")
    await register_consents(facade_url, patient_ids, token)
    direct = direct_target(settings, backend, spec, refs)
    direct.note = f"{spec.method} {spec.path}; probe median {probe_ms:.1f} ms"
    baseline = baseline_target(baseline_url, pnrs, calls)
    uncached = facade_target("facade", "(c) facade, uncached", facade_url, patient_ids, token)
    cached = facade_target("facade-cached", "(d) facade, warm cache", "", patient_ids, token)

    # The facade first: its closed-model maximum sets the open-model rate for every target.
    print("(c) facade, uncached", flush=True)
    uncached.results["rss_before"] = rss_mib(facade_pid)
    warm = await warm_up(uncached, min(len(pnrs), 50), 8, args.timeout)
    rate = await measure(uncached, args, args.rate, procs)
    uncached.results["rss_after"] = rss_mib(facade_pid)
    uncached.results["warm_up"] = dict(warm)
    for t in (direct, baseline):
        print(t.label, flush=True)
        t.results["warm_up"] = dict(await warm_up(t, min(len(pnrs), 50), 8, args.timeout))
        await measure(t, args, rate, procs)
    paired = None
    if args.gap_rounds:
        print(f"latency gap, paired: (b) and (c) alternating, {args.gap_rounds} rounds", flush=True)
        paired = await paired_gaps(baseline, uncached, rate, args)

    if no_cache:
        cached.results["skipped"] = "not available"
        cached.note = f"the config has no cache section: {no_cache}"
        print(f"(d) facade, warm cache: not available ({no_cache})", flush=True)
    else:
        print("(d) facade, warm cache: restarting the facade with cache enabled", flush=True)
        procs.stop("facade")
        cfg = write_config(tmp, "facade-cached", sim_urls, pem, {"enabled": True, "ttl_s": 3600})
        url, pid = await start_facade(procs, "facade-cached", cfg, key_b64, args.start_timeout)
        cached = facade_target("facade-cached", cached.label, url, patient_ids, token)
        cached.results["rss_before"] = rss_mib(pid)
        cached.results["warm_up"] = dict(await warm_up(cached, len(pnrs), 8, args.timeout))
        await measure(cached, args, rate, procs)
        cached.results["rss_after"] = rss_mib(pid)

    return {
        "config": {
            "latency_ms": args.latency_ms,
            "patients_generated": args.patients,
            "patients_total": len(pnrs),
            "duration_s": args.duration,
            "rate_rps": round(rate, 1),
            "arrivals": args.arrivals,
            "rate_from": "--rate" if args.rate else "half the uncached facade's closed-model maximum",
            "concurrency": args.concurrency,
            "max_inflight": args.max_inflight,
            "timeout_s": args.timeout,
            "backend_calls_per_everything": calls,
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        },
        "targets": [
            {"name": t.name, "label": t.label, "note": t.note, **t.results}
            for t in (direct, baseline, uncached, cached)
        ],
        "paired_gap": paired,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency-ms", type=float, default=20.0, help="added to every simulator answer")
    ap.add_argument("--patients", type=int, default=200, help="generated patients besides the 4 demo ones")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per load phase")
    ap.add_argument(
        "--rate", type=float, default=None, help="open-model req/s (default: half the facade max)"
    )
    ap.add_argument("--arrivals", choices=ARRIVALS, default="poisson", help="open-model arrival process")
    ap.add_argument("--concurrency", type=int, default=32, help="closed-model workers")
    ap.add_argument("--max-inflight", type=int, default=256, help="open-model bound on requests in flight")
    ap.add_argument(
        "--gap-rounds", type=int, default=6, help="paired rounds of (b) and (c) for the latency gap (0: none)"
    )
    ap.add_argument("--gap-round-s", type=float, default=5.0, help="seconds per target per paired round")
    ap.add_argument("--timeout", type=float, default=10.0, help="per-request timeout, s")
    ap.add_argument("--start-timeout", type=float, default=60.0, help="seconds a process may take to start")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = ap.parse_args()
    if not 0 <= args.patients <= 100_000:
        ap.error("--patients must be between 0 and 100000")
    if not (0 < args.duration <= 600 and 1 <= args.concurrency <= 1024 and 1 <= args.max_inflight <= 4096):
        ap.error("--duration 0-600 s, --concurrency 1-1024, --max-inflight 1-4096")
    if args.rate is not None and not 0 < args.rate <= 10_000:
        ap.error("--rate must be between 0 and 10000 req/s")
    if not (0 <= args.gap_rounds <= 100 and 0 < args.gap_round_s <= 600):
        ap.error("--gap-rounds 0-100, --gap-round-s 0-600 s")

    results = with_processes("fhir-bench-", lambda procs, tmp: bench(args, procs, tmp))
    write_results(args.out, results, markdown(results), plot=plot)


if __name__ == "__main__":
    main()
