"""Long histories through the mappings (tests/contract.py): the named long-history patient
(6,000 generated records) and a generated patient under the knobs. Every record becomes exactly one
resource, none is skipped, every code is one the maps know, every reference between resources
resolves, and each is attributed (PDL) to a care provider and unit of the directory."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from fhir.resources.R4B import get_fhir_model_class

from proxy.simulators import population as pop
from proxy.simulators.history import History, plan
from proxy.types import MappedResource
from tests import contract, r4

LONG = pop.INGEGERD
KNOBS = History((700, 700), years=6)
GENERATED = next(p for p in pop.generated_people(10) if p.in_viva)
PATIENT_MAPPINGS = {"cosmic/patient", "viva/brukare"}
# who holds each backend's records (PDL): the care provider, and the care units of the directory
PROVIDER = {
    "cosmic": pop.REGION_PROVIDER,
    "viva": pop.MUNICIPALITY_PROVIDER,
    "npo": pop.OTHER_REGION_PROVIDER,
}
DIRECTORY_UNITS = {hsa for hsa, _ in pop.UNITS.values()}
UNMAPPED = "urn:fhir-facade:unmapped-code"

Mapped = dict[str, dict[str, list[MappedResource]]]  # backend → mapping → resources
Result = tuple[Mapped, dict[str, int]]


async def _map(person: pop.Person, history: History | None) -> Result:
    mapped: Mapped = {}
    skipped: dict[str, int] = {}
    for backend in (contract.COSMIC, contract.VIVA, contract.NPO):
        app = backend.create_app([*pop.DEMO_PEOPLE, person], history=history)  # type: ignore[call-arg]
        async with TestClient(TestServer(app)) as client:
            mapped[backend.name] = await contract.map_all(backend, client, person, skipped=skipped)
    return mapped, skipped


@pytest.fixture(scope="module")
def long_history() -> Result:
    return asyncio.run(_map(LONG, None))


@pytest.fixture(scope="module")
def under_the_knobs() -> Result:
    return asyncio.run(_map(GENERATED, KNOBS))


def resources(mapped: Mapped) -> Iterator[MappedResource]:
    for by_mapping in mapped.values():
        for found in by_mapping.values():
            yield from found


def records_only(mapped: Mapped) -> list[MappedResource]:
    return [m for m in resources(mapped) if m.mapping not in PATIENT_MAPPINGS]


def references(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            yield node["reference"]
        for v in node.values():
            yield from references(v)
    elif isinstance(node, list):
        for v in node:
            yield from references(v)


@pytest.mark.parametrize(("which", "person", "history"), [("long", LONG, None), ("knobs", GENERATED, KNOBS)])
def test_every_record_becomes_exactly_one_resource_and_none_is_skipped(
    which: str, person: pop.Person, history: History | None, request: pytest.FixtureRequest
) -> None:
    mapped, skipped = request.getfixturevalue("long_history" if which == "long" else "under_the_knobs")
    assert skipped == dict.fromkeys(skipped, 0)
    long = plan(person, history)
    assert long is not None
    for backend, kinds in long.counts.items():
        got = records_only({backend: mapped[backend]})
        assert len(got) == sum(kinds.values()), backend
        assert len({m.origin_key for m in got}) == len(got), backend  # one resource per record
    assert len(records_only(mapped)) == long.total
    if which == "long":
        assert long.total >= 5000 and set(long.counts) == {"cosmic", "viva", "npo"}


def test_every_resource_is_attributed_to_a_provider_and_unit_of_the_directory(long_history: Result) -> None:
    mapped, _ = long_history
    for backend, by_mapping in mapped.items():
        for name, found in by_mapping.items():
            if name in {p.split("/")[1] for p in PATIENT_MAPPINGS}:
                continue
            for m in found:
                assert m.care_provider == PROVIDER[backend], (m.mapping, m.care_provider)
                assert m.care_unit in DIRECTORY_UNITS, (m.mapping, m.care_unit)


def test_every_code_is_one_the_maps_know_and_every_reference_resolves(long_history: Result) -> None:
    mapped, _ = long_history
    everything = list(resources(mapped))
    ids = {f"{m.resource['resourceType']}/{m.resource['id']}" for m in everything}
    patient_refs = set()
    checked = 0
    for m in everything:
        assert not [x for x in m.resource.get("extension", []) if x.get("url") == UNMAPPED], m.mapping
        for ref in references(m.resource):
            if ref.startswith("Patient/"):
                patient_refs.add(ref)
                continue
            assert ref in ids, (m.mapping, ref)
            checked += 1
    assert checked > 100  # encounters' reasons, procedures' contacts, administrations' statements
    assert len(patient_refs) <= 3  # (one patient id per backend's context)


@pytest.mark.load
def test_every_resource_validates(long_history: Result, under_the_knobs: Result) -> None:
    """Against the R4B models every one, and against R4 itself (tests/r4.py, slower) the first few of
    each mapping: the generator repeats one shape per kind of record."""
    count = 0
    for mapped, _ in (long_history, under_the_knobs):
        for by_mapping in mapped.values():
            for found in by_mapping.values():
                for i, m in enumerate(found):
                    get_fhir_model_class(m.resource["resourceType"]).model_validate(m.resource)
                    if i < 5:
                        assert r4.validate(m.resource) == [], (m.mapping, r4.validate(m.resource))
                    count += 1
    assert count > 6000
