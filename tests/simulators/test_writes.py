"""Viva and Cosmic accept writes in their own dialects (issue 22): validated whole as the real systems
would (nothing kept on an error, the dialect's error shape), ``Idempotency-Key`` honoured, and what
was written listed by later reads — and, through the facade, the copies in both merge into one fact."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.mapping.write import WriteMappings, compile_write_mappings
from proxy.mappingcheck import WRITER, home_visit
from proxy.merge.facts import ALSO_IN_SOURCE_SYSTEM
from proxy.pnr import dashed
from proxy.simulators import cosmic, viva
from proxy.simulators.harness import Received
from proxy.simulators.population import DEMO_PEOPLE, TOLVAN
from tests.conftest import BASE, pid

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"
WRITES = compile_write_mappings(
    MAPPINGS,
    [("viva", "viva"), ("cosmic", "cosmic")],
    variables={"viva": ["system_hsa_id"], "cosmic": ["system_hsa_id", "ambulance_service_hsa_id"]},
)
PEOPLE = list(DEMO_PEOPLE)


def rendered(backend: str, resource: dict[str, Any], pnr: str = TOLVAN.pnr) -> tuple[str, bytes, str]:
    """(path, body, idempotency key) of ``resource`` for ``backend``, as the facade renders it."""
    mapping = WRITES.select(backend, resource)
    assert mapping is not None
    minted = resource["identifier"][0]["value"]
    ctx = {**WRITER, "pnr": pnr, "pnr_dash": dashed(pnr), "identifier": minted}
    request = mapping.render(resource, ctx)
    return request.path, request.body, f"{minted}-{backend}"


async def post(
    client: Any, path: str, body: bytes | dict[str, Any], key: str | None = None
) -> tuple[int, Any]:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {"Content-Type": "application/json", **({"Idempotency-Key": key} if key else {})}
    resp = await client.post(path, data=raw, headers=headers)
    return resp.status, await resp.json(content_type=None)


async def write_visit(
    client: Any, backend: str, pnr: str = TOLVAN.pnr, base: str = ""
) -> list[dict[str, Any]]:
    answers = []
    for resource in home_visit(pid(pnr)):
        path, body, key = rendered(backend, resource, pnr)
        status, answer = await post(client, base + path, body, key)
        assert status == 201, answer
        answers.append(answer)
    return answers


@pytest.fixture
async def viva_client(aiohttp_client: Any) -> Any:
    return await aiohttp_client(viva.create_app(PEOPLE))


@pytest.fixture
async def cosmic_client(aiohttp_client: Any) -> Any:
    return await aiohttp_client(cosmic.create_app(PEOPLE))


async def viva_list(client: Any, kind: str, pnr: str = TOLVAN.pnr) -> Any:
    resp = await client.get(f"/viva/api/v2/{kind}", params={"personnummer": pnr})
    assert resp.status == 200
    return await resp.json()


async def cosmic_list(client: Any, kind: str, pnr: str = TOLVAN.pnr) -> list[dict[str, Any]]:
    resp = await client.get(f"/cosmic/api/v1/patients/{dashed(pnr)}/{kind}")
    assert resp.status == 200
    items: list[dict[str, Any]] = (await resp.json())["items"]
    return items


# ---- what was written is listed, in the dialect's own shape ------------------------------------


async def test_viva_lists_what_was_written_with_the_external_id_and_the_writers_unit(
    viva_client: Any,
) -> None:
    before = await viva_list(viva_client, "hembesok")
    await write_visit(viva_client, "viva")
    visits = (await viva_list(viva_client, "hembesok"))["hembesok"]
    assert len(visits) == len(before["hembesok"]) + 1
    visit = visits[0]
    enc = home_visit(pid(TOLVAN.pnr))[0]
    assert visit["externtId"] == enc["identifier"][0]["value"]
    assert (visit["start"], visit["slut"], visit["status"], visit["besokstyp"]) == (
        "202603101000",
        "202603101045",
        "UTFORT",
        "HEMSJUKVARD",
    )
    assert visit["enhet"] == {
        "hsaId": "SE2120001520-HSV1",
        "namn": "Kommunal hemsjukvård Norr",
        "vardgivareHsaId": "SE2120001520-KOMM",
    }
    assert set(visit) >= set(before["hembesok"][0])  # the shape of Viva's own visits
    vitals = (await viva_list(viva_client, "matvarden"))["matvarden"]
    assert sorted(v["typ"] for v in vitals) == sorted(
        ["BLODTRYCK", "PULS", "ANDNINGSFREKVENS", "TEMPERATUR", "SATURATION", "MEDVETANDEGRAD"]
    )
    assert {v["besokId"] for v in vitals} == {visit["besokId"]}  # the visit resolved
    notes = (await viva_list(viva_client, "anteckningar"))["anteckningar"]
    assert notes[0]["text"].startswith("Hembesök: mår bra") and notes[0]["lagrum"] == "HSL"
    given = (await viva_list(viva_client, "administreringar"))["administreringar"]
    assert [a["status"] for a in given] == ["EJ_GIVEN", "GIVEN"]  # newest first
    assert "ordinationId" not in given[0] and given[0]["orsak"] == "SOVER"
    # a range narrows the written records too
    resp = await viva_client.get(
        "/viva/api/v2/matvarden", params={"personnummer": TOLVAN.pnr, "fromDatum": "20260311"}
    )
    assert (await resp.json())["matvarden"] == []


async def test_the_written_only_kinds_are_empty_when_nothing_was_written(viva_client: Any) -> None:
    assert await viva_list(viva_client, "matvarden") == {"matvarden": []}
    assert await viva_list(viva_client, "administreringar") == {"administreringar": []}


async def test_cosmic_lists_what_was_written(cosmic_client: Any) -> None:
    before = await cosmic_list(cosmic_client, "carecontacts")
    await write_visit(cosmic_client, "cosmic")
    contacts = await cosmic_list(cosmic_client, "carecontacts")
    assert len(contacts) == len(before) + 1
    contact = contacts[0]
    assert (contact["contactType"], contact["state"], contact["startAt"]) == (
        "HOME",
        "FINISHED",
        "2026-03-10 10:00",
    )
    assert contact["careUnit"]["providerHsaId"] == "SE2120001520-KOMM"  # the writer's, not the region's
    assert contact["externalId"] == home_visit(pid(TOLVAN.pnr))[0]["identifier"][0]["value"]
    vitals = await cosmic_list(cosmic_client, "vitalsigns")
    assert len(vitals) == 6 and {v["contactId"] for v in vitals} == {contact["contactId"]}
    bp = next(v for v in vitals if v["term"] == "BP")
    assert (bp["systolic"], bp["diastolic"], bp["unit"]) == ("142", "88", "mmHg")
    notes = await cosmic_list(cosmic_client, "notes")
    assert notes[0]["noteType"] == "NURSING" and notes[0]["externalId"]
    given = await cosmic_list(cosmic_client, "administrations")
    assert [a["state"] for a in given] == ["NOT_GIVEN", "GIVEN"]
    assert given[0]["notGivenReason"] == "Sov, väcktes inte"


# ---- refused: the dialect's error, nothing kept ------------------------------------------------


def _viva_visit() -> dict[str, Any]:
    return orjson.loads(rendered("viva", home_visit(pid(TOLVAN.pnr))[0])[1])


def _cosmic_visit() -> dict[str, Any]:
    return orjson.loads(rendered("cosmic", home_visit(pid(TOLVAN.pnr))[0])[1])


@pytest.mark.parametrize(
    ("change", "status", "kod"),
    [
        ({"start": None}, 400, "OBLIGATORISKT_FALT_SAKNAS"),
        ({"start": "2026-03-10 10:00"}, 400, "OGILTIGT_FORMAT"),
        ({"slut": "202603100900"}, 400, "OGILTIGT_FORMAT"),  # before the start
        ({"status": "KLAR"}, 422, "OKAND_KOD"),
        ({"externtId": ""}, 400, "OBLIGATORISKT_FALT_SAKNAS"),
        (
            {"enhet": {"hsaId": "hemsjukvarden", "vardgivareHsaId": "SE2120001520-KOMM"}},
            400,
            "OGILTIGT_FORMAT",
        ),
        ({"personnummer": "19121212-1212"}, 400, "OGILTIGT_PERSONNUMMER"),
        ({"personnummer": "190001019999"}, 422, "OKAND_BRUKARE"),
    ],
)
async def test_viva_refuses_a_malformed_visit_and_keeps_nothing(
    viva_client: Any, change: dict[str, Any], status: int, kod: str
) -> None:
    before = await viva_list(viva_client, "hembesok")
    body = {**_viva_visit(), **change}
    got, answer = await post(
        viva_client, "/viva/api/v2/hembesok", {k: v for k, v in body.items() if v is not None}
    )
    assert got == status and answer["fel"]["kod"] == kod and answer["fel"]["status"] == status
    assert await viva_list(viva_client, "hembesok") == before


async def test_viva_refuses_malformed_measurements_and_doses(viva_client: Any) -> None:
    resources = home_visit(pid(TOLVAN.pnr))
    temp = orjson.loads(rendered("viva", resources[4])[1])
    for change, kod in (
        ({"varde": "37.4"}, "OGILTIGT_FORMAT"),  # Viva writes a decimal comma
        ({"matenhet": "F"}, "OKAND_KOD"),
        ({"typ": "VIKT"}, "OKAND_KOD"),
    ):
        got, answer = await post(viva_client, "/viva/api/v2/matvarden", {**temp, **change})
        assert (got, answer["fel"]["kod"]) in ((400, kod), (422, kod)), (change, answer)
    bp = orjson.loads(rendered("viva", resources[1])[1])
    got, answer = await post(viva_client, "/viva/api/v2/matvarden", {**bp, "systoliskt": "142"})
    assert (got, answer["fel"]["kod"]) == (400, "OGILTIGT_FORMAT")
    not_given = orjson.loads(rendered("viva", resources[9])[1])
    del not_given["kommentar"]
    got, answer = await post(viva_client, "/viva/api/v2/administreringar", not_given)
    assert (got, answer["fel"]["kod"]) == (400, "OBLIGATORISKT_FALT_SAKNAS")
    got, answer = await post(viva_client, "/viva/api/v2/administreringar", b"not json")
    assert (got, answer["fel"]["kod"]) == (400, "OGILTIG_BEGARAN")
    assert (await viva_list(viva_client, "matvarden"))["matvarden"] == []
    assert (await viva_list(viva_client, "administreringar"))["administreringar"] == []


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        ({"startAt": None}, 400, "MISSING_FIELD"),
        ({"startAt": "202603101000"}, 400, "INVALID_FORMAT"),
        ({"state": "DONE"}, 422, "UNKNOWN_CODE"),
        ({"contactType": "VIDEO"}, 422, "UNKNOWN_CODE"),
        ({"careUnit": {"hsaId": "SE2120001520-HSV1"}}, 400, "MISSING_FIELD"),
    ],
)
async def test_cosmic_refuses_a_malformed_contact_and_keeps_nothing(
    cosmic_client: Any, change: dict[str, Any], status: int, code: str
) -> None:
    before = await cosmic_list(cosmic_client, "carecontacts")
    body = {k: v for k, v in {**_cosmic_visit(), **change}.items() if v is not None}
    got, answer = await post(
        cosmic_client, f"/cosmic/api/v1/patients/{dashed(TOLVAN.pnr)}/carecontacts", body
    )
    assert got == status and answer["errorCode"] == code and answer["status"] == status
    assert await cosmic_list(cosmic_client, "carecontacts") == before


async def test_cosmic_refuses_an_unknown_patient_as_it_answers_reads(cosmic_client: Any) -> None:
    got, answer = await post(
        cosmic_client, "/cosmic/api/v1/patients/19000101-9999/carecontacts", _cosmic_visit()
    )
    assert (got, answer["errorCode"]) == (404, "PATIENT_NOT_FOUND")
    resources = home_visit(pid(TOLVAN.pnr))
    temp = orjson.loads(rendered("cosmic", resources[4])[1])
    got, answer = await post(
        cosmic_client, f"/cosmic/api/v1/patients/{dashed(TOLVAN.pnr)}/vitalsigns", {**temp, "value": "37.4"}
    )
    assert (got, answer["errorCode"]) == (400, "INVALID_FORMAT")
    assert await cosmic_list(cosmic_client, "vitalsigns") == []


# ---- Idempotency-Key ---------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["viva", "cosmic"])
async def test_the_same_key_twice_writes_once_and_answers_the_same(
    backend: str, viva_client: Any, cosmic_client: Any
) -> None:
    client = viva_client if backend == "viva" else cosmic_client
    listing = viva_list if backend == "viva" else cosmic_list
    kind = "hembesok" if backend == "viva" else "carecontacts"

    async def count() -> int:
        found = await listing(client, kind)
        return len(found[kind] if isinstance(found, dict) else found)

    before = await count()
    path, body, key = rendered(backend, home_visit(pid(TOLVAN.pnr))[0])
    first = await post(client, path, body, key)
    again = await post(client, path, body, key)
    assert first[0] == 201 and again == first
    assert await count() == before + 1
    # the same key with another body: refused, nothing written
    other = orjson.loads(body)
    other["externtId" if backend == "viva" else "externalId"] = "f" * 32
    status, answer = await post(client, path, other, key)
    assert status == 422
    assert (answer["fel"]["kod"] if backend == "viva" else answer["errorCode"]) in (
        "IDEMPOTENSNYCKEL_ATERANVAND",
        "IDEMPOTENCY_KEY_REUSED",
    )
    assert await count() == before + 1
    # another key: another record (the key, not the body, makes a write the same)
    assert (await post(client, path, body, key + "-2"))[0] == 201
    assert await count() == before + 2


async def test_a_refused_write_is_refused_again_under_its_key(viva_client: Any) -> None:
    body = {**_viva_visit(), "status": "KLAR"}
    first = await post(viva_client, "/viva/api/v2/hembesok", body, "k-1")
    assert first[0] == 422
    assert await post(viva_client, "/viva/api/v2/hembesok", body, "k-1") == first


# ---- read back through the facade: one fact, both sources --------------------------------------


async def test_a_visit_written_to_both_reads_back_once_with_both_sources(facade: Any) -> None:
    received: list[Received] = []
    async with facade(received=received) as f:
        session = f.client.session
        for backend in ("viva", "cosmic"):
            for resource in home_visit(pid(TOLVAN.pnr)):
                path, body, key = rendered(backend, resource)
                headers = {"Content-Type": "application/json", "Idempotency-Key": key}
                async with session.post(f.sim_urls[backend] + path, data=body, headers=headers) as r:
                    assert r.status == 201, await r.text()
        posted = [r for r in received if r.method == "POST"]
        assert len(posted) == 20  # (the harness records each write's key, for the delivery tests)
        assert all(r.headers["Idempotency-Key"].endswith(f"-{r.backend}") for r in posted)
        status, bundle = await f.get(f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything")
        assert status == 200
        resources = [e["resource"] for e in bundle["entry"] if e.get("search", {}).get("mode") != "outcome"]
        sample = home_visit(pid(TOLVAN.pnr))
        for wrote in sample:
            minted = wrote["identifier"][0]["value"]
            copies = [
                r
                for r in resources
                if any(
                    i.get("system") == "urn:fhir-facade:written" and i.get("value") == minted
                    for i in r.get("identifier", [])
                )
            ]
            assert len(copies) == 1, (wrote["resourceType"], len(copies))
            [kept] = copies
            assert kept["resourceType"] == wrote["resourceType"]
            also = {
                t["code"] for t in kept["meta"].get("tag", []) if t.get("system") == ALSO_IN_SOURCE_SYSTEM
            }
            sources = {kept["meta"]["source"].rsplit(":", 1)[-1], *(c.rsplit(":", 1)[-1] for c in also)}
            assert sources == {"cosmic", "viva"}, (wrote["resourceType"], kept["meta"])
        # the merged visit: class HH, its time as written
        [visit] = [
            r
            for r in resources
            if r["resourceType"] == "Encounter"
            and r.get("identifier", [{}])[0].get("system") == "urn:fhir-facade:written"
        ]
        assert visit["class"]["code"] == "HH" and visit["period"]["start"] == "2026-03-10T10:00:00+01:00"
        written_obs = [
            r
            for r in resources
            if r["resourceType"] == "Observation"
            and r.get("category", [{}])[0].get("coding", [{}])[0].get("code") == "vital-signs"
        ]
        assert len(written_obs) == 6
        temp = next(o for o in written_obs if o["code"]["coding"][0]["code"] == "8310-5")
        assert temp["valueQuantity"]["value"] == 37.4 and temp["valueQuantity"]["code"] == "Cel"
        acvpu = next(o for o in written_obs if o["code"]["coding"][0]["code"] == "80288-4")
        assert acvpu["valueCodeableConcept"]["coding"][0]["code"] == "248234008"


def test_the_sample_resources_are_unchanged_by_rendering() -> None:
    """Rendering reads the resource and never writes to it (the facade renders one entry per target)."""
    sample = home_visit("p")
    kept = copy.deepcopy(sample)
    for resource in sample:
        for backend in ("viva", "cosmic"):
            rendered(backend, resource)
    assert sample == kept


def test_written_mappings_are_the_shipped_ones() -> None:
    assert isinstance(WRITES, WriteMappings) and WRITES.backends == {"viva", "cosmic"}
