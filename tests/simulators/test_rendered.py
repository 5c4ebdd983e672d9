"""A simulator's long answers kept once rendered (``proxy.simulators.rendered``, a benchmark's knob).

Through the three simulators: every answer to every request of the ``$everything`` plan, for the
long-history patient and two others, asked twice, is byte for byte the answer without the cache —
one patient's answer is never another's (NPÖ names the patient in its SOAP body, which the fault
injection has read before: the key must still hold it). On a toy app: a long answer is rendered
once; tracing headers do not split the key, other headers do; a write or a control request empties
it; short answers and non-200s are not kept; the budget is in bytes.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from proxy.app import compile_mappings
from proxy.fhir.ids import PatientIds, ResourceIds
from proxy.mapping.registry import request_context
from proxy.pipeline.fetch import plan_requests
from proxy.settings import DEMO_PATIENT_ID_KEY, Settings, load_settings
from proxy.simulators.harness import people_for, running_simulators
from proxy.simulators.population import INGEGERD
from proxy.simulators.rendered import MIN_BYTES, render_cache


async def every_answer(settings: Settings) -> dict[tuple[int, str, str, str], tuple[int, bytes]]:
    people = people_for(settings, 5)
    asked = [INGEGERD, people[0], people[-1]]
    mappings = compile_mappings(settings, ResourceIds(DEMO_PATIENT_ID_KEY))
    ids = PatientIds(DEMO_PATIENT_ID_KEY)
    plan = plan_requests(mappings, settings.source_priority, mappings.resource_types)
    out = {}
    async with running_simulators(settings, people) as urls, aiohttp.ClientSession() as http:
        for round_ in range(2):
            for person in asked:
                for backend, specs in plan.items():
                    ctx = request_context(
                        ids.patient(person.pnr), backend, dict(settings.backend(backend).vars)
                    )
                    for spec in specs:
                        path, query, headers, body = spec.render(ctx)
                        url = urls[backend] + path
                        async with http.request(
                            spec.method, url, params=query, data=body, headers=headers
                        ) as r:
                            out[(round_, person.pnr, backend, spec.path)] = (r.status, await r.read())
    return out


async def test_with_the_cache_every_answer_is_the_one_without_it() -> None:
    settings = load_settings()
    plain = await every_answer(settings)
    kept = await every_answer(
        replace(settings, simulators=replace(settings.simulators, render_cache_bytes=1 << 28))
    )
    assert sum(len(body) >= MIN_BYTES for _, body in plain.values()) >= 10  # (long answers were kept)
    assert {k for k in plain if plain[k] != kept[k]} == set()


WRITING = web.AppKey("writing", asyncio.Event)


def toy(budget: int) -> tuple[web.Application, list[str]]:
    rendered: list[str] = []

    async def answer(request: web.Request) -> web.Response:
        rendered.append(f"{request.method} {request.path_qs}")
        if request.path == "/slow-write":
            await request.app[WRITING].wait()
        size = int(request.query.get("size", MIN_BYTES))
        status = int(request.query.get("status", 200))
        return web.Response(body=b"x" * size, status=status, content_type="application/json")

    app = web.Application(middlewares=[render_cache(budget, reads_by_post=False)])
    app[WRITING] = asyncio.Event()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app, rendered


async def test_a_long_answer_is_rendered_once_for_the_same_request() -> None:
    app, rendered = toy(10 * MIN_BYTES)
    async with TestClient(TestServer(app)) as client:

        async def get(path: str, **headers: str) -> Any:
            resp = await client.get(path, headers=headers)
            return resp.status, len(await resp.read()), resp.headers.get("Content-Type")

        first = await get("/a", traceparent="00-1-01", **{"X-Request-ID": "one"})
        again = await get("/a", traceparent="00-2-01", **{"X-Request-ID": "two"})  # (per call: the same)
        assert first == again == (200, MIN_BYTES, "application/json")
        assert rendered == ["GET /a"]
        await get("/a", **{"X-Patient": "other"})  # another header: another request
        await get("/a?size=10")  # short: never kept
        await get("/a?size=10")
        await get("/a?status=500")  # not a 200: never kept
        await get("/a?status=500")
        assert (
            rendered == ["GET /a", "GET /a", "GET /a?size=10", "GET /a?size=10"] + ["GET /a?status=500"] * 2
        )
        await client.post("/write", data=b"{}")  # a write: what is kept may be wrong now
        await get("/a")
        await client.get("/_sim/faults")  # the control endpoints too
        await get("/a")
        assert rendered[-4:] == ["POST /write", "GET /a", "GET /_sim/faults", "GET /a"]


async def test_a_read_answered_while_a_write_is_under_way_is_not_kept_after_it() -> None:
    app, rendered = toy(10 * MIN_BYTES)
    async with TestClient(TestServer(app)) as client:
        writing = asyncio.ensure_future(client.post("/slow-write", data=b"{}"))
        await asyncio.sleep(0.05)
        await (await client.get("/a")).read()  # rendered (and kept) while the write is under way
        app[WRITING].set()
        await (await writing).read()
        await (await client.get("/a")).read()  # after the write: rendered again
    assert rendered == ["POST /slow-write", "GET /a", "GET /a"]


async def test_a_kept_answer_carries_its_content_type_not_the_first_answers_connection() -> None:
    app, _ = toy(10 * MIN_BYTES)
    async with TestClient(TestServer(app)) as client:
        first = await client.get("/a", headers={"Connection": "close"})
        await first.read()
        again = await client.get("/a")
        await again.read()
    assert first.headers.get("Connection") == "close"
    assert again.headers.get("Connection") != "close"
    assert again.headers["Content-Type"] == first.headers["Content-Type"] == "application/json"


async def test_the_budget_is_in_bytes_least_recently_used_first_out() -> None:
    app, rendered = toy(2 * MIN_BYTES)
    async with TestClient(TestServer(app)) as client:
        for path in ("/a", "/b", "/a", "/c", "/a", "/b"):  # (/c pushes out /b, the least recently used)
            await (await client.get(path)).read()
        await (await client.get(f"/big?size={3 * MIN_BYTES}")).read()  # larger than the budget: not kept
        await (await client.get(f"/big?size={3 * MIN_BYTES}")).read()
    assert rendered == ["GET /a", "GET /b", "GET /c", "GET /b"] + [f"GET /big?size={3 * MIN_BYTES}"] * 2
