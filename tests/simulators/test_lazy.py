"""Lazy per-patient generation (proxy/simulators/lazy.py): a simulator starts knowing only who
exists, makes a patient's records on the first request that needs them, keeps them in a cache
bounded by records, and makes a dropped patient again the same; and what it counts (``/_sim/stats``)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from aiohttp import web

from proxy.simulators import cosmic, npo, viva
from proxy.simulators import population as pop
from proxy.simulators.history import History
from proxy.simulators.lazy import Patients

PEOPLE = pop.population(3000)
VIVA_PERSON = next(p for p in PEOPLE if p.generated and p.in_viva)
NPO_LABS = npo.CONTRACTS[[c.operation for c in npo.CONTRACTS].index("GetLaboratoryOrderOutcome")]
NPO_DIAGNOSES = npo.CONTRACTS[[c.operation for c in npo.CONTRACTS].index("GetDiagnosis")]


def npo_body(contract: npo.Contract, pnr: str) -> str:
    return (
        "<Envelope><Header><LogicalAddress>SE1</LogicalAddress></Header><Body>"
        f"<{contract.operation}><patientId><id>{pnr}</id><type>{npo.PNR_OID}</type></patientId>"
        f"</{contract.operation}></Body></Envelope>"
    )


async def ask(client: Any, backend: str, person: pop.Person, what: str = "") -> bytes:
    """One list request for ``person`` (``what``: a kind, or for NPÖ a contract operation)."""
    if backend == "cosmic":
        resp = await client.get(f"{cosmic.BASE}/patients/{pop.pnr_dash(person.pnr)}/{what or 'labresults'}")
    elif backend == "viva":
        resp = await client.get(f"{viva.BASE}/{what or 'anteckningar'}", params={"personnummer": person.pnr})
    else:
        contract = NPO_DIAGNOSES if what == "GetDiagnosis" else NPO_LABS
        resp = await client.post(contract.path, data=npo_body(contract, person.pnr))
    assert resp.status in (200, 404), await resp.text()
    return await resp.read()


APPS: dict[str, tuple[Callable[..., web.Application], web.AppKey[Any]]] = {
    "cosmic": (cosmic.create_app, cosmic.PATIENTS_KEY),
    "viva": (viva.create_app, viva.PATIENTS_KEY),
    "npo": (npo.create_app, npo.PATIENTS_KEY),
}
OTHER_KIND = {"cosmic": "notes", "viva": "hembesok", "npo": "GetDiagnosis"}


@pytest.mark.parametrize("backend", sorted(APPS))
async def test_a_patient_is_generated_on_first_access_only(aiohttp_client: Any, backend: str) -> None:
    create, key = APPS[backend]
    app = create(PEOPLE, history=History((400, 400)))
    patients: Patients[Any] = app[key]
    assert patients.made == 0  # the start generated nothing: 3,000 patients known, none made
    assert len(patients) == len([p for p in PEOPLE if getattr(p, f"in_{backend}")])
    assert VIVA_PERSON.pnr in patients
    client = await aiohttp_client(app)

    first = await ask(client, backend, VIVA_PERSON)
    assert patients.made == 1 and patients.cached() == [VIVA_PERSON.pnr]
    assert await ask(client, backend, VIVA_PERSON) == first
    await ask(client, backend, VIVA_PERSON, OTHER_KIND[backend])
    assert patients.made == 1  # every later request, of any kind, from the cache

    other = next(p for p in PEOPLE if p.generated and p.in_viva and p is not VIVA_PERSON)
    await ask(client, backend, other)
    assert patients.made == 2 and patients.cached() == [VIVA_PERSON.pnr, other.pnr]


@pytest.mark.parametrize("backend", sorted(APPS))
async def test_an_unknown_patient_generates_nothing(aiohttp_client: Any, backend: str) -> None:
    create, key = APPS[backend]
    app = create(PEOPLE)
    client = await aiohttp_client(app)
    unknown = pop.Person(pop.UNKNOWN_PNR, "Okänd", "Okänd", "male", ("", "", ""))
    await ask(client, backend, unknown)
    assert app[key].made == 0 and app[key].held == 0


@pytest.mark.parametrize("backend", sorted(APPS))
async def test_the_cache_is_bounded_by_records_and_a_dropped_patient_comes_back_the_same(
    aiohttp_client: Any, backend: str
) -> None:
    create, key = APPS[backend]
    app = create(PEOPLE, history=History((300, 300)), cached_records=50)
    patients: Patients[Any] = app[key]
    client = await aiohttp_client(app)
    asked = [p for p in PEOPLE if p.generated and p.in_viva][:3]
    answers = [await ask(client, backend, p) for p in asked]
    assert patients.made == 3
    assert patients.cached() == [asked[-1].pnr]  # each over the bound (a share of 300): only the newest kept
    assert patients.held <= 300
    again = await ask(client, backend, asked[0])
    assert again == answers[0]  # made again, the same
    assert patients.made == 4


def test_the_lru_keeps_the_most_recently_used_within_its_bound() -> None:
    people = pop.generated_people(5)
    made: list[str] = []

    def make(person: pop.Person, seq: int) -> tuple[str, int]:
        made.append(person.pnr)
        return person.pnr, seq

    patients = Patients(people, make, lambda entry: 10, cached_records=30)
    a, b, c, d, _ = (p.pnr for p in people)
    for pnr in (a, b, c):
        patients.get(pnr)
    assert patients.get(a) == (a, 0)  # a hit: a is now the most recent
    patients.get(d)  # over the bound: b, the least recently used, goes
    assert patients.cached() == [c, a, d] and patients.held == 30
    assert made == [a, b, c, d]
    assert patients.get("190101019800") is None and patients.person(b) == people[1]


async def test_the_simulators_count_what_they_serve(aiohttp_client: Any) -> None:
    client = await aiohttp_client(cosmic.create_app(PEOPLE))
    path = f"{cosmic.BASE}/patients/{pop.pnr_dash(pop.TOLVAN.pnr)}/labresults"
    sizes = []
    for _ in range(2):
        resp = await client.get(path)
        sizes.append(len(await resp.read()))
    await client.get(f"{cosmic.BASE}/patients/19010101-9800/labresults")  # a 404 counts too
    stats = await (await client.get("/_sim/stats")).json()
    assert stats["requests"] == 3
    assert stats["paths"][path] == {"requests": 2, "bytes": sum(sizes)}
    assert stats["bytes"] > sum(sizes)
    assert not any(p.startswith("/_sim") for p in stats["paths"])  # (its own control endpoints not)
    assert (await (await client.delete("/_sim/stats")).json())["requests"] == 0
    assert (await (await client.get("/_sim/stats")).json()) == {"requests": 0, "bytes": 0, "paths": {}}


async def test_an_npo_answer_counts_its_bytes_as_sent(aiohttp_client: Any) -> None:
    client = await aiohttp_client(npo.create_app(PEOPLE))
    resp = await client.post(NPO_LABS.path, data=npo_body(NPO_LABS, pop.LENNART.pnr))
    body = await resp.read()
    stats = await (await client.get("/_sim/stats")).json()
    assert stats["requests"] == 1 and stats["bytes"] == len(body) > 40 * 1000  # Lennart's 40 results
