"""Shared fixtures: the real simulators and the real facade, in-process on loopback."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from fhir.resources.R4B import get_fhir_model_class

import proxy.app
from proxy.access.consent import stored
from proxy.app import create_app
from proxy.auth.demo import demo_issuer, make_token
from proxy.clock import SYSTEM_CLOCK, Clock
from proxy.edge.http import STORE_KEY
from proxy.edge.server import FacadeRunner
from proxy.fhir.ids import PatientIds, ResourceIds
from proxy.hsa import HSA_SYSTEM
from proxy.mapping.registry import load_mappings
from proxy.mapping.write import compile_write_mappings
from proxy.settings import DEMO_PATIENT_ID_KEY, Settings, load_settings
from proxy.simulators.harness import Received, running_simulators
from proxy.simulators.population import MUNICIPALITY_PROVIDER, REGION_PROVIDER, Person, population
from proxy.store.base import ConsentRow, Store
from tests import r4
from tests.services import SESSION, missing

BASE = "/fhir"
IDS = PatientIds(DEMO_PATIENT_ID_KEY)
RESOURCE_IDS = ResourceIds(DEMO_PATIENT_ID_KEY)  # the demo deployment's keyed resource ids
HSA = HSA_SYSTEM  # HL7 Sweden's (proxy.hsa); the RIVTA OID is accepted on input
ROLES = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
TEST_CONNECT_TIMEOUT_S = 5.0


class FacadeTestServer(TestServer):
    """A TestServer running the app as ``serve`` and ``demo`` do (``FacadeRunner``: malformed
    requests answered as OperationOutcomes)."""

    async def _make_runner(self, **kwargs: Any) -> FacadeRunner:
        return FacadeRunner(self.app, **kwargs)


def consent_body(
    patient_id: str,
    *,
    recipient: str | None = None,
    custodians: tuple[str, ...] = (),
    deny: bool = False,
    period: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Consent as a client would POST it: a consent (permit) for ``recipient``, or a block (deny)."""
    actors = [
        {
            "role": {"coding": [{"system": ROLES, "code": role}]},
            "reference": {"identifier": {"system": HSA, "value": v}},
        }
        for role, values in (("IRCP", [recipient] if recipient else []), ("CST", custodians))
        for v in values
    ]
    provision: dict[str, Any] = {"type": "deny" if deny else "permit", "actor": actors}
    if period:
        provision["period"] = period
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}
            ]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient_id}"},
        "provision": provision,
    }


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    """With ``-p no:xdist`` (one process, for a debugger) pyproject's ``--numprocesses``/``--dist``
    are accepted and mean nothing, instead of failing the command line. (Asked of the blocklist, not
    of the plugins loaded: loaded as ``-p tests.conftest``, this runs before xdist is.)"""
    if pluginmanager.is_blocked("xdist") or importlib.util.find_spec("xdist") is None:
        parser.addoption("--numprocesses", default=None, help="(pytest-xdist's; off with -p no:xdist)")
        parser.addoption("--dist", default="no", help="(pytest-xdist's; off with -p no:xdist)")


def pytest_sessionstart(session: pytest.Session) -> None:
    """A binary the session needs and cannot find fails it here, in one line, never as a skip."""
    need_npm = not (os.environ.get(r4.SCHEMA_ENV) or r4.cached_schema().exists())
    gap = missing(need_npm=need_npm)
    if gap:
        raise pytest.UsageError(gap)


def pytest_sessionfinish(session: pytest.Session) -> None:
    SESSION.close()


_COMPILED: dict[str, Any] = {}


def _compiled_once(compile: Callable[..., Any]) -> Callable[..., Any]:
    """``compile`` (the read or the write mappings' compiler, as the app calls it), remembered by its
    arguments and the mapping files' (name, size, mtime): each test starts its own app, and parsing
    the same YAML for every one was most of a test's time. A changed copy of the mappings (another
    folder or a file edited) compiles anew; a failure is never remembered."""

    def once(mappings_dir: Path, backends: Any, **kw: Any) -> Any:
        files = sorted(
            (str(f), f.stat().st_size, f.stat().st_mtime_ns)
            for f in Path(mappings_dir).rglob("*")
            if f.is_file()
        )
        ids = kw.get("ids")
        key = repr(
            (
                compile.__name__,
                str(mappings_dir),
                files,
                sorted(dict(backends).items()),
                sorted((k, v) for k, v in kw.items() if k != "ids"),
                getattr(ids, "fingerprint", ids),  # (the key the ids are made under, by its fingerprint)
            )
        )
        if key not in _COMPILED:
            _COMPILED[key] = compile(mappings_dir, backends, **kw)
        return _COMPILED[key]

    return once


@pytest.fixture(autouse=True, scope="session")
def _mappings_compiled_once() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(proxy.app, "load_mappings", _compiled_once(load_mappings))
        mp.setattr(proxy.app, "compile_write_mappings", _compiled_once(compile_write_mappings))
        yield


