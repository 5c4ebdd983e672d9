"""A search's date range reaches the backends whose mappings declare one (``request.filters``): the
simulator is sent the range, widened to whole days, and the answer is the one the whole list gives
(the facade still filters after). Narrowed answers are their own fetches: never served from the
cache as the whole list, nor the other way round."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from proxy.simulators.harness import Received
from proxy.simulators.population import DEMO_PEOPLE, INGEGERD, LENNART
from tests.conftest import BASE, auth, pid

OBSERVATIONS = f"{BASE}/Observation"
LENNART_ID = pid(LENNART.pnr)
AS_LENNART = auth("patient", pnr=LENNART.pnr)

LAB_PATHS = {
    "cosmic": "/labresults",
    "viva": "/funktionsbedomningar",
    "npo": "/GetLaboratoryOrderOutcome/",
}


FUNCTIONAL = "/GetFunctionalStatus/"  # NPÖ's functional status: Observations too, narrowed by datePeriod


def asked(received: list[Received], backend: str) -> list[Received]:
    return [r for r in received if r.backend == backend and LAB_PATHS[backend] in r.path]


def narrowed(r: Received) -> bool:
    """The request carries a range: in its query, or in a RIVTA body (timePeriod, datePeriod)."""
    in_body = b"timePeriod" in r.body or b"datePeriod" in r.body
    return in_body or bool(r.query.keys() & {"fromDate", "toDate", "fromDatum", "tomDatum"})


def ids(bundle: dict[str, Any]) -> list[str]:
    return [e["resource"]["id"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


async def test_a_date_search_sends_its_range_to_each_backend_that_can_apply_it(facade: Any) -> None:
    received: list[Received] = []
    async with facade(received=received) as f:
        status, bundle = await f.get(
            OBSERVATIONS,
            params={"patient": LENNART_ID, "date": "ge2024-03-01"},
            headers=AS_LENNART,
        )
    assert status == 200, bundle
    (cosmic,) = asked(received, "cosmic")
    assert cosmic.query == {"fromDate": "2024-02-29"}  # a day wider: never narrower than FHIR's
    (viva,) = asked(received, "viva")
    assert viva.query == {"personnummer": LENNART.pnr, "fromDatum": "20240229"}
    (npo,) = asked(received, "npo")
    body = npo.body.decode()
    assert "<req:timePeriod><core:start>20240229</core:start><core:end>99981231</core:end>" in body
    (functional,) = [r for r in received if FUNCTIONAL in r.path]
    period = "<req:datePeriod><core:start>20240229</core:start><core:end>99981231</core:end>"
    assert period in functional.body.decode()


async def test_both_bounds_and_a_day_are_widened_by_a_day(facade: Any) -> None:
    received: list[Received] = []
    async with facade(received=received) as f:
        for date in (["ge2023-01-10", "lt2023-02-01"], ["eq2023-05-17"]):
            params = [("patient", LENNART_ID), *(("date", d) for d in date)]
            status, _ = await f.get(OBSERVATIONS, params=params, headers=AS_LENNART)
            assert status == 200
    first, second = asked(received, "cosmic")
    assert first.query == {"fromDate": "2023-01-09", "toDate": "2023-02-02"}  # (lt: by its day's end)
    assert second.query == {"fromDate": "2023-05-16", "toDate": "2023-05-18"}


@pytest.mark.parametrize(
    ("params", "why"),
    [
        ({"date": "ne2024-03-01"}, "ne bounds nothing"),
        ({"date": "ge2024-03-01,le2020-01-01"}, "an OR of open ranges is open"),
        ({"code": "urn:oid:1.2.752.108.1|NPU03230"}, "no date"),
    ],
)
async def test_a_search_without_a_bounding_range_asks_for_the_whole_list(
    facade: Any, params: dict[str, str], why: str
) -> None:
    received: list[Received] = []
    async with facade(received=received) as f:
        status, _ = await f.get(OBSERVATIONS, params={"patient": LENNART_ID, **params}, headers=AS_LENNART)
    assert status == 200
    (cosmic,) = asked(received, "cosmic")
    assert cosmic.query == {}, why
    assert not narrowed(asked(received, "npo")[0]), why
    assert not any(narrowed(r) for r in received if FUNCTIONAL in r.path), why


async def test_care_staff_everything_and_the_setting_off_ask_for_the_whole_list(facade: Any) -> None:
    """Under PDL the withheld hint is decided over every record of the type before any filter: a
    narrowed list would make it depend on the dates asked. $everything's _since is about changes."""
    for overrides, headers, path in (
        (None, auth("clinician"), OBSERVATIONS),  # care staff: under PDL
        ({"pushdown": False}, AS_LENNART, OBSERVATIONS),
        (None, AS_LENNART, f"{BASE}/Patient/{LENNART_ID}/$everything"),
    ):
        received: list[Received] = []
        async with facade(received=received, facade_overrides=overrides) as f:
            params = {"date": "ge2024-03-01"} if path == OBSERVATIONS else {"_since": "2024-03-01"}
            if path == OBSERVATIONS:
                params["patient"] = LENNART_ID
            status, bundle = await f.get(path, params=params, headers=headers)
        assert status == 200, bundle
        (cosmic,) = asked(received, "cosmic")
        assert cosmic.query == {}, (overrides, path)
        assert not any(narrowed(r) for r in received), (overrides, path)


