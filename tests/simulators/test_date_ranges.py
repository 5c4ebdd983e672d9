"""Date ranges on the simulators' list endpoints, so a long history can be fetched in windows and a
date search pushed down: Cosmic ``fromDate``/``toDate``, Viva ``fromDatum``/``tomDatum``, NPÖ RIVTA
``timePeriod`` — inclusive, either bound optional, a record made at one moment by its date, one that
lasts by its period overlapping the range (proxy/simulators/window.py)."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.mapping.xml import parse_xml
from proxy.simulators import cosmic, npo, viva
from proxy.simulators import population as pop
from proxy.simulators.history import History
from proxy.simulators.window import Window

HISTORY = History((1500, 1500), years=8)
PERSON = next(p for p in pop.generated_people(10) if p.in_viva)
PEOPLE = [*pop.DEMO_PEOPLE, PERSON]
YEARS = range(2018, 2027)


# ---- the range itself ---------------------------------------------------------------------------


def test_a_date_bound_covers_its_whole_day_and_both_bounds_are_inclusive() -> None:
    w = Window.parse("2024-03-01", "2024-03-31")
    assert w.admits("2024-03-01 00:00") and w.admits("2024-03-31 23:59") and w.admits("2024-03-15")
    assert not w.admits("2024-02-29 23:59") and not w.admits("2024-04-01 00:00")
    # every dialect's format: compared by its digits
    assert w.admits("202403311200") and w.admits("20240301000000") and not w.admits("20240401")
    t = Window.parse("2024-03-01 10:00", "20240301103000")
    assert t.admits("2024-03-01 10:00") and t.admits("202403011030") and not t.admits("2024-03-01 10:31")


def test_either_bound_may_be_left_out() -> None:
    assert Window.parse(None, None).unbounded and Window.parse(None, None).admits("1900-01-01")
    since = Window.parse("2024-01-01", None)
    assert since.admits("2030-01-01") and not since.admits("2023-12-31")
    until = Window.parse(None, "20231231")
    assert until.admits("1990-01-01") and not until.admits("2024-01-01")


def test_a_lasting_record_is_admitted_when_its_period_overlaps_the_range() -> None:
    w = Window.parse("2024-03-01", "2024-03-31")
    assert w.admits("2020-01-01", "2024-03-01", lasting=True)  # ended on the first day
    assert w.admits("2024-03-31", "2025-01-01", lasting=True)  # began on the last
    assert w.admits("2020-01-01", None, lasting=True)  # still going
    assert not w.admits("2020-01-01", "2024-02-29", lasting=True)
    assert not w.admits("2024-04-01", None, lasting=True)
    assert w.admits(None, "2024-03-10", lasting=True)  # no start: by its end


def test_a_record_without_a_date_is_never_filtered_out() -> None:
    w = Window.parse("2024-03-01", "2024-03-31")
    assert w.admits(None) and w.admits("") and w.admits(None, None, lasting=True)


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2024-13-01", None),
        ("yesterday", None),
        (None, "2024-02-30"),
        ("2024-1-1", None),
        ("2024-03-02", "2024-03-01"),
    ],
)
def test_a_malformed_or_backward_range_is_refused(start: str | None, end: str | None) -> None:
    with pytest.raises(ValueError):
        Window.parse(start, end)


# ---- Cosmic -------------------------------------------------------------------------------------


@pytest.fixture
async def cosmic_client(aiohttp_client: Any) -> Any:
    return await aiohttp_client(cosmic.create_app(PEOPLE, history=HISTORY))


async def cosmic_items(client: Any, kind: str, status: int = 200, **query: str) -> Any:
    resp = await client.get(f"{cosmic.BASE}/patients/{pop.pnr_dash(PERSON.pnr)}/{kind}", params=query)
    body = await resp.json()
    assert resp.status == status, body
    return body


async def test_cosmic_filters_a_list_by_its_record_date(cosmic_client: Any) -> None:
    everything = (await cosmic_items(cosmic_client, "labresults"))["items"]
    window = await cosmic_items(cosmic_client, "labresults", fromDate="2024-01-01", toDate="2024-12-31")
    expected = [r for r in everything if "2024-01-01" <= r["sampledAt"][:10] <= "2024-12-31"]
    assert 0 < len(expected) < len(everything)
    assert window["items"] == expected and window["totalCount"] == len(expected)
    since = await cosmic_items(cosmic_client, "labresults", fromDate="2026-01-01 00:00")
    assert since["items"] == [r for r in everything if r["sampledAt"] >= "2026-01-01"]


@pytest.mark.parametrize("kind", ["labresults", "notes", "diagnoses", "vaccinations"])
async def test_cosmic_yearly_windows_partition_a_list_of_moments(cosmic_client: Any, kind: str) -> None:
    everything = (await cosmic_items(cosmic_client, kind))["items"]
    ids = [
        r[next(iter(r))]
        for year in YEARS
        for r in (await cosmic_items(cosmic_client, kind, fromDate=f"{year}-01-01", toDate=f"{year}-12-31"))[
            "items"
        ]
    ]
    assert sorted(ids) == sorted(r[next(iter(r))] for r in everything)  # each once, none lost


async def test_cosmic_filters_lasting_records_by_their_period(cosmic_client: Any) -> None:
    everything = (await cosmic_items(cosmic_client, "medications"))["items"]
    window = (await cosmic_items(cosmic_client, "medications", fromDate="2024-06-01", toDate="2024-06-30"))[
        "items"
    ]
    expected = [
        m
        for m in everything
        if m["startDate"] <= "2024-06-30" and (m.get("endDate") is None or m["endDate"] >= "2024-06-01")
    ]
    assert window == expected and any(m.get("endDate") is None for m in window)
    assert any(m["startDate"] < "2024-06-01" for m in window)  # begun before, still going in it


async def test_cosmic_refuses_a_malformed_range_in_its_dialect(cosmic_client: Any) -> None:
    body = await cosmic_items(cosmic_client, "labresults", status=400, fromDate="01/02/2024")
    assert body["errorCode"] == "INVALID_PARAMETER"
    body = await cosmic_items(cosmic_client, "notes", status=400, fromDate="2024-02-01", toDate="2024-01-01")
    assert body["errorCode"] == "INVALID_PARAMETER"


async def test_cosmic_threat_register_takes_the_range_too(aiohttp_client: Any) -> None:
    client = await aiohttp_client(cosmic.create_app(list(pop.DEMO_PEOPLE)))
    path = f"{cosmic.BASE}/ambulance/patients/{pop.pnr_dash(pop.TOLVAN.pnr)}/threats"
    everything = (await (await client.get(path)).json())["items"]
    assert everything
    newest = max(t["registeredAt"] for t in everything)[:10]
    after = await (await client.get(path, params={"fromDate": newest})).json()
    assert after["items"] and all(t["registeredAt"] >= newest for t in after["items"])
    none = await (await client.get(path, params={"toDate": "1999-12-31"})).json()
    assert none == {"items": [], "totalCount": 0}


# ---- Viva ---------------------------------------------------------------------------------------


@pytest.fixture
async def viva_client(aiohttp_client: Any) -> Any:
    return await aiohttp_client(viva.create_app(PEOPLE, history=HISTORY))


async def viva_list(client: Any, kind: str, status: int = 200, **query: str) -> Any:
    resp = await client.get(f"{viva.BASE}/{kind}", params={"personnummer": PERSON.pnr, **query})
    body = await resp.json()
    assert resp.status == status, body
    return body if status != 200 else body[kind]


async def test_viva_filters_a_list_by_its_record_date(viva_client: Any) -> None:
    everything = await viva_list(viva_client, "anteckningar")
    window = await viva_list(viva_client, "anteckningar", fromDatum="20240101", tomDatum="20241231")
    expected = [n for n in everything if "20240101" <= n["datum"][:8] <= "20241231"]
    assert 0 < len(expected) < len(everything) and window == expected
    ids = [
        n["anteckningId"]
        for y in YEARS
        for n in await viva_list(viva_client, "anteckningar", fromDatum=f"{y}0101", tomDatum=f"{y}1231")
    ]
    assert sorted(ids) == sorted(n["anteckningId"] for n in everything)


async def test_viva_medication_list_keeps_the_ordinations_of_the_range_with_their_doses_in_it(
    viva_client: Any,
) -> None:
    everything = await viva_list(viva_client, "lakemedelslista")
    doses = [a for o in everything for a in o["administreringar"]]
    first = min(a["tidpunkt"] for a in doses)[:6]  # the month of the first dose
    window = await viva_list(viva_client, "lakemedelslista", fromDatum=f"{first}01", tomDatum=f"{first}28")
    assert window
    for o in window:
        assert o["startdatum"] <= f"{first}28" and (
            o["utsattDatum"] is None or o["utsattDatum"] >= f"{first}01"
        )
        assert all(f"{first}01" <= a["tidpunkt"][:8] <= f"{first}28" for a in o["administreringar"])
    kept = {a["administreringId"] for o in window for a in o["administreringar"]}
    assert kept == {a["administreringId"] for a in doses if f"{first}01" <= a["tidpunkt"][:8] <= f"{first}28"}
    assert 0 < len(kept) < len(doses)
    # the whole list is untouched by a filtered answer
    assert await viva_list(viva_client, "lakemedelslista") == everything


async def test_viva_refuses_a_malformed_range_in_its_dialect(viva_client: Any) -> None:
    body = await viva_list(viva_client, "hembesok", status=400, fromDatum="2024-13-01")
    assert body["fel"]["kod"] == "OGILTIGT_DATUM"


# ---- NPÖ ----------------------------------------------------------------------------------------


def contract(operation: str) -> npo.Contract:
    return next(c for c in npo.CONTRACTS if c.operation == operation)


def request(operation: str, start: str | None = None, end: str | None = None, element: str = "") -> str:
    """The contract's request; with a range, in its range element (``element``: another one)."""
    period = ""
    if start is not None or end is not None:
        name = element or contract(operation).period
        period = (
            f"<core:{name}>"
            + (f"<core:start>{start}</core:start>" if start is not None else "")
            + (f"<core:end>{end}</core:end>" if end is not None else "")
            + f"</core:{name}>"
        )
    return (
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
        'xmlns:add="urn:riv:itintegration:registry:1" xmlns:req="urn:x:req" xmlns:core="urn:x:core">'
        "<soapenv:Header><add:LogicalAddress>SE1</add:LogicalAddress></soapenv:Header><soapenv:Body>"
        f"<req:{operation}><req:patientId><core:id>{PERSON.pnr}</core:id><core:type>{npo.PNR_OID}</core:type>"
        f"</req:patientId>{period}</req:{operation}></soapenv:Body></soapenv:Envelope>"
    )


