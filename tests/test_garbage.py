"""A request leaves no reference cycles behind: what it made is freed when it ends, by reference
counting, not left for the cyclic garbage collector.

A cycle through one request's state (a closure that names itself, a task that holds what holds it)
keeps all of it — the backend runs, their tasks, every mapped answer — alive until a collection
finds it: memory grows with the load and the collector's passes over it cost CPU on every request
(a self-referencing timer callback in fan-out once kept ~80 objects a backend call alive and cost the
facade a quarter more CPU a request under the bench's load). Checked with the collector off and
``DEBUG_SAVEALL``: whatever the collector then finds unreachable, made by the facade's own code
(the in-process simulators' are not the facade's), is a cycle a request left.
"""

from __future__ import annotations

import asyncio
import gc
import types
from pathlib import Path
from typing import Any

from yarl import URL

import proxy
from proxy.simulators.population import TOLVAN
from tests.conftest import BASE, pid

PROXY = Path(proxy.__file__).resolve().parent
SIMULATORS = PROXY / "simulators"


def _code(obj: Any) -> types.CodeType | None:
    if isinstance(obj, asyncio.Task):
        obj = obj.get_coro()
    if isinstance(obj, types.FunctionType):
        return obj.__code__
    if isinstance(obj, types.CoroutineType):
        return obj.cr_code
    if isinstance(obj, types.FrameType):
        return obj.f_code
    return None


def _ours(obj: Any) -> str | None:
    """What ``obj`` is, when the facade's own code made it (else None)."""
    module = type(obj).__module__ or ""
    if module.startswith("proxy.") and not module.startswith("proxy.simulators"):
        return f"{module}.{type(obj).__qualname__}"
    code = _code(obj)
    if code is not None:
        path = Path(code.co_filename).resolve()
        if path.is_relative_to(PROXY) and not path.is_relative_to(SIMULATORS):
            return f"{type(obj).__name__} {code.co_qualname}"
    return None


async def _cycles_left_by(work: Any) -> list[str]:
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        await work()
        gc.collect()
        return sorted({found for o in gc.garbage if (found := _ours(o)) is not None})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()


async def test_reads_leave_no_cycles(facade: Any) -> None:
    patient = pid(TOLVAN.pnr)
    paths = [
        f"{BASE}/Patient/{patient}/$everything",
        f"{BASE}/Observation?patient={patient}&_count=2",  # a first page kept as a snapshot
        f"{BASE}/Condition?patient={patient}&code=no-such-code",
        f"{BASE}/Patient/{patient}",
        f"{BASE}/Patient/{patient}/$summary",
    ]
    refused = [
        (f"{BASE}/Observation?patient={patient}&_count=x", 400),
        (f"{BASE}/Observation?patient={patient}&_page_token=no-such-token&_count=2", 410),
        (f"{BASE}/Observation/no-such-id", 404),
    ]
    async with facade() as f:

        async def reads() -> None:
            for path in paths:
                resp = await f.client.get(path)
                assert resp.status == 200, path
                body = await resp.json(content_type=None)
                later = [
                    URL(link["url"]).path_qs for link in body.get("link", []) if link["relation"] == "next"
                ]
                for url in later:  # the later page, from the first page's snapshot
                    resp = await f.client.get(url)
                    assert resp.status == 200, url
                    await resp.read()
            for path, status in refused:
                resp = await f.client.get(path)
                assert resp.status == status, path
                await resp.read()

        await reads()  # (whatever is made once, on first use, is made before the count)
        left = await _cycles_left_by(reads)
        assert left == [], "\n".join(left)


async def test_a_failing_backend_and_a_refusal_leave_no_cycles(facade: Any) -> None:
    patient = pid(TOLVAN.pnr)
    async with facade() as f:
        await f.faults("viva", error_status=500)

        async def reads() -> None:
            resp = await f.client.get(f"{BASE}/Patient/{patient}/$everything")
            assert resp.status == 200
            await resp.read()
            resp = await f.client.get(
                f"{BASE}/Patient/{patient}/$everything", headers={"Authorization": "Bearer x"}
            )
            assert resp.status == 401
            await resp.read()

        await reads()
        left = await _cycles_left_by(reads)
        assert left == [], "\n".join(left)
