"""The fault matrix: every backend × every request it is sent × {404, 410, 5xx, hang, malformed,
truncated}. The answer names that source as failed; nothing is silently missing — above all the
safety-critical types (Flag: alerts, care limitations, the ambulance's threat flag;
AllergyIntolerance); and once the fault clears, the very next request is complete (no engagement
skip, no open breaker, nothing cached standing in).

One simulator set and one facade serve the whole module; each case sets one fault on one request
path of one simulator, asks, clears the fault and asks again.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp.test_utils import TestClient

from proxy.app import compile_mappings, create_app
from proxy.auth.demo import demo_issuer
from proxy.edge.http import FACADE_KEY, STORE_KEY
from proxy.mapping.registry import request_context
from proxy.pipeline.fetch import plan_requests
from proxy.settings import DEMO_PATIENT_ID_KEY, load_settings
from proxy.simulators.harness import running_simulators
from proxy.simulators.population import TOLVAN, population
from proxy.types import PatientRef
from tests.conftest import BASE, RESOURCE_IDS, FacadeTestServer, auth, consent_to, pid
from tests.source_status import statuses

pytestmark = pytest.mark.asyncio(loop_scope="module")

SETTINGS = load_settings()
MAPPINGS = compile_mappings(SETTINGS, RESOURCE_IDS)
BACKENDS = ("cosmic", "viva", "npo")
SAFETY = frozenset({"Flag", "AllergyIntolerance"})
TOLVAN_ID = pid(TOLVAN.pnr)
EVERYTHING = f"{BASE}/Patient/{TOLVAN_ID}/$everything"
THREAT = "Hotfullt beteende mot ambulanspersonal"
HEALTHY_BUDGET_S = 2.0  # every backend's total budget ...
HUNG_BUDGET_S = 0.3  # ... but a hung one's, in its case

FAULTS: dict[str, dict[str, Any]] = {
    "404": {"error_status": 404},
    "410": {"error_status": 410},
    "503": {"error_status": 503},
    "hang": {"hang": True, "hang_s": 2},
    "malformed": {"malformed": True},
    "truncated": {"drop": True},
}


def _requests() -> list[tuple[str, str, str]]:
    """(backend, request key, the request's path for Tolvan) for every distinct request."""
    ref = PatientRef(TOLVAN.pnr, TOLVAN_ID, "http://electronichealth.se/identifier/personnummer")
    out = []
    for backend in BACKENDS:
        ctx = request_context(ref, backend, dict(SETTINGS.backend(backend).vars))
        seen = set()
        for m in MAPPINGS.by_backend[backend]:
            if m.request.key not in seen:
                seen.add(m.request.key)
                out.append((backend, m.request.key, m.request.render(ctx).path))
    return out


REQUESTS = _requests()


@dataclass
class Matrix:
    client: TestClient
    sim_urls: dict[str, str]
    baseline: dict[str, Any]  # Tolvan's $everything with no fault
    baseline_flags: dict[str, Any]  # the ambulance's Flag search for Tolvan with no fault

    async def faults(self, backend: str, **settings: Any) -> None:
        async with self.client.session.put(f"{self.sim_urls[backend]}/_sim/faults", json=settings) as r:
            assert r.status == 200, await r.text()

    @contextlib.contextmanager
    def budget(self, backend: str, total_s: float) -> Iterator[None]:
        """The backend's total budget, for a while: a hung backend is cut off quickly while the
        healthy ones keep a budget that a loaded machine cannot make them overrun."""
        client = self.client.server.app[FACADE_KEY].clients[backend]
        before = client.settings
        client.settings = replace(before, total_timeout_s=total_s)
        try:
            yield
        finally:
            client.settings = before

    async def everything(self) -> dict[str, Any]:
        resp = await self.client.get(EVERYTHING, params={"_count": "500"})
        assert resp.status == 200
        return dict(await resp.json(content_type=None))

    async def flags(self) -> dict[str, Any]:
        resp = await self.client.get(f"{BASE}/Flag", params={"patient": TOLVAN_ID}, headers=auth("ambulance"))
        assert resp.status == 200
        return dict(await resp.json(content_type=None))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def matrix(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Matrix]:
    people = population(0, SETTINGS.simulators.seed)
    async with running_simulators(SETTINGS, people) as urls:
        live = SETTINGS.with_backend_urls(urls)
        tmp: Path = tmp_path_factory.mktemp("matrix")
        live = replace(
            live,
            cache=replace(live.cache, enabled=False),
            engagement=replace(live.engagement, enabled=True),
            store=replace(live.store, kind="sqlite", sqlite_path=tmp / f"{uuid.uuid4().hex}.sqlite"),
            facade=replace(live.facade, deadline_s=HEALTHY_BUDGET_S + 1.0),
            # a breaker that opens only after many failures: each case fails a backend twice in a row;
            # a budget no healthy backend overruns on a loaded machine (a hung one gets a short one)
            backends=tuple(
                replace(b, total_timeout_s=HEALTHY_BUDGET_S, breaker_failures=5) for b in live.backends
            ),
        )
        app = create_app(live, patient_id_key=DEMO_PATIENT_ID_KEY, extra_issuer=demo_issuer())
        async with TestClient(FacadeTestServer(app), headers=auth("clinician")) as client:
            await consent_to(client.server.app[STORE_KEY], [p.pnr for p in people])
            m = Matrix(client, urls, {}, {})
            m.baseline = await m.everything()
            m.baseline_flags = await m.flags()
            yield m


def _by_id(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}": e["resource"]
        for e in bundle.get("entry", [])
        if e["search"]["mode"] == "match"
    }


