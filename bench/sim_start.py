"""How long a simulator takes to start, and how much memory it holds, at a given population.

    python bench/sim_start.py [--patients 100000] [--simulators cosmic,viva,npo] [--ask 20]

Each simulator is started alone (``fhir-facade simulate NAME --patients N``, on loopback), one after
the other: the time until its ``/_sim/health`` answers, its RSS then, and — after ``--ask`` patients'
records were asked for (the lab results, or the whole medication list, of the first generated
patients: generated on first access) — its RSS again. Run it with ``PYTHONPATH=<another checkout>``
to measure that checkout.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run

from proxy.simulators.population import generated_people, pnr_dash

ASK = {
    "cosmic": lambda pnr: ("GET", f"/cosmic/api/v1/patients/{pnr_dash(pnr)}/labresults", None),
    "viva": lambda pnr: ("GET", f"/viva/api/v2/lakemedelslista?personnummer={pnr}", None),
    "npo": lambda pnr: (
        "POST",
        "/vp/clinicalprocess/healthcond/actoutcome/GetLaboratoryOrderOutcome/4/rivtabp21",
        "<Envelope><Header><LogicalAddress>x</LogicalAddress></Header><Body><GetLaboratoryOrderOutcome>"
        f"<patientId><id>{pnr}</id><type>1.2.752.129.2.1.3.1</type></patientId>"
        "</GetLaboratoryOrderOutcome></Body></Envelope>",
    ),
}


async def measure(args: argparse.Namespace, procs: run.Processes, tmp: Path) -> list[dict[str, object]]:
    asked = [p.pnr for p in generated_people(min(args.ask, args.patients))]
    rows = []
    for name in args.simulators.split(","):
        port = run.free_port()
        argv = [*run.fhir_facade(), "simulate", name, "--host", run.HOST, "--port", str(port)]
        t0 = time.perf_counter()
        proc = procs.start(f"sim-{name}", [*argv, "--patients", str(args.patients)])
        url = f"http://{run.HOST}:{port}"
        await run.wait_up(procs, f"sim-{name}", f"{url}/_sim/health", args.start_timeout)
        started = time.perf_counter() - t0
        cpu = run.cpu_s(proc.pid)
        rss = run.rss_mib(proc.pid)
        async with aiohttp.ClientSession() as http:
            for pnr in asked:
                method, path, body = ASK[name](pnr)
                async with http.request(method, url + path, data=body) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"{name} {path}: {r.status}")
        after = run.rss_mib(proc.pid)
        procs.stop(f"sim-{name}")
        rows.append(
            {
                "simulator": name,
                "start_s": round(started, 2),
                "start_cpu_s": round(cpu, 2),
                "rss_mib": rss["VmRSS"],
                "rss_after_asking_mib": after["VmRSS"],
            }
        )
        print(
            f"  {name:<7} up in {started:5.1f} s ({cpu:.1f} s CPU), RSS {rss['VmRSS']:.0f} MiB, "
            f"after {len(asked)} patients asked for {after['VmRSS']:.0f} MiB",
            flush=True,
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=100_000)
    ap.add_argument("--simulators", default="cosmic,viva,npo")
    ap.add_argument("--ask", type=int, default=20, help="patients asked for after the start")
    ap.add_argument("--start-timeout", type=float, default=600.0)
    args = ap.parse_args()
    print(f"simulators at {args.patients} generated patients (plus the named ones):", flush=True)
    run.with_processes("fhir-sim-start-", lambda procs, tmp: measure(args, procs, tmp))


if __name__ == "__main__":
    main()
