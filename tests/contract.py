"""Mappings × simulators, the one scaffold: a backend's compiled mappings run over its simulator's
real answers, each distinct request fetched once (as the facade does), without the facade between.

The per-backend mapping tests (tests/mapping/test_{cosmic,viva,npo}_mappings.py) and the tests that
compare sources (alert semantics, lab times, procedures, unknown codes) all go through here: how a
backend is asked and its answer read is written once, and what each test checks stays in the test.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from proxy.mapping.compiler import CompiledMapping
from proxy.mapping.engine import map_records
from proxy.mapping.registry import REQUEST_CONTEXT, load_backend_mappings, load_code_maps, request_context
from proxy.mapping.xml import parse_xml
from proxy.pnr import system_of
from proxy.simulators import cosmic, npo, viva
from proxy.simulators import population as pop
from proxy.types import MappedResource, PatientRef
from tests.conftest import RESOURCE_IDS

MAPPINGS_DIR = Path(__file__).resolve().parents[1] / "mappings"
NPO_LOGICAL_ADDRESS = "SE165565594230-1000"

Mapped = dict[str, list[MappedResource]]  # mapping name (without "<backend>/") → its resources


@dataclass(frozen=True)
class Backend:
    """How the contract tests ask one backend: its deployment's request variables, the FHIR patient
    id they give each person, where mapped resources say they came from, and whether an unknown
    patient is a 404 with this error code (Cosmic) rather than an empty answer."""

    name: str
    variables: Mapping[str, str]
    priority: int
    create_app: Callable[[list[pop.Person]], web.Application]
    patient_id: Callable[[pop.Person], str]
    not_found_code: str | None = None
    get_only: bool = True  # a JSON API read with GETs (NPÖ's SOAP contracts are POSTed)

    @property
    def source_uri(self) -> str:
        return f"urn:fhir-facade:source:{self.name}"

    @property
    def mappings(self) -> tuple[CompiledMapping, ...]:
        """mappings/<backend>/*.yaml, compiled once per session with the demo deployment's ids."""
        return _compiled(self.name, tuple(sorted(self.variables)))

    @property
    def by_name(self) -> dict[str, CompiledMapping]:
        return {short(m): m for m in self.mappings}

    def context(self, person: pop.Person) -> dict[str, str]:
        ref = PatientRef(pnr=person.pnr, fhir_id=self.patient_id(person), system=system_of(person.pnr))
        return request_context(ref, self.name, dict(self.variables))


def short(mapping: CompiledMapping) -> str:
    """A mapping's name without its backend ("cosmic/alerts" → "alerts")."""
    return mapping.name.split("/", 1)[1]


@cache
def _compiled(backend: str, variables: tuple[str, ...]) -> tuple[CompiledMapping, ...]:
    return load_backend_mappings(
        MAPPINGS_DIR / backend,
        backend,
        load_code_maps(MAPPINGS_DIR),
        REQUEST_CONTEXT | set(variables),
        ids=RESOURCE_IDS,
    )


COSMIC = Backend(
    "cosmic",
    {"system_hsa_id": cosmic.SYSTEM_HSA_ID, "ambulance_service_hsa_id": pop.UNITS["ambulans"][0]},
    priority=1,
    create_app=cosmic.create_app,
    patient_id=lambda p: f"pat{p.pnr}",  # an opaque FHIR id without a hyphen, as the real ones are
    not_found_code="PATIENT_NOT_FOUND",
)
VIVA = Backend(
    "viva",
    {"system_hsa_id": viva.SYSTEM_HSA_ID},
    priority=1,
    create_app=viva.create_app,
    patient_id=lambda p: f"pat-{p.pnr[-4:]}",
)
NPO = Backend(
    "npo",
    {"logical_address": NPO_LOGICAL_ADDRESS},
    priority=2,
    create_app=npo.create_app,
    patient_id=lambda p: f"pat{p.pnr}",
    get_only=False,
)
BACKENDS = {b.name: b for b in (COSMIC, VIVA, NPO)}
# The people each backend's contract tests give its simulator (Viva's: tests/mapping/test_viva_mappings.py).
PEOPLE = {
    "cosmic": [*pop.DEMO_PEOPLE, *pop.generated_people(8)],
    "npo": [*pop.DEMO_PEOPLE, *pop.generated_people(10)],
}
# Someone no simulator knows (NPÖ's contract tests ask for them too).
UNKNOWN = pop.Person(pop.UNKNOWN_PNR, "Okänd", "Okänd", "male", ("", "", ""))


@contextlib.asynccontextmanager
async def simulator(backend: Backend, people: list[pop.Person]) -> AsyncIterator[TestClient]:
    """The backend's simulator for these people, on loopback, and a client to it."""
    async with TestClient(TestServer(backend.create_app(people))) as client:
        yield client


async def fetch(backend: Backend, client: Any, mapping: CompiledMapping, ctx: Mapping[str, str]) -> Any:
    """The simulator's answer to the mapping's request, read as the facade reads it (JSON or XML);
    None for an unknown patient where the backend says so with a 404."""
    path, query, headers, body = mapping.request.render(dict(ctx))
    if backend.get_only:
        assert mapping.request.method == "GET" and body is None
        resp = await client.get(path, params=query)
    else:
        resp = await client.request(mapping.request.method, path, params=query, data=body, headers=headers)
    raw = await resp.read()
    if backend.not_found_code is not None and resp.status == 404:
        assert orjson.loads(raw)["errorCode"] == backend.not_found_code
        return None
    assert resp.status == 200, (mapping.name, path, resp.status, raw[:300])
    return parse_xml(raw) if mapping.request.format == "xml" else orjson.loads(raw)


def run(
    backend: Backend,
    mapping: CompiledMapping,
    raw: Any,
    ctx: Mapping[str, str],
    skipped: dict[str, int] | None = None,
) -> list[MappedResource]:
    """One mapping over one answer. Records it skips are counted in ``skipped`` (by mapping name)
    when given; otherwise none may be skipped."""
    if raw is None:
        return []
    out, bad = map_records(mapping, raw, dict(ctx), source_uri=backend.source_uri, priority=backend.priority)
    if skipped is None:
        assert bad == 0, mapping.name
    else:
        skipped[mapping.name] = skipped.get(mapping.name, 0) + bad
    return out


async def map_all(
    backend: Backend,
    client: Any,
    person: pop.Person,
    *,
    skipped: dict[str, int] | None = None,
    fetches: dict[str, int] | None = None,
) -> Mapped:
    """Every mapping of the backend over the simulator's answers for ``person``: each distinct request
    fetched once (like the facade), counted per person in ``fetches`` when given."""
    ctx = backend.context(person)
    bodies: dict[str, Any] = {}
    out: Mapped = {}
    for m in backend.mappings:
        if m.request.key not in bodies:
            bodies[m.request.key] = await fetch(backend, client, m, ctx)
            if fetches is not None:
                fetches[person.pnr] = fetches.get(person.pnr, 0) + 1
        out[short(m)] = run(backend, m, bodies[m.request.key], ctx, skipped)
    return out


Everyone = tuple[dict[str, Mapped], dict[str, int], dict[str, int]]


async def map_everyone(
    backend: Backend, people: list[pop.Person], also: tuple[pop.Person, ...] = ()
) -> Everyone:
    """``map_all`` for each person (and for ``also``, whom the simulator does not know) over one
    simulator: (pnr → mapped, records skipped per mapping, fetches per pnr)."""
    mapped: dict[str, Mapped] = {}
    skipped: dict[str, int] = {}
    fetches: dict[str, int] = {}
    async with simulator(backend, people) as client:
        for person in [*people, *also]:
            mapped[person.pnr] = await map_all(backend, client, person, skipped=skipped, fetches=fetches)
    return mapped, skipped, fetches


def empty_answer(name: str) -> bytes:
    """The answer each of ``name``'s mappings reads as "nothing here" (and none as broken): every list
    its mappings select, present and empty — JSON for Cosmic and Viva; for NPÖ a SOAP envelope with
    every response element and no record in it (proxy.mapping.compiler ``answer_keys``)."""
    backend = BACKENDS[name]
    tree: dict[str, Any] = {}
    for m in backend.mappings:
        node = tree
        for i, key in enumerate(m.required):
            last = i == len(m.required) - 1
            node = node.setdefault(key, [] if last and m.request.format == "json" else {})
            if not isinstance(node, dict):
                break
    if backend.mappings[0].request.format == "json":
        return orjson.dumps(tree)

    def xml(node: dict[str, Any]) -> str:
        return "".join(f"<{k}>{xml(v) if isinstance(v, dict) else ''}</{k}>" for k, v in node.items())

    return xml(tree).encode()