def _source(resource: dict[str, Any]) -> str:
    return str(resource["meta"]["source"].rsplit(":", 1)[-1])


def _nothing_silently_missing(before: dict[str, Any], after: dict[str, Any]) -> set[str]:
    """Every resource of ``before`` is in ``after``, or its source is named failed in ``after``.
    Returns the types of the resources that went missing (each accounted for)."""
    failed = {name for name, status in statuses(after).items() if status == "failed"}
    now = _by_id(after)
    gone = set()
    for key, resource in _by_id(before).items():
        if key not in now:
            assert _source(resource) in failed, f"{key} from {_source(resource)} vanished silently"
            gone.add(resource["resourceType"])
    return gone


async def test_the_baseline_is_complete_and_holds_the_safety_information(matrix: Matrix) -> None:
    assert statuses(matrix.baseline) == dict.fromkeys(BACKENDS, "answered")
    types = {r["resourceType"] for r in _by_id(matrix.baseline).values()}
    assert SAFETY <= types
    assert THREAT in str(matrix.baseline_flags)  # the ambulance sees Tolvan's threat flag
    assert set(statuses(matrix.baseline_flags)) == {"cosmic", "npo"}  # who holds Flags for him


@pytest.mark.parametrize("fault", sorted(FAULTS))
@pytest.mark.parametrize(
    ("backend", "key", "path"), REQUESTS, ids=[f"{b}:{p.rsplit('/', 1)[-1]}" for b, _, p in REQUESTS]
)
async def test_a_fault_on_one_request_names_the_source_failed(
    matrix: Matrix, backend: str, key: str, path: str, fault: str
) -> None:
    await matrix.faults(backend, path_endswith=path, **FAULTS[fault])
    try:
        with matrix.budget(backend, HUNG_BUDGET_S if fault == "hang" else HEALTHY_BUDGET_S):
            everything = await matrix.everything()
            flags = await matrix.flags()
    finally:
        await matrix.faults(backend)  # (PUT {}: no faults)
    seen = statuses(everything)
    assert seen[backend] == "failed", seen
    assert {n for n, s in seen.items() if s != "answered"} == {backend}
    _nothing_silently_missing(matrix.baseline, everything)
    # the ambulance's Flag search: the faulted request is in its run (as a Flag request, or as the
    # backend's patient lookup that every run to it includes) — then the source is named failed
    flag_plan = plan_requests(MAPPINGS, [backend], MAPPINGS.with_referenced({"Flag"})).get(backend, [])
    lookup = MAPPINGS.lookups.get(backend)
    in_flag_run = bool(flag_plan) and (
        any(s.key == key for s in flag_plan) or (lookup is not None and lookup.key == key)
    )
    if in_flag_run:
        assert statuses(flags)[backend] == "failed"
    else:
        assert statuses(flags) == statuses(matrix.baseline_flags)
    _nothing_silently_missing(matrix.baseline_flags, flags)
    if THREAT not in str(flags):
        assert statuses(flags)["cosmic"] == "failed"  # never a threat flag gone without a word
    # the fault has cleared: the very next request is complete
    again = await matrix.everything()
    assert statuses(again) == dict.fromkeys(BACKENDS, "answered")
    assert _by_id(again).keys() == _by_id(matrix.baseline).keys()
    flags_again = await matrix.flags()
    assert _by_id(flags_again).keys() == _by_id(matrix.baseline_flags).keys()
    assert statuses(flags_again) == statuses(matrix.baseline_flags)


@pytest.mark.parametrize("path", ["/threats", "/alerts"])
async def test_cosmics_unknown_patient_answer_from_anything_but_its_lookup_is_a_failure(
    matrix: Matrix, path: str
) -> None:
    """The real body of Cosmic's "unknown patient", from the threat register or the alerts list of
    a patient its lookup knows: a failure, never "nothing" — the threat flag is not dropped."""
    body = {"errorCode": "PATIENT_NOT_FOUND", "message": "No patient with that identity number"}
    await matrix.faults("cosmic", path_endswith=path, error_status=404, error_body=body)
    try:
        flags = await matrix.flags()
        everything = await matrix.everything()
    finally:
        await matrix.faults("cosmic")
    for bundle in (flags, everything):
        assert statuses(bundle)["cosmic"] == "failed"
        assert "patient lookup did not" in str(bundle)
    _nothing_silently_missing(matrix.baseline_flags, flags)
    assert statuses(await matrix.flags()) == statuses(matrix.baseline_flags)
