"""A minimal pass-through aggregator: the floor the facade is compared with in ``bench/run.py``.

    python bench/baseline.py --config <facade config> --port N

``GET /everything/{pnr}`` sends the very backend requests the facade sends for ``$everything`` —
derived from the same compiled mappings (``proxy.pipeline.fetch.plan_requests`` over every resource type,
rendered with the same request context) — concurrently, one ``aiohttp.ClientSession`` per backend
with the backend's configured connection limit and timeouts, and answers with the raw bodies
concatenated. Each call is made as the facade makes it (the same encoded URL, the backend's total
timeout as one timer for all its calls), so the two pay the same HTTP client costs. No token
check, no mapping, no merge, no redaction, no audit, no Bundle.

A backend call that fails (not 2xx and not the request's declared ``unknown_patient`` answer, or an exception)
is counted in the ``X-Bench-Failed`` response header; the status stays 200, as the facade's does for
a partial answer. ``GET /health`` answers once the sessions are open. Loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import AsyncIterator
from types import SimpleNamespace

import aiohttp
from aiohttp import web
from yarl import URL

from proxy.app import compile_mappings
from proxy.fhir.ids import PatientIds, ResourceIds
from proxy.loop import new_loop
from proxy.mapping.requests import RequestSpec
from proxy.pipeline.fetch import context, plan_requests
from proxy.pnr import is_valid_pnr, system_of
from proxy.settings import PATIENT_ID_KEY_ENV, Settings, load_settings
from proxy.types import PatientRef

SESSIONS = web.AppKey("sessions", dict)


def build_app(settings: Settings, patient_id_key: bytes) -> web.Application:
    mappings = compile_mappings(settings, ResourceIds(patient_id_key))
    plan = plan_requests(mappings, settings.source_priority, mappings.resource_types)
    ids = PatientIds(patient_id_key)
    # proxy.pipeline.fetch.context only reads ``facade.settings``: the same request context, no Facade.
    ctx_source = SimpleNamespace(settings=settings)
    app = web.Application()

    async def sessions(app: web.Application) -> AsyncIterator[None]:
        app[SESSIONS] = {}
        for name in plan:
            b = settings.backend(name)
            app[SESSIONS][name] = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=b.limit_per_host, limit_per_host=b.limit_per_host),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=b.connect_timeout_s),
            )
        try:
            yield
        finally:
            for s in app[SESSIONS].values():
                await s.close()

    bases = {name: str(URL(settings.backend(name).base_url.rstrip("/"))) for name in plan}

    async def call(name: str, spec: RequestSpec, ctx: dict[str, str]) -> tuple[bytes, bool]:
        request = spec.render(ctx)
        url = URL(bases[name] + request.target, encoded=True)
        try:
            async with app[SESSIONS][name].request(
                spec.method, url, data=request.body, headers=request.headers
            ) as resp:
                raw = await resp.read()
                unknown = spec.unknown_patient
                if unknown is not None and unknown.says_unknown(resp.status, raw, spec.format):
                    return b"", True
                return raw, 200 <= resp.status < 300
        except (aiohttp.ClientError, TimeoutError):
            return b"", False

    async def backend(name: str, specs: list[RequestSpec], patient: PatientRef) -> list[tuple[bytes, bool]]:
        ctx = context(ctx_source, name, patient)  # type: ignore[arg-type]
        tasks = [asyncio.ensure_future(call(name, spec, ctx)) for spec in specs]
        done, late = await asyncio.wait(tasks, timeout=settings.backend(name).total_timeout_s)
        for task in late:  # out of time: what answered in time is kept, as the facade keeps it
            task.cancel()
        return [task.result() if task in done else (b"", False) for task in tasks]

    async def everything(request: web.Request) -> web.Response:
        pnr = request.match_info["pnr"]
        if not is_valid_pnr(pnr):
            raise web.HTTPNotFound()
        patient = PatientRef(pnr=pnr, fhir_id=ids.encode(pnr), system=system_of(pnr))
        answers = await asyncio.gather(*(backend(name, specs, patient) for name, specs in plan.items()))
        results = [r for rs in answers for r in rs]
        failed = sum(1 for _, ok in results if not ok)
        return web.Response(
            body=b"\n".join(body for body, _ in results),
            content_type="application/octet-stream",
            headers={"X-Bench-Failed": str(failed)},
        )

    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "up", "backend_calls": sum(len(s) for s in plan.values())})

    app.cleanup_ctx.append(sessions)
    app.router.add_get("/everything/{pnr}", everything)
    app.router.add_get("/health", health)
    return app


def main() -> None:
    import base64

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=None, help="facade config (its backends' base_url are used)")
    ap.add_argument("--port", type=int, required=True)
    args = ap.parse_args()
    key = base64.b64decode(os.environ[PATIENT_ID_KEY_ENV])
    app = build_app(load_settings(args.config), key)
    # on the facade's own event loop (uvloop where installed), so the comparison is of the work done
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None, loop=new_loop())


if __name__ == "__main__":
    main()
