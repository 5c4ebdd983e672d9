"""The Viva simulator speaks Viva's dialect: Swedish JSON, compact local dates, 200 for unknown people."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import orjson
import pytest

from proxy.simulators import viva
from proxy.simulators.faults import Faults
from proxy.simulators.population import (
    GRETA,
    LENNART,
    MUNICIPALITY_PROVIDER,
    SANNA,
    TOLVAN,
    UNITS,
    UNKNOWN_PNR,
    population,
)

SOL_PHRASE = "Biståndsbeslut hemtjänst SoL-anteckning"
LIST_KINDS = ("vardplaner", "funktionsbedomningar", "anteckningar", "lakemedelslista", "hembesok", "beslut")
DATE = re.compile(r"^\d{8}$")
STAMP = re.compile(r"^\d{12}$")
PEOPLE = population(40)


@pytest.fixture
async def client(aiohttp_client: Any) -> Any:
    return await aiohttp_client(viva.create_app(PEOPLE))


async def get(client: Any, kind: str, pnr: str | None) -> tuple[int, Any]:
    params = {} if pnr is None else {"personnummer": pnr}
    resp = await client.get(f"/viva/api/v2/{kind}", params=params)
    assert resp.content_type == "application/json"
    return resp.status, orjson.loads(await resp.read())


def is_date(v: str) -> bool:
    datetime.strptime(v, "%Y%m%d")
    return bool(DATE.match(v))


def is_stamp(v: str) -> bool:
    datetime.strptime(v, "%Y%m%d%H%M")
    return bool(STAMP.match(v))


def assert_enhet(e: dict[str, str]) -> None:
    assert e == {
        "hsaId": UNITS["hemsjukvard"][0],
        "namn": UNITS["hemsjukvard"][1],
        "vardgivareHsaId": MUNICIPALITY_PROVIDER,
    }


# ---- brukare ------------------------------------------------------------------------------------


async def test_brukare_has_swedish_fields_and_compact_timestamp(client: Any) -> None:
    status, body = await get(client, "brukare", TOLVAN.pnr)
    assert status == 200
    b = body["brukare"]
    assert set(b) == {
        "brukarId",
        "personnummer",
        "fornamn",
        "efternamn",
        "kon",
        "adress",
        "telefon",
        "skyddadIdentitet",
        "senastAndrad",
    }
    assert b["personnummer"] == "191212121212"
    assert (b["fornamn"], b["efternamn"], b["kon"]) == ("Tolvan", "Tolvansson", "man")
    assert b["adress"] == {"gatuadress": "Tolvgatan 12", "postnummer": "12345", "postort": "Stockholm"}
    assert b["skyddadIdentitet"] == "N"
    assert is_stamp(b["senastAndrad"])


async def test_greta_is_known_to_viva(client: Any) -> None:
    status, body = await get(client, "brukare", GRETA.pnr)
    assert status == 200
    assert body["brukare"]["kon"] == "kvinna"
    assert body["brukare"]["efternamn"] == "Gustafsson"


@pytest.mark.parametrize("pnr", [UNKNOWN_PNR, SANNA.pnr, LENNART.pnr, "191212121213"])
async def test_unknown_person_is_200_with_null_and_empty_lists(client: Any, pnr: str) -> None:
    status, body = await get(client, "brukare", pnr)
    assert (status, body) == (200, {"brukare": None})
    for kind in LIST_KINDS:
        status, body = await get(client, kind, pnr)
        assert (status, body) == (200, {kind: []})


@pytest.mark.parametrize("kind", ["brukare", *LIST_KINDS])
@pytest.mark.parametrize(
    "pnr", [None, "", "19121212-1212", "1212121212", "1912121212123", "19121212121X", "١٩١٢١٢١٢١٢١٢"]
)
async def test_bad_personnummer_is_400_in_viva_dialect(client: Any, kind: str, pnr: str | None) -> None:
    status, body = await get(client, kind, pnr)
    assert status == 400
    assert set(body) == {"fel"}
    assert body["fel"]["kod"] in ("PERSONNUMMER_SAKNAS", "OGILTIGT_PERSONNUMMER")
    assert body["fel"]["meddelande"]


async def test_injected_error_is_in_viva_dialect(aiohttp_client: Any) -> None:
    client = await aiohttp_client(viva.create_app(PEOPLE, Faults(error_status=503)))
    status, body = await get(client, "vardplaner", TOLVAN.pnr)
    assert status == 503
    assert body["fel"]["kod"] == "SERVERFEL"


# ---- the record kinds ---------------------------------------------------------------------------


async def test_tolvan_care_plan(client: Any) -> None:
    _, body = await get(client, "vardplaner", TOLVAN.pnr)
    (plan,) = body["vardplaner"]
    assert plan["status"] in ("AKTIV", "AVSLUTAD", "UTKAST")
    assert is_date(plan["startdatum"])
    assert plan["slutdatum"] is None
    assert is_stamp(plan["senastAndrad"])
    assert len(plan["insatser"]) >= 2
    assert all(set(i) == {"insatsId", "text", "frekvens"} for i in plan["insatser"])
    assert set(plan["upprattadAv"]) == {"namn", "hsaId"}
    assert_enhet(plan["enhet"])


async def test_tolvan_functional_status_covers_three_adl_areas(client: Any) -> None:
    _, body = await get(client, "funktionsbedomningar", TOLVAN.pnr)
    items = body["funktionsbedomningar"]
    assert len({i["omrade"] for i in items}) >= 3
    for i in items:
        assert re.match(r"^d\d{3}$", i["omrade"])
        assert i["omradesText"] == viva.ADL_AREAS[i["omrade"]]
        assert isinstance(i["niva"], int) and 0 <= i["niva"] <= 4
        assert is_stamp(i["datum"])
        assert_enhet(i["enhet"])
    assert {"d450", "d510", "d540", "d550"} <= {i["omrade"] for i in items}


async def test_tolvan_notes_include_one_hsl_and_one_sol_note(client: Any) -> None:
    _, body = await get(client, "anteckningar", TOLVAN.pnr)
    notes = body["anteckningar"]
    assert sorted(n["lagrum"] for n in notes) == ["HSL", "SoL"]
    (sol,) = [n for n in notes if n["lagrum"] == "SoL"]
    assert SOL_PHRASE in sol["text"]
    (hsl,) = [n for n in notes if n["lagrum"] == "HSL"]
    assert SOL_PHRASE not in hsl["text"]
    assert all(is_stamp(n["datum"]) for n in notes)


async def test_tolvan_medication_list_ramipril_given_by_home_care(client: Any) -> None:
    _, body = await get(client, "lakemedelslista", TOLVAN.pnr)
    (med,) = body["lakemedelslista"]
    assert med["atc"] == "C09AA05"
    assert "Ramipril" in med["preparat"]
    assert med["utsattDatum"] is None
    assert is_date(med["startdatum"])
    assert med["administreringar"]
    for a in med["administreringar"]:
        assert {"administreringId", "ordinationId", "tidpunkt", "signerad", "givenAv", "status"} <= set(a)
        assert (a["ordinationId"], a["atc"], a["preparat"]) == (
            med["ordinationId"],
            med["atc"],
            med["preparat"],
        )
        assert a["enhet"] == med["enhet"]
        assert is_stamp(a["tidpunkt"]) and is_stamp(a["signerad"]) and a["tidpunkt"] <= a["signerad"]


async def test_tolvan_home_visits(client: Any) -> None:
    _, body = await get(client, "hembesok", TOLVAN.pnr)
    visits = body["hembesok"]
    assert {v["besokstyp"] for v in visits} == {"HEMSJUKVARD", "HEMTJANST"}
    for v in visits:
        assert v["status"] in ("UTFORT", "PLANERAT", "INSTALLT")
        assert is_stamp(v["start"]) and is_stamp(v["slut"]) and v["start"] < v["slut"]


@pytest.mark.parametrize("person", [TOLVAN, GRETA], ids=["tolvan", "greta"])
async def test_sol_decisions_are_served_at_beslut(client: Any, person: Any) -> None:
    status, body = await get(client, "beslut", person.pnr)
    assert status == 200
    assert body["beslut"]
    for b in body["beslut"]:
        assert b["lagrum"] == "SoL 4 kap. 1 §"
        assert b["insats"] and b["text"] and is_date(b["beslutsdatum"])


async def test_greta_has_a_richer_story(client: Any) -> None:
    bodies = {k: (await get(client, k, GRETA.pnr))[1][k] for k in LIST_KINDS}
    assert len(bodies["vardplaner"]) >= 2
    assert len({i["omrade"] for i in bodies["funktionsbedomningar"]}) >= 5
    notes = bodies["anteckningar"]
    assert any(n["lagrum"] == "SoL" and SOL_PHRASE in n["text"] for n in notes)
    assert sum(n["lagrum"] == "HSL" for n in notes) >= 2
    meds = bodies["lakemedelslista"]
    assert len(meds) >= 3 and all(m["administreringar"] for m in meds)
    assert any(m["utsattDatum"] is not None for m in meds)
    assert len(bodies["hembesok"]) >= 4
    assert len(bodies["beslut"]) >= 1


# ---- the generated population and determinism --------------------------------------------------


def test_generated_people_in_viva_have_the_documented_shape() -> None:
    data = viva.build_data(PEOPLE)
    generated = [p for p in PEOPLE if p.generated]
    assert {p.pnr for p in generated if p.in_viva} <= set(data)
    assert not {p.pnr for p in PEOPLE if not p.in_viva} & set(data)
    in_viva = [p for p in generated if p.in_viva]
    assert in_viva, "the sample population should hold someone in Viva"
    for p in in_viva:
        entry = data[p.pnr]
        assert entry["brukare"]["personnummer"] == p.pnr
        assert len(entry["vardplaner"]) == 1
        assert 2 <= len(entry["funktionsbedomningar"]) <= 5
        assert 1 <= len(entry["anteckningar"]) <= 3
        assert 0 <= len(entry["lakemedelslista"]) <= 3
        assert 1 <= len(entry["hembesok"]) <= 6
        sol = [n for n in entry["anteckningar"] if n["lagrum"] == "SoL"]
        assert all(SOL_PHRASE in n["text"] for n in sol)
        assert len(entry["beslut"]) == len(sol)


def test_record_ids_are_unique() -> None:
    data = viva.build_data(PEOPLE)
    id_fields = {
        "vardplaner": "planId",
        "funktionsbedomningar": "bedomningId",
        "anteckningar": "anteckningId",
        "lakemedelslista": "ordinationId",
        "hembesok": "besokId",
        "beslut": "beslutId",
    }
    for kind, field in id_fields.items():
        ids = [r[field] for entry in data.values() for r in entry[kind]]
        assert len(ids) == len(set(ids)), kind
    given = [
        a["administreringId"]
        for e in data.values()
        for m in e["lakemedelslista"]
        for a in m["administreringar"]
    ]
    assert given and len(given) == len(set(given))


def test_build_data_is_deterministic() -> None:
    assert viva.build_data(population(40)) == viva.build_data(population(40))
    # a person's records do not depend on who else is generated after them
    small, large = viva.build_data(population(10)), viva.build_data(population(40))
    assert all(large[pnr] == entry for pnr, entry in small.items())


async def test_answers_are_byte_identical_across_apps(aiohttp_client: Any) -> None:
    a = await aiohttp_client(viva.create_app(population(40)))
    b = await aiohttp_client(viva.create_app(population(40)))
    for kind in ("brukare", *LIST_KINDS):
        for pnr in (TOLVAN.pnr, GRETA.pnr):
            ra = await a.get(f"/viva/api/v2/{kind}", params={"personnummer": pnr})
            rb = await b.get(f"/viva/api/v2/{kind}", params={"personnummer": pnr})
            assert await ra.read() == await rb.read()
