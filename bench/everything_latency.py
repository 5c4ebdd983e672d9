"""Latency of ``$everything`` against simulators with an added latency each (default 20 ms).

    python bench/everything_latency.py [--latency-ms 20] [--requests 200] [--patient 191212121212] [--cache]

Sequential requests over loopback, one facade worker, simulators in the same process (so the
figures include the simulators' own CPU). If fan-out is concurrent the median sits near one
backend's latency plus the facade's own work, not near the sum of the three. The patient's consent
for the clinician's care provider is registered first (PDL), in a temporary store.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import aiohttp

from proxy import loop
from proxy.app import create_app
from proxy.auth.demo import demo_issuer, make_token
from proxy.fhir.ids import PatientIds
from proxy.settings import DEMO_PATIENT_ID_KEY, load_settings
from proxy.simulators.harness import people_for, running_simulators, serving

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import register_consents


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def run(latency_ms: float, requests: int, pnr: str, cache: bool, tmp: Path) -> None:
    settings = load_settings()
    settings = replace(
        settings,
        cache=replace(settings.cache, enabled=cache),
        store=replace(settings.store, kind="sqlite", sqlite_path=tmp / "facade.sqlite"),
    )
    faults = {b.simulator: {"latency_ms": latency_ms} for b in settings.backends if b.simulator}
    async with running_simulators(settings, people_for(settings), faults=faults) as urls:
        app = create_app(
            settings.with_backend_urls(urls), patient_id_key=DEMO_PATIENT_ID_KEY, extra_issuer=demo_issuer()
        )
        token = make_token("clinician")
        headers = {"Authorization": f"Bearer {token}"}
        patient_id = PatientIds(DEMO_PATIENT_ID_KEY).encode(pnr)
        async with serving(app) as base, aiohttp.ClientSession(headers=headers) as http:
            await register_consents(base, [patient_id], token)  # PDL: the answer holds every source
            url = f"{base}/fhir/Patient/{patient_id}/$everything"
            for _ in range(10):  # warm-up: connections, first-call costs
                async with http.get(url) as r:
                    await r.read()
            samples, sizes = [], set()
            for _ in range(requests):
                t0 = time.perf_counter()
                async with http.get(url, params={"_count": "500"}) as r:
                    body = await r.read()
                    assert r.status == 200
                samples.append((time.perf_counter() - t0) * 1000)
                sizes.add(len(body))
    print(
        f"$everything for {pnr[:8]}-{pnr[8:]}, {requests} sequential requests, "
        f"backends +{latency_ms:g} ms each"
    )
    print(
        f"  p50 {statistics.median(samples):.1f} ms  p90 {pct(samples, 90):.1f} ms  "
        f"p99 {pct(samples, 99):.1f} ms  max {max(samples):.1f} ms  (answer {max(sizes)} bytes)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--patient", default="191212121212")
    ap.add_argument(
        "--cache", action="store_true", help="leave the cache on (default: every request uncached)"
    )
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="fhir-facade-bench-") as tmp:
        loop.run(run(args.latency_ms, args.requests, args.patient, args.cache, Path(tmp)))


if __name__ == "__main__":
    main()