@pytest.fixture
async def npo_client(aiohttp_client: Any) -> Any:
    return await aiohttp_client(npo.create_app(PEOPLE, history=HISTORY))


async def npo_records(
    client: Any, operation: str, start: str | None = None, end: str | None = None
) -> list[Any]:
    c = contract(operation)
    resp = await client.post(c.path, data=request(operation, start, end))
    raw = await resp.read()
    assert resp.status == 200, raw[:300]
    found = parse_xml(raw)["Envelope"]["Body"][f"{operation}Response"].get(c.record, [])
    return found if isinstance(found, list) else [found]


async def test_npo_honours_time_period_by_sampling_time(npo_client: Any) -> None:
    everything = await npo_records(npo_client, "GetLaboratoryOrderOutcome")
    window = await npo_records(npo_client, "GetLaboratoryOrderOutcome", "20240101", "20241231")

    def sampled(r: dict[str, Any]) -> str:
        return str(r["laboratoryOrderOutcomeBody"]["analysis"]["analysisTime"]["start"])

    expected = [r for r in everything if "20240101" <= sampled(r)[:8] <= "20241231"]
    assert 0 < len(expected) < len(everything) and window == expected
    ids = [
        r["laboratoryOrderOutcomeHeader"]["documentId"]
        for y in YEARS
        for r in await npo_records(npo_client, "GetLaboratoryOrderOutcome", f"{y}0101", f"{y}1231")
    ]
    assert sorted(ids) == sorted(r["laboratoryOrderOutcomeHeader"]["documentId"] for r in everything)
    since = await npo_records(npo_client, "GetLaboratoryOrderOutcome", start="20260101000000")
    assert since == [r for r in everything if sampled(r) >= "20260101"]


