"""A read by id (outside PDL) asks the backend its id names for the record's type — the days around
the record's date when this worker has mapped it before, else the whole list — and the others only
narrowed to the record's date; or nobody else, when the named backend does not hold it. The answer
is the one asking everyone gives (the leak suite holds hidden ids to made-up ones)."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.edge.http import FACADE_KEY
from proxy.fhir.ids import holding_backend
from proxy.simulators import npo
from proxy.simulators.harness import Received
from proxy.simulators.population import DEMO_PEOPLE, INGEGERD, LENNART, TOLVAN, at
from proxy.types import MappedResource
from tests.conftest import BASE, auth, pid
from tests.pushdown.test_date_pushdown import LAB_PATHS, OBSERVATIONS, asked, narrowed

LENNART_ID = pid(LENNART.pnr)
AS_LENNART = auth("patient", pnr=LENNART.pnr)
AS_TOLVAN = auth("patient", pnr=TOLVAN.pnr)
INGEGERD_ID = pid(INGEGERD.pnr)
AS_INGEGERD = auth("patient", pnr=INGEGERD.pnr)
LONG = [*DEMO_PEOPLE, INGEGERD]  # (her Observations come from all three systems)


async def observation_ids(f: Any, patient: str = LENNART_ID, headers: Any = AS_LENNART) -> dict[str, str]:
    """One Observation id per backend that holds one of the patient's."""
    params = {"patient": patient, "_count": "500", "date": "ge2026-06-01"}
    _, bundle = await f.get(OBSERVATIONS, params=params, headers=headers)
    out: dict[str, str] = {}
    for e in bundle["entry"]:
        if e["search"]["mode"] == "match":
            out.setdefault(holding_backend(e["resource"]["id"]), e["resource"]["id"])
    return out


async def test_a_read_asks_the_holder_for_the_days_around_the_record_and_the_others_narrowed(
    facade: Any,
) -> None:
    """The ids come from a search, which mapped the records: the holder is asked for its list of the
    days around the record's date (learnt then), the others narrowed to the record's date as well —
    and the answer is the one asking everyone whole gives."""
    received: list[Received] = []
    async with facade(received=received, people=LONG) as f:
        ids = await observation_ids(f, INGEGERD_ID, AS_INGEGERD)
        assert len(ids) == 3, ids
        answers = {}
        for backend, rid in ids.items():
            received.clear()
            status, answers[backend] = await f.get(f"{OBSERVATIONS}/{rid}", headers=AS_INGEGERD)
            assert status == 200 and answers[backend]["id"] == rid
            holder = asked(received, backend)
            assert len(holder) == 1 and narrowed(holder[0]), holder  # (found there: asked once)
            for other in set(LAB_PATHS) - {backend}:
                for r in asked(received, other):  # (narrowed to the record's date, a day either side)
                    assert narrowed(r), (backend, r)
    async with facade(facade_overrides={"pushdown": False}, people=LONG) as f:
        for backend, rid in ids.items():
            status, whole = await f.get(f"{OBSERVATIONS}/{rid}", headers=AS_INGEGERD)
            assert status == 200 and whole == answers[backend]  # the same answer, byte for byte


async def test_a_read_of_a_record_not_dated_here_asks_the_holder_whole(facade: Any) -> None:
    """An id this worker has not seen mapped (another worker's, or from before a restart): its holder
    is asked for the whole list, as the id does not say the record's date."""
    received: list[Received] = []
    async with facade(received=received, people=LONG) as f:
        rid = (await observation_ids(f, INGEGERD_ID, AS_INGEGERD))["cosmic"]
        dates = f.client.server.app[FACADE_KEY].record_dates
        assert dates is not None and dates.get(rid) is not None
        dates.forget()
        received.clear()
        status, body = await f.get(f"{OBSERVATIONS}/{rid}", headers=AS_INGEGERD)
        assert status == 200 and body["id"] == rid
        holder = asked(received, "cosmic")
        assert len(holder) == 1 and not narrowed(holder[0])


async def test_a_read_dated_wrongly_finds_the_record_in_the_whole_list(facade: Any) -> None:
    """The record moved to another date since it was mapped (or the hint is wrong): not in the
    narrowed list, it is looked for in the whole list — found, the same answer."""
    received: list[Received] = []
    async with facade(received=received, people=LONG) as f:
        rid = (await observation_ids(f, INGEGERD_ID, AS_INGEGERD))["cosmic"]
        _, right = await f.get(f"{OBSERVATIONS}/{rid}", headers=AS_INGEGERD)
        dates = f.client.server.app[FACADE_KEY].record_dates
        assert dates is not None
        resource = {"resourceType": "Observation", "id": rid}
        dates.learn([MappedResource(resource, "cosmic", "cosmic/labresults", "x", 0, (), clinical_time=0.0)])
        received.clear()
        status, body = await f.get(f"{OBSERVATIONS}/{rid}", headers=AS_INGEGERD)
        assert status == 200 and body == right
        holder = asked(received, "cosmic")
        assert [narrowed(r) for r in holder] == [True, False]  # the days around 1970, then whole