async def test_the_patient_lookup_and_other_requests_stay_whole(facade: Any) -> None:
    received: list[Received] = []
    async with facade(received=received) as f:
        await f.get(OBSERVATIONS, params={"patient": LENNART_ID, "date": "ge2024-03-01"}, headers=AS_LENNART)
    others = [r for r in received if not any(p in r.path for p in (*LAB_PATHS.values(), FUNCTIONAL))]
    assert others  # (the lookups, and what the Observations reference)
    assert all(set(r.query) <= {"personnummer"} and not narrowed(r) for r in others)


async def test_a_functional_status_is_found_by_when_it_was_assessed_whether_narrowed_or_not(
    facade: Any,
) -> None:
    """NPÖ narrows GetFunctionalStatus by the time of the assessment (documentTime): the mapping must
    date the Observation by the same time, or a narrowed search would miss what the whole list finds.
    Lennart's washing (d510) was assessed three days before it was registered (authorTime)."""
    icf = {"code": "http://hl7.org/fhir/sid/icf|d510"}
    found: dict[bool, list[list[str]]] = {}
    for on in (True, False):
        async with facade(facade_overrides={"pushdown": on}) as f:
            params = {"patient": LENNART_ID, **icf}
            status, bundle = await f.get(OBSERVATIONS, params=params, headers=AS_LENNART)
            assert status == 200, bundle
            (padl,) = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "match"]
            assessed, registered = padl["effectiveDateTime"][:10], padl["issued"][:10]
            assert registered > assessed
            found[on] = []
            for day in (assessed, registered):
                params = {"patient": LENNART_ID, **icf, "date": f"eq{day}"}
                status, bundle = await f.get(OBSERVATIONS, params=params, headers=AS_LENNART)
                assert status == 200, bundle
                found[on].append(ids(bundle))
    assert found[True] == found[False] == [[padl["id"]], []]


async def test_everything_since_finds_an_assessment_registered_after_it_was_made(facade: Any) -> None:
    """``_since`` is about changes: an assessment made before it and registered after it is new."""
    async with facade() as f:
        params = {"patient": LENNART_ID, "code": "http://hl7.org/fhir/sid/icf|d510"}
        _, bundle = await f.get(OBSERVATIONS, params=params, headers=AS_LENNART)
        (padl,) = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "match"]
        since = (datetime.fromisoformat(padl["effectiveDateTime"]) + timedelta(days=1)).isoformat()
        assert since < padl["issued"]
        status, everything = await f.get(
            f"{BASE}/Patient/{LENNART_ID}/$everything", params={"_since": since}, headers=AS_LENNART
        )
    assert status == 200, everything
    assert padl["id"] in ids(everything)


DATE_SEARCHES = [
    ["ge2025-01-01"],
    ["le2018-06-30"],
    ["ge2021-03-01", "lt2021-04-15"],
    ["eq2023"],
    ["gt2024-06-30T23:30:00+00:00"],
    ["sa2025-06-01", "eb2025-09-01"],
    ["ge2026-01-01,le2017-01-01"],
]


async def test_a_long_history_answers_the_same_with_and_without_push_down(facade: Any) -> None:
    """Ingegerd Långberg: 6,000 records over the three systems; every page of each search equal."""
    patient, headers = pid(INGEGERD.pnr), auth("patient", pnr=INGEGERD.pnr)
    people = [*DEMO_PEOPLE, INGEGERD]
    answers: dict[bool, list[Any]] = {}
    sizes: dict[bool, int] = {}
    for on in (True, False):
        received: list[Received] = []
        async with facade(people=people, received=received, facade_overrides={"pushdown": on}) as f:
            got = []
            for dates in DATE_SEARCHES:
                params = [("patient", patient), ("_count", "500"), *(("date", d) for d in dates)]
                status, bundle = await f.get(OBSERVATIONS, params=params, headers=headers)
                assert status == 200, bundle
                # (the sources' outcomes carry their latency: the matches and the total compared)
                matches = [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]
                got.append((bundle["total"], matches))
            answers[on] = got
            sizes[on] = sum(1 for r in received if r.query.keys() & {"fromDate", "toDate"})
    assert answers[True] == answers[False]
    assert sum(total for total, _ in answers[True]) > 100  # (the searches find something)
    assert sizes[True] > 0 and sizes[False] == 0


async def test_a_narrowed_answer_is_never_served_from_the_cache_as_the_whole_list(facade: Any) -> None:
    """Each range is its own fetch, cached under its own key: a narrowed search after the whole
    list asks the backends again (the whole list would be correct but not provably the same fetch:
    we keep them apart), and the whole list after a narrowed one is never the narrowed answer."""
    received: list[Received] = []
    async with facade(received=received, cache=True) as f:
        narrow = {"patient": LENNART_ID, "date": "ge2026-01-01", "_count": "500"}
        whole = {"patient": LENNART_ID, "_count": "500"}
        _, narrowed = await f.get(OBSERVATIONS, params=narrow, headers=AS_LENNART)
        _, everything = await f.get(OBSERVATIONS, params=whole, headers=AS_LENNART)
        n = len(asked(received, "cosmic"))
        _, again = await f.get(OBSERVATIONS, params=narrow, headers=AS_LENNART)
        _, whole_again = await f.get(OBSERVATIONS, params=whole, headers=AS_LENNART)
        assert len(asked(received, "cosmic")) == n  # both from the cache, each its own entry
        _, other = await f.get(OBSERVATIONS, params={**narrow, "date": "ge2025-06-01"}, headers=AS_LENNART)
    assert [r.query for r in asked(received, "cosmic")] == [
        {"fromDate": "2025-12-31"},
        {},
        {"fromDate": "2025-05-31"},
    ]
    assert everything["total"] > narrowed["total"] > 0
    assert ids(again) == ids(narrowed) and ids(whole_again) == ids(everything)
    assert narrowed["total"] < other["total"] < everything["total"]