async def test_npo_time_period_overlaps_lasting_records(npo_client: Any) -> None:
    everything = await npo_records(npo_client, "GetCareContacts")
    window = await npo_records(npo_client, "GetCareContacts", "20240301", "20240331")

    def period(r: dict[str, Any]) -> tuple[str, str]:
        p = r["careContactBody"]["careContactTimePeriod"]
        return p["start"], p.get("end") or "99999999"

    assert window == [
        r for r in everything if period(r)[0][:8] <= "20240331" and period(r)[1][:8] >= "20240301"
    ]
    notes = await npo_records(npo_client, "GetCareDocumentation", "20250101", "20250630")
    assert notes and all(
        "20250101" <= n["careDocumentationHeader"]["documentTime"][:8] <= "20250630" for n in notes
    )


async def test_npo_functional_status_honours_its_date_period_by_the_assessment_time(npo_client: Any) -> None:
    """GetFunctionalStatus 2 calls its range ``datePeriod`` and goes by ``documentTime`` (the time of
    the assessment), not by when it was registered (``authorTime``, here two mornings later)."""
    operation = "GetFunctionalStatus"
    everything = await npo_records(npo_client, operation)

    def times(r: dict[str, Any]) -> tuple[str, str]:
        h = r["functionalStatusAssessmentHeader"]
        return h["documentTime"], h["accountableHealthcareProfessional"]["authorTime"]

    assert everything and all(author[:8] > assessed[:8] for assessed, author in map(times, everything))
    day = times(everything[0])[0][:8]
    window = await npo_records(npo_client, operation, day, day)
    assert window == [r for r in everything if times(r)[0][:8] == day]
    assert all(times(r)[1][:8] != day for r in window)  # (by authorTime none of them is that day)
    c = contract(operation)
    # another contract's element is not this one's: the whole list
    other = await npo_client.post(c.path, data=request(operation, day, day, element="timePeriod"))
    found = parse_xml(await other.read())["Envelope"]["Body"][f"{operation}Response"][c.record]
    assert len(found if isinstance(found, list) else [found]) == len(everything)


async def test_npo_refuses_a_malformed_time_period_with_a_client_fault(npo_client: Any) -> None:
    c = contract("GetCareDocumentation")
    for start, end in (("2024-01-01x", None), ("20240201", "20240101")):
        resp = await npo_client.post(c.path, data=request("GetCareDocumentation", start, end))
        assert resp.status == 500
        fault = parse_xml(await resp.read())["Envelope"]["Body"]["Fault"]
        assert fault["faultcode"].endswith("Client") and "timePeriod" in fault["faultstring"]


async def test_a_range_outside_every_record_is_an_empty_answer_everywhere(
    cosmic_client: Any, viva_client: Any, npo_client: Any
) -> None:
    assert (await cosmic_items(cosmic_client, "labresults", toDate="1990-01-01"))["items"] == []
    assert await viva_list(viva_client, "hembesok", tomDatum="19900101") == []
    assert await npo_records(npo_client, "GetLaboratoryOrderOutcome", end="19900101") == []
