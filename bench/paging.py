"""A paging walk: every page of one patient's ``$everything`` at a small ``_count``, with page
snapshots (``paging.snapshots: true``, the default) and without (every page walks again).

    python bench/paging.py [--latency-ms 20] [--count 5] [--walks 20] [--patient 194911309278]
                           [--redis-url redis://127.0.0.1:6379/0] [--max-pages N] [--out /tmp/paging.json]
    python bench/paging.py --patient 194406289829 --count 50 --walks 3 --max-pages 10  # Ingegerd

Sequential requests over loopback, one facade worker, simulators in the same process (each with
``--latency-ms`` added to every answer), the embedded store (SQLite) in a temporary folder (the
snapshots there too, or in ``--redis-url``). The
patient's consent for the clinician's care provider is registered first (PDL: the answer holds
every source). For each mode: backend calls and bytes per walk (counted at the simulators,
``/_sim/stats``) against those of one ``$everything`` (its first page at ``_count=500``: the
backends are asked for the whole history either way), and the latency of the first page and of the
pages after it. ``--max-pages N``: a walk without snapshots stops after N pages (each page there is a
whole walk again: 121 of them at 6,000 records) and its calls and bytes are extrapolated to the full
walk in proportion to the pages (``extrapolated`` in the figures). With ``--out``, the figures as JSON
there and, with matplotlib, a plot beside it (the same name, ``.png``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp

from proxy import loop
from proxy.app import create_app
from proxy.auth.demo import demo_issuer, make_token
from proxy.fhir.ids import PatientIds
from proxy.settings import DEMO_PATIENT_ID_KEY, load_settings
from proxy.simulators.harness import people_for, running_simulators, serving
from proxy.simulators.population import LENNART

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import pyplot, register_consents, save_plot


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def backend_totals(http: aiohttp.ClientSession, urls: dict[str, str]) -> tuple[int, int]:
    """(requests, body bytes) the simulators have served so far."""
    calls = size = 0
    for url in urls.values():
        async with http.get(f"{url}/_sim/stats") as r:
            stats = await r.json()
        calls, size = calls + stats["requests"], size + stats["bytes"]
    return calls, size


async def walk_mode(
    snapshots: bool,
    latency_ms: float,
    count: int,
    walks: int,
    pnr: str,
    tmp: Path,
    redis_url: str | None,
    max_pages: int | None = None,
) -> dict[str, Any]:
    settings = load_settings()
    cache = replace(settings.cache, enabled=False)
    if redis_url:  # the snapshots in Redis (the cache's store; the cache itself stays off)
        cache = replace(cache, store="redis", redis_url=redis_url)
    settings = replace(
        settings,
        cache=cache,
        engagement=replace(settings.engagement, enabled=False),
        store=replace(settings.store, kind="sqlite", sqlite_path=tmp / f"facade-{snapshots}.sqlite"),
        paging=replace(settings.paging, snapshots=snapshots),
    )
    faults = {b.simulator: {"latency_ms": latency_ms} for b in settings.backends if b.simulator}
    async with running_simulators(settings, people_for(settings), faults=faults) as urls:
        app = create_app(
            settings.with_backend_urls(urls), patient_id_key=DEMO_PATIENT_ID_KEY, extra_issuer=demo_issuer()
        )
        token = make_token("clinician")
        patient_id = PatientIds(DEMO_PATIENT_ID_KEY).encode(pnr)
        async with (
            serving(app) as base,
            aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http,
        ):
            await register_consents(base, [patient_id], token)
            url = f"{base}/fhir/Patient/{patient_id}/$everything"

            async def get(u: str, params: Any) -> tuple[dict[str, Any], float, int]:
                t0 = time.perf_counter()
                async with http.get(u, params=params) as r:
                    body = await r.read()
                    assert r.status == 200, body[:300]
                return json.loads(body), (time.perf_counter() - t0) * 1000, len(body)

            for _ in range(5):  # warm-up: connections, first-call costs
                await get(url, {"_count": "500"})
            before, before_bytes = await backend_totals(http, urls)
            whole, _, _ = await get(url, {"_count": "500"})
            after, after_bytes = await backend_totals(http, urls)
            one_everything, one_everything_bytes = after - before, after_bytes - before_bytes
            total_pages = -(-whole["total"] // count)
            first_ms, later_ms, calls, fetched, pages, delivered = [], [], [], [], 0, 0
            for _ in range(walks):
                before, before_bytes = await backend_totals(http, urls)
                page, ms, size = await get(url, {"_count": str(count)})
                first_ms.append(ms)
                delivered += size
                pages = 1
                while (
                    nxt := next((lk["url"] for lk in page["link"] if lk["relation"] == "next"), None)
                ) is not None and (snapshots or max_pages is None or pages < max_pages):
                    parts = urlsplit(nxt)
                    page, ms, size = await get(parts._replace(query="").geturl(), parse_qsl(parts.query))
                    later_ms.append(ms)
                    delivered += size
                    pages += 1
                after, after_bytes = await backend_totals(http, urls)
                scale = total_pages / pages  # 1 for a full walk; else the cut walk's extrapolation
                calls.append((after - before) * scale)
                fetched.append((after_bytes - before_bytes) * scale)
    return {
        "snapshots": snapshots,
        "resources": whole["total"],
        "pages_per_walk": total_pages,
        "pages_walked": pages,
        "extrapolated": pages < total_pages,
        "backend_calls_one_everything": one_everything,
        "backend_calls_per_walk": statistics.median(calls),
        "calls_ratio": statistics.median(calls) / one_everything,
        "backend_bytes_one_everything": one_everything_bytes,
        "backend_bytes_per_walk": statistics.median(fetched),
        "bytes_ratio": statistics.median(fetched) / one_everything_bytes,
        "first_page_p50_ms": statistics.median(first_ms),
        "later_pages_p50_ms": statistics.median(later_ms),
        "later_pages_p90_ms": pct(later_ms, 90),
        "later_pages_p99_ms": pct(later_ms, 99),
        "bytes_delivered_per_walk": delivered // walks,  # (of the pages walked)
    }


async def run(args: argparse.Namespace, tmp: Path) -> list[dict[str, Any]]:
    return [
        await walk_mode(
            snapshots,
            args.latency_ms,
            args.count,
            args.walks,
            args.patient,
            tmp,
            args.redis_url,
            args.max_pages,
        )
        for snapshots in (True, False)
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--latency-ms", type=float, default=20.0)
    ap.add_argument("--count", type=int, default=5, help="_count of each page")
    ap.add_argument("--walks", type=int, default=20, help="full paging walks per mode")
    ap.add_argument(
        "--patient", default=LENNART.pnr, help="personnummer (default: Lennart, the longest demo history)"
    )
    ap.add_argument(
        "--max-pages",
        type=int,
        help="without snapshots, walk only this many pages and extrapolate calls and bytes to the full walk",
    )
    ap.add_argument("--redis-url", help="keep the snapshots in this Redis (default: the SQLite store)")
    ap.add_argument("--out", type=Path, help="also write the figures as JSON here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = loop.run(run(args, Path(tmp)))
    print(
        f"Paging walk of $everything, _count={args.count}, {results[0]['resources']} resources, "
        f"{results[0]['pages_per_walk']} pages, {args.walks} walks, backends +{args.latency_ms:g} ms each\n"
    )
    print(
        "| mode | backend calls per walk | × one $everything | backend bytes per walk | × one $everything "
        "| first page p50 | later pages p50 / p90 / p99 |"
    )
    print("|---|---|---|---|---|---|---|")
    for r in results:
        mode = "snapshots" if r["snapshots"] else "no snapshots (walk per page)"
        if r["extrapolated"]:
            mode += f", {r['pages_walked']} pages walked, extrapolated"
        print(
            f"| {mode} | {r['backend_calls_per_walk']:g} | {r['calls_ratio']:.2f} "
            f"| {r['backend_bytes_per_walk'] / 1e6:.1f} MB | {r['bytes_ratio']:.2f} "
            f"| {r['first_page_p50_ms']:.1f} ms "
            f"| {r['later_pages_p50_ms']:.1f} / {r['later_pages_p90_ms']:.1f}"
            f" / {r['later_pages_p99_ms']:.1f} ms |"
        )
    if args.out:
        args.out.write_text(
            json.dumps({"settings": vars(args) | {"out": str(args.out)}, "results": results}, indent=2)
        )
        if plot(results, args.out.with_suffix(".png")):
            print(f"written: {args.out}, {args.out.with_suffix('.png')}")


def plot(results: list[dict[str, Any]], path: Path) -> bool:
    """Per mode: a walk's backend calls and bytes over one ``$everything``'s, and the later pages'
    latency (p50 / p90 / p99). False without matplotlib (``pip install -e '.[bench]'``)."""
    plt = pyplot()
    if plt is None:
        return False

    modes = ["snapshots" if r["snapshots"] else "no snapshots" for r in results]
    fig, (cost, late) = plt.subplots(1, 2, figsize=(11, 4.5))
    for i, (key, label) in enumerate((("calls_ratio", "backend calls"), ("bytes_ratio", "backend bytes"))):
        cost.bar(
            [j + (i - 0.5) * 0.4 for j in range(len(results))], [r[key] for r in results], 0.4, label=label
        )
    cost.set_xticks(range(len(results)), modes)
    cost.set_yscale("log")
    cost.set_ylabel("a walk over one $everything (×)")
    cost.legend()
    for i, q in enumerate(("p50", "p90", "p99")):
        xs = [j + (i - 1) * 0.27 for j in range(len(results))]
        late.bar(xs, [r[f"later_pages_{q}_ms"] for r in results], 0.27, label=q)
    late.set_xticks(range(len(results)), modes)
    late.set_yscale("log")
    late.set_ylabel("pages after the first, ms")
    late.legend()
    fig.suptitle(f"A paging walk: {results[0]['pages_per_walk']} pages")
    return save_plot(plt, fig, path)


if __name__ == "__main__":
    main()
