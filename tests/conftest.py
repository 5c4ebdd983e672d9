"""Shared fixtures: the real simulators and the real facade, in-process on loopback."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from fhir.resources.R4B import get_fhir_model_class

from proxy.app import create_app
from proxy.auth.demo import demo_issuer, make_token
from proxy.fhir.ids import PatientIds
from proxy.settings import DEMO_PATIENT_ID_KEY, Settings, load_settings
from proxy.simulators.harness import running_simulators
from proxy.simulators.population import population

BASE = "/fhir"
IDS = PatientIds(DEMO_PATIENT_ID_KEY)


def auth(audience: str, **claims: Any) -> dict[str, str]:
    """An Authorization header from the dev-only demo issuer (clinician: the default in tests)."""
    return {"Authorization": f"Bearer {make_token(audience, **claims)}"}


def pid(pnr: str) -> str:
    return IDS.encode(pnr)


def walk(node: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """Every (element name, leaf value) in a nested JSON-like value."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, k)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v, key)
    else:
        yield key, node


def validate(resource: dict[str, Any]) -> None:
    """Raise if the resource does not validate against its fhir.resources R4B model."""
    get_fhir_model_class(resource["resourceType"]).model_validate(resource)


@dataclass
class Running:
    client: TestClient
    sim_urls: dict[str, str]

    async def get(self, path: str, **kw: Any) -> tuple[int, Any]:
        resp = await self.client.get(path, **kw)
        body = await resp.json(content_type=None)
        return resp.status, body

    async def faults(self, backend: str, **settings: Any) -> None:
        async with self.client.session.put(f"{self.sim_urls[backend]}/_sim/faults", json=settings) as r:
            assert r.status == 200, await r.text()


@pytest.fixture
def settings() -> Settings:
    return load_settings()


@pytest.fixture
def facade(
    settings: Settings, tmp_path: Path
) -> Callable[..., contextlib.AbstractAsyncContextManager[Running]]:
    """``async with facade(**overrides) as f``: simulators + facade; overrides tune backend settings."""

    @contextlib.asynccontextmanager
    async def start(
        generated: int = 0,
        faults: dict[str, dict[str, Any]] | None = None,
        facade_overrides: dict[str, Any] | None = None,
        cache: bool | dict[str, Any] = False,
        engagement: bool = False,
        **backend_overrides: Any,
    ) -> AsyncIterator[Running]:
        """Tests see fresh answers unless they ask for the cache (True, or CacheSettings overrides)."""
        people = population(generated, settings.simulators.seed)
        async with running_simulators(settings, people, faults=faults) as urls:
            live = settings.with_backend_urls(urls)
            tuning = cache if isinstance(cache, dict) else {}
            live = replace(live, cache=replace(live.cache, enabled=bool(cache), **tuning))
            live = replace(live, engagement=replace(live.engagement, enabled=engagement))
            live = replace(live, audit_path=tmp_path / "audit.sqlite")
            if facade_overrides:
                live = replace(live, facade=replace(live.facade, **facade_overrides))
            if backend_overrides:
                live = replace(live, backends=tuple(replace(b, **backend_overrides) for b in live.backends))
            app = create_app(live, patient_id_key=DEMO_PATIENT_ID_KEY, extra_issuer=demo_issuer())
            async with TestClient(TestServer(app), headers=auth("clinician")) as client:
                yield Running(client, urls)

    return start