# The session's PostgreSQL and Redis (tests/services.py): its own, started on first use on free
# loopback ports and stopped at the end, unless FHIR_FACADE_TEST_POSTGRES_DSN / _REDIS_URL name others.
def postgres_dsn() -> str:
    """The DSN of the PostgreSQL the store tests use (started on first use); its tables are dropped
    first (``reset_postgres``)."""
    return SESSION.postgres_dsn()


def redis_url() -> str:
    """The URL of the Redis the shared-cache tests use (started on first use); they flush it."""
    return SESSION.redis_url()


async def reset_postgres() -> None:
    import asyncpg

    conn = await asyncpg.connect(postgres_dsn())  # no PostgreSQL is a failure here, not a skip
    try:
        await conn.execute(
            "DROP TABLE IF EXISTS audit_event, consent, page_snapshot, page_generation,"
            " outbox_part, outbox_transaction"
        )
    finally:
        await conn.close()


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
    assert r4.validate(resource) == [], r4.validate(resource)  # and against R4 itself (tests/r4.py)


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
        consent: bool = True,
        store: str = "sqlite",
        access: dict[str, Any] | None = None,
        mappings_dir: Path | None = None,
        clock: Clock = SYSTEM_CLOCK,
        people: list[Person] | None = None,
        received: list[Received] | None = None,
        paging: dict[str, Any] | None = None,
        outbox: dict[str, Any] | None = None,
        **backend_overrides: Any,
    ) -> AsyncIterator[Running]:
        """Tests see fresh answers unless they ask for the cache (True, or CacheSettings overrides).

        ``consent``: every patient has consented to the demo tokens' care providers (the region and
        the municipality), so tests about anything but the PDL rules see every source's records.
        ``store``: sqlite (in tmp_path) or postgres (``postgres_dsn()``, emptied first).
        ``mappings_dir``: another deployment's mappings (e.g. a changed copy). ``clock``: the app's
        (tests.clock.FakeClock: move time on instead of sleeping). ``people``: the simulators' population
        instead of the demo patients and ``generated`` generated ones (e.g. with the long history).
        ``received``: each simulator appends what it was sent (``proxy.simulators.harness.Received``).
        ``paging``: PagingSettings overrides. ``outbox``: OutboxSettings overrides (the writes')."""
        if store == "postgres":
            await reset_postgres()  # (starts the session's PostgreSQL before the simulators)
        if people is None:
            people = population(generated, settings.simulators.seed)
        async with running_simulators(settings, people, faults=faults, received=received) as urls:
            live = settings.with_backend_urls(urls)
            tuning = cache if isinstance(cache, dict) else {}
            live = replace(live, cache=replace(live.cache, **{"enabled": bool(cache), **tuning}))
            live = replace(live, engagement=replace(live.engagement, enabled=engagement))
            live = replace(
                live,
                store=replace(
                    live.store, kind=store, sqlite_path=tmp_path / f"facade-{uuid.uuid4().hex}.sqlite"
                ),
            )
            if store == "postgres":
                live = replace(live, store=replace(live.store, postgres_dsn=postgres_dsn()))
            if access:
                live = replace(live, access=replace(live.access, **access))
            if mappings_dir is not None:
                live = replace(live, mappings_dir=mappings_dir)
            if facade_overrides:
                live = replace(live, facade=replace(live.facade, **facade_overrides))
            if paging:
                live = replace(live, paging=replace(live.paging, **paging))
            if outbox:
                live = replace(live, outbox=replace(live.outbox, **outbox))
            # A loopback connect is never slow, but a busy machine (parallel workers) can hold up the
            # loop that both ends share for longer than the config's 1 s: tests not about connecting
            # give it room. A test's own ``connect_timeout_s`` wins.
            backend_overrides = {"connect_timeout_s": TEST_CONNECT_TIMEOUT_S, **backend_overrides}
            live = replace(live, backends=tuple(replace(b, **backend_overrides) for b in live.backends))
            app = create_app(
                live, patient_id_key=DEMO_PATIENT_ID_KEY, extra_issuer=demo_issuer(), clock=clock
            )
            async with TestClient(FacadeTestServer(app), headers=auth("clinician")) as client:
                if consent:
                    await consent_to(client.server.app[STORE_KEY], [p.pnr for p in people])
                yield Running(client, urls)

    return start


async def consent_to(
    store: Store, pnrs: list[str], providers: tuple[str, ...] = (REGION_PROVIDER, MUNICIPALITY_PROVIDER)
) -> None:
    """Register, straight in the store, each patient's consent to each provider reading the others."""
    for pnr in pnrs:
        for provider in providers:
            resource = stored(consent_body(IDS.encode(pnr), recipient=provider))
            await store.add_consent(ConsentRow(resource["id"], pnr, "active", 1, resource))
