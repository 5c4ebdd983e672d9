"""Two workers (or hosts) sharing one PostgreSQL outbox: every write is delivered, each part by one
of them only — no target is sent a part twice, whichever worker took the POST."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
from aiohttp.test_utils import TestClient
from yarl import URL

from proxy.app import create_app
from proxy.auth.demo import demo_issuer
from proxy.settings import DEMO_PATIENT_ID_KEY, Settings
from proxy.simulators.harness import Received, running_simulators
from proxy.simulators.population import TOLVAN, population
from tests.conftest import BASE, FacadeTestServer, auth, pid, postgres_dsn, reset_postgres
from tests.writes.visit import visit

HOMECARE = {**auth("homecare"), "Content-Type": "application/fhir+json"}


@contextlib.asynccontextmanager
async def two_workers(settings: Settings, received: list[Received]) -> AsyncIterator[list[TestClient]]:
    await reset_postgres()
    people = population(0, settings.simulators.seed)
    async with running_simulators(settings, people, received=received) as urls:
        live = settings.with_backend_urls(urls)
        live = replace(
            live,
            store=replace(live.store, kind="postgres", postgres_dsn=postgres_dsn()),
            # no waiting in the POST: whichever worker claims a part first delivers it
            outbox=replace(live.outbox, wait_s=0.0, poll_s=0.02),
        )
        async with contextlib.AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(
                    TestClient(
                        FacadeTestServer(
                            create_app(live, patient_id_key=DEMO_PATIENT_ID_KEY, extra_issuer=demo_issuer())
                        ),
                        headers=HOMECARE,
                    )
                )
                for _ in range(2)
            ]
            yield clients


async def test_two_workers_sharing_postgresql_deliver_each_part_once(
    settings: Settings, tmp_path: Path
) -> None:
    received: list[Received] = []
    async with two_workers(settings, received) as workers:
        tasks = []
        for i in range(6):  # posted to one worker and the other in turn
            resp = await workers[i % 2].post(
                BASE, data=orjson.dumps(visit(pid(TOLVAN.pnr), uuid.uuid4().hex))
            )
            assert resp.status == 200, await resp.text()
            tasks.append((workers[i % 2], URL(resp.headers["Location"]).path))
        for worker, path in tasks:
            for _ in range(200):
                task: Any = await (await worker.get(path)).json(content_type=None)
                if task["status"] == "completed":
                    break
                await asyncio.sleep(0.05)
            assert task["status"] == "completed", task
    for target in ("viva", "cosmic"):
        keys = Counter(
            r.headers["Idempotency-Key"] for r in received if r.backend == target and r.method == "POST"
        )
        assert len(keys) == 6 * 10 and set(keys.values()) == {1}, keys.most_common(3)
