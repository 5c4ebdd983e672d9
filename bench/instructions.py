"""CPU per ``$everything`` as instructions counted by valgrind (callgrind): the same figure every run.

    python bench/instructions.py --variant "" --variant "PYTHONPATH=/path/to/other/worktree" \
                                 [--requests 60] [--warm 20] [--concurrency 4] [--patients 50] \
                                 [--latency-ms 5]

``bench/compare.py`` measures CPU seconds, and on a shared 2-core machine those move by ±10 % from one
round to the next — more than most changes gain or lose. Here each variant's facade (a ``serve``
process, uncached, on the simulators: ``bench/run.py``'s helpers) runs under ``valgrind
--tool=callgrind``; after ``--warm`` requests its counters are zeroed, ``--requests`` ``$everything``
are sent (``--concurrency`` at a time, round-robin over the bench's patients), and the instructions the
process executed meanwhile are divided by the requests: repeated runs agree to about ±0.3 %. What it
does not count: the kernel's work for the process (system calls — a smaller answer written costs
less there), and time (a cache miss costs an instruction). Valgrind slows the facade about 50×: the
backends' budgets are long enough for these patients, and a run whose answers are not all ``ok``
(a backend cut off) says so beside its figure, which is then not comparable.

A variant is a comma-separated list of ``NAME=value`` environment settings for its facade, as in
``compare.py``. To hold an older commit's config and mappings, run this file from that checkout
(``cp bench/instructions.py /tmp/prev/bench/ && cd /tmp/prev && PYTHONPATH=$PWD python
bench/instructions.py --variant "" --variant "PYTHONPATH=<this checkout>"``): it uses only helpers
``bench/run.py`` and ``bench/compare.py`` have had since issue 19. Needs valgrind (Debian:
``apt-get install valgrind``).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp
import run
from compare import variant_env

from proxy.fhir.ids import PatientIds
from proxy.settings import PATIENT_ID_KEY_ENV
from proxy.simulators.population import population


def instructions_since_zeroed(pid: int, tmp: Path, name: str) -> int:
    """Dump the counters of the callgrind process ``pid``; the total of that dump (its latest)."""
    subprocess.run(["callgrind_control", "--dump", str(pid)], check=True, capture_output=True)
    dump = max(tmp.glob(f"callgrind.{name}*"), key=os.path.getmtime)
    for line in dump.read_text().splitlines():
        if line.startswith(("totals:", "summary:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dump}")


async def send(target: run.Target, requests: int, concurrency: int, timeout_s: float) -> Counter[str]:
    """``requests`` requests to ``target``, ``concurrency`` at a time; how each was judged."""
    gate = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as http:

        async def one(n: int) -> str:
            async with gate:
                return await run.attempt(target, http, n)  # ("error" when it failed: not comparable)

        return Counter(await asyncio.gather(*(one(n) for n in range(requests))))


async def count(args: argparse.Namespace, procs: run.Processes, tmp: Path) -> None:
    pnrs = [p.pnr for p in population(args.patients)]
    key = os.urandom(32)
    ids = PatientIds(key)
    patient_ids = [ids.encode(p) for p in pnrs]
    private, pem = run.make_issuer(tmp)
    token = run.clinician_token(private, lifetime_s=4 * 3600)
    sims = await run.start_simulators(procs, args)
    script = run.fhir_facade()
    python = [sys.executable, script[0]] if len(script) == 1 else script  # (valgrind runs python itself)
    for i, text in enumerate(args.variant):
        name = f"variant-{i + 1}"
        own = tmp / name
        own.mkdir()
        config = run.write_config(own, "facade", sims, pem, {"enabled": False})
        port = run.free_port()
        out = tmp / f"callgrind.{name}"
        argv = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            *python,
            *("--config", str(config), "serve", "--host", run.HOST, "--port", str(port)),
        ]
        env = {**variant_env(text), PATIENT_ID_KEY_ENV: base64.b64encode(key).decode()}
        pid = procs.start(name, argv, env).pid
        base = f"http://{run.HOST}:{port}"
        await run.wait_up(procs, name, f"{base}/fhir/metadata", args.start_timeout)
        await run.register_consents(base, patient_ids, token)
        target = run.facade_target(name, text, base, patient_ids, token)
        await send(target, args.warm, args.concurrency, args.timeout)
        zero = ["callgrind_control", "--zero", str(pid)]
        await asyncio.to_thread(subprocess.run, zero, check=True, capture_output=True)
        judged = await send(target, args.requests, args.concurrency, args.timeout)
        total = await asyncio.to_thread(instructions_since_zeroed, pid, tmp, name)
        per = total / args.requests / 1e6
        note = "" if set(judged) == {"ok"} else f"  (answers {dict(judged)}: not comparable)"
        print(f"{name}  {text or '(this checkout)':<40} {per:7.2f} M instructions/request{note}", flush=True)
        procs.stop(name)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", action="append", default=[], help="NAME=value,… for one facade process")
    ap.add_argument("--requests", type=int, default=60, help="counted requests per variant")
    ap.add_argument("--warm", type=int, default=20, help="requests before the counting starts")
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--patients", type=int, default=50)
    ap.add_argument("--latency-ms", type=float, default=5.0)
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per request (valgrind is slow)")
    ap.add_argument("--start-timeout", type=float, default=300.0)
    args = ap.parse_args()
    if not args.variant:
        args.variant = [""]
    if not (1 <= args.requests <= 10_000 and 0 <= args.warm <= 10_000 and 1 <= args.concurrency <= 64):
        ap.error("--requests 1-10000, --warm 0-10000, --concurrency 1-64")
    if not 1 <= len(args.variant) <= 6:
        ap.error("1 to 6 variants")
    if shutil.which("valgrind") is None or shutil.which("callgrind_control") is None:
        raise SystemExit("needs valgrind (Debian: apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="fhir-facade-instructions-") as tmp:
        procs = run.Processes(Path(tmp))
        try:
            asyncio.run(count(args, procs, Path(tmp)))
        finally:
            procs.stop_all()


if __name__ == "__main__":
    main()