async def test_an_id_its_backend_does_not_hold_asks_nobody_else(facade: Any) -> None:
    received: list[Received] = []
    async with facade(received=received) as f:
        holder, rid = next(iter((await observation_ids(f)).items()))
        made_up = rid[:-4] + ("0000" if not rid.endswith("0000") else "1111")
        received.clear()
        status, body = await f.get(f"{OBSERVATIONS}/{made_up}", headers=AS_LENNART)
        assert status == 404, body
        assert received and {r.backend for r in received} == {holder}
        received.clear()
        status, _ = await f.get(
            f"{OBSERVATIONS}/{rid.replace(f'-{holder}-', '-nosuch-')}", headers=AS_LENNART
        )
        assert status == 404 and received == []


async def test_care_staff_reads_ask_every_backend(facade: Any) -> None:
    """Under PDL the 403 hint is decided over every record of the type: every backend is asked."""
    received: list[Received] = []
    async with facade(received=received) as f:
        rid = next(iter((await observation_ids(f)).values()))
        received.clear()
        status, _ = await f.get(f"{OBSERVATIONS}/{rid}", headers=auth("clinician"))
        assert status == 200
    assert {r.backend for r in received} == {"cosmic", "viva", "npo"}
    assert all(set(r.query) <= {"personnummer"} and not narrowed(r) for r in received)


async def test_a_read_of_a_record_whose_list_is_fresh_in_the_cache_asks_no_backend(facade: Any) -> None:
    """The hint narrows what is fetched; with the holder's whole list fresh in the cache nothing is."""
    received: list[Received] = []
    async with facade(received=received, cache=True) as f:
        status, _ = await f.get(f"{BASE}/Patient/{LENNART_ID}/$everything", headers=AS_LENNART)
        assert status == 200
        holder, rid = next(iter((await observation_ids(f)).items()))
        assert f.client.server.app[FACADE_KEY].record_dates.get(rid) is not None
        received.clear()
        status, body = await f.get(f"{OBSERVATIONS}/{rid}", headers=AS_LENNART)
        assert status == 200 and body["id"] == rid
        assert asked(received, holder) == []


async def test_a_hidden_record_dated_here_reads_as_an_id_nobody_holds(
    facade: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tolvan's NPÖ lab result not approved for the patient: mapped (and dated) when the patient's
    own ``$everything`` ran, never shown. Read by the patient it takes the hint's path — the holder
    asked for the days around it — and answers exactly as an id no backend holds: status, body,
    headers."""
    entry_of = npo.entry_of

    def with_hidden_lab(person: Any, *args: Any) -> Any:
        entry = entry_of(person, *args)
        if person.pnr == TOLVAN.pnr:
            hidden = npo.lab(
                TOLVAN.pnr,
                "HIDDEN-1",
                at(30, 8),
                "NPU02319",
                "B-Hb",
                141,
                "g/L",
                "134",
                "170",
                approved=False,
            )
            entry = {**entry, "laboratoryOrderOutcome": [hidden, *entry["laboratoryOrderOutcome"]]}
        return entry

    monkeypatch.setattr(npo, "entry_of", with_hidden_lab)
    received: list[Received] = []
    async with facade(received=received) as f:
        _, seen_by_staff = await f.get(
            f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything", headers=auth("clinician")
        )
        rid = next(
            e["resource"]["id"]
            for e in seen_by_staff["entry"]
            if "HIDDEN-1" in str(e["resource"].get("identifier", ""))
        )
        status, own = await f.get(f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything", headers=AS_TOLVAN)
        assert status == 200 and rid not in str(own)
        assert f.client.server.app[FACADE_KEY].record_dates.get(rid) is not None
        made_up = rid[:-4] + ("0000" if not rid.endswith("0000") else "1111")
        received.clear()
        hidden = await f.client.get(f"{OBSERVATIONS}/{rid}", headers=AS_TOLVAN)
        assert [narrowed(r) for r in asked(received, "npo")] == [True]  # (the hint's path)
        missing = await f.client.get(f"{OBSERVATIONS}/{made_up}", headers=AS_TOLVAN)
        assert hidden.status == missing.status == 404
        assert (await hidden.text()).replace(rid, "X") == (await missing.text()).replace(made_up, "X")
        assert set(hidden.headers) == set(missing.headers)


async def test_a_read_whose_holder_fails_when_asked_narrowed_is_503_never_absent(facade: Any) -> None:
    """The hint's narrowed ask of the holder fails: the read cannot say the record is gone — 503,
    naming the source — and the holder is not asked a second time for the whole list."""
    received: list[Received] = []
    async with facade(received=received, people=LONG) as f:
        rid = (await observation_ids(f, INGEGERD_ID, AS_INGEGERD))["cosmic"]
        await f.faults("cosmic", error_status=502)
        received.clear()
        status, body = await f.get(f"{OBSERVATIONS}/{rid}", headers=AS_INGEGERD)
        assert status == 503 and body["resourceType"] == "OperationOutcome", body
        assert [narrowed(r) for r in asked(received, "cosmic")] == [True]
