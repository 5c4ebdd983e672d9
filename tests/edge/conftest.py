"""The facade with the HTTP edge's settings (``http:``) and, optionally, a record of what the
simulators received (``running_simulators(received=...)``, a test hook of the harness)."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from proxy.app import create_app
from proxy.auth.demo import demo_issuer
from proxy.edge.http import STORE_KEY
from proxy.settings import DEMO_PATIENT_ID_KEY, Settings
from proxy.simulators.harness import Received, running_simulators
from proxy.simulators.population import population
from tests.conftest import FacadeTestServer, Running, consent_to


@pytest.fixture
def edge(
    settings: Settings, tmp_path: Path
) -> Callable[..., contextlib.AbstractAsyncContextManager[Running]]:
    """``async with edge(http=..., received=[...]) as f``: simulators + facade, no default token
    (each test says which requests carry one), the ``http`` settings replaced as given."""

    @contextlib.asynccontextmanager
    async def start(
        http: dict[str, Any] | None = None,
        received: list[Received] | None = None,
        faults: dict[str, dict[str, Any]] | None = None,
        **backend_overrides: Any,
    ) -> AsyncIterator[Running]:
        people = population(0, settings.simulators.seed)
        async with running_simulators(settings, people, faults=faults, received=received) as urls:
            live = settings.with_backend_urls(urls)
            live = replace(live, cache=replace(live.cache, enabled=False))
            live = replace(live, engagement=replace(live.engagement, enabled=False))
            sqlite = tmp_path / f"facade-{uuid.uuid4().hex}.sqlite"
            live = replace(live, store=replace(live.store, kind="sqlite", sqlite_path=sqlite))
            if http:
                live = replace(live, http=replace(live.http, **http))
            if backend_overrides:
                live = replace(live, backends=tuple(replace(b, **backend_overrides) for b in live.backends))
            app = create_app(live, patient_id_key=DEMO_PATIENT_ID_KEY, extra_issuer=demo_issuer())
            async with TestClient(FacadeTestServer(app)) as client:
                await consent_to(client.server.app[STORE_KEY], [p.pnr for p in people])
                yield Running(client, urls)

    return start
