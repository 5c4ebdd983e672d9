"""The FHIR REST surface end to end: simulators → facade → HTTP, every answer validated with R4B."""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from proxy.fhir.params import SUPPORTED_TYPES
from proxy.merge.facts import ALSO_IN_SOURCE_SYSTEM
from proxy.simulators.population import DEMO_PEOPLE, GRETA, LENNART, SANNA, TOLVAN, UNKNOWN_PNR
from tests.conftest import BASE, pid, validate
from tests.source_status import statuses

PNR = "http://electronichealth.se/identifier/personnummer"
TOLVAN_ID = pid(TOLVAN.pnr)


def resources(bundle: dict[str, Any], mode: str = "match") -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == mode]


def link(bundle: dict[str, Any], relation: str) -> str | None:
    return next((lk["url"] for lk in bundle["link"] if lk["relation"] == relation), None)


def sources(resource: dict[str, Any]) -> set[str]:
    meta = resource["meta"]
    also = {t["code"] for t in meta.get("tag", []) if t["system"] == ALSO_IN_SOURCE_SYSTEM}
    return {meta["source"].rsplit(":", 1)[-1], *also}


# ---- metadata ------------------------------------------------------------------------------------


async def test_capability_statement_lists_what_the_mappings_produce(facade: Any) -> None:
    async with facade() as f:
        resp = await f.client.get(f"{BASE}/metadata")
        assert resp.status == 200
        assert resp.content_type == "application/fhir+json"
        cs = await resp.json(content_type=None)
    CapabilityStatement.model_validate(cs)
    rest = cs["rest"][0]["resource"]
    assert {r["type"] for r in rest} == {*SUPPORTED_TYPES, "Consent", "AuditEvent"}
    consent = next(r for r in rest if r["type"] == "Consent")
    assert {i["code"] for i in consent["interaction"]} == {"create", "read", "update", "search-type"}
    condition = next(r for r in rest if r["type"] == "Condition")
    assert {"patient", "code", "onset-date", "category"} <= {p["name"] for p in condition["searchParam"]}
    patient = next(r for r in rest if r["type"] == "Patient")
    assert patient["operation"][0]["name"] == "everything"


# ---- Patient -------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [f"{PNR}|191212121212", "191212121212", f"{PNR}|19121212-1212"])
async def test_patient_search_by_personnummer_finds_tolvan(facade: Any, value: str) -> None:
    async with facade() as f:
        status, bundle = await f.get(f"{BASE}/Patient", params={"identifier": value})
    assert status == 200
    Bundle.model_validate(bundle)
    assert bundle["total"] == 1
    (patient,) = resources(bundle)
    assert patient["id"] == TOLVAN_ID
    assert patient["name"][0]["family"] == "Tolvansson"
    assert sources(patient) == {"cosmic", "viva"}  # demographics from both, Cosmic's kept


async def test_patient_search_for_unknown_person_is_empty(facade: Any) -> None:
    async with facade() as f:
        status, bundle = await f.get(f"{BASE}/Patient", params={"identifier": f"{PNR}|{UNKNOWN_PNR}"})
    assert status == 200
    assert bundle["total"] == 0 and not resources(bundle)
    assert set(statuses(bundle).values()) == {"answered"}  # (no source holds him: still named)


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"identifier": f"{PNR}|191212121213"}, "not a valid personnummer"),
        ({"identifier": "http://example.org/mrn|191212121212"}, "system must be"),
        ({"identifier": f"{PNR}|"}, "needs a personnummer"),
        ({}, "exactly one"),
        ({"name": "Tolvan"}, "exactly one"),
        ({"identifier:text": "x"}, "Modifiers"),
        ({"_count": "-1", "identifier": "191212121212"}, "_count"),
    ],
)
async def test_bad_patient_searches_are_400_with_a_reason(
    facade: Any, params: dict[str, str], fragment: str
) -> None:
    async with facade() as f:
        status, body = await f.get(f"{BASE}/Patient", params=params)
    assert status == 400
    assert body["resourceType"] == "OperationOutcome"
    assert fragment in body["issue"][0]["diagnostics"]
    assert "191212121212" not in body["issue"][0]["diagnostics"]  # no identity numbers echoed


async def test_patient_read(facade: Any) -> None:
    async with facade() as f:
        status, patient = await f.get(f"{BASE}/Patient/{TOLVAN_ID}")
        assert status == 200
        validate(patient)
        assert patient["identifier"][0]["value"] == TOLVAN.pnr
        # known only to Viva
        status, greta = await f.get(f"{BASE}/Patient/{pid(GRETA.pnr)}")
        assert status == 200 and sources(greta) == {"viva"}
        # a valid personnummer nobody knows, an id that is not ours, an id with bad characters
        assert (await f.get(f"{BASE}/Patient/{pid(UNKNOWN_PNR)}"))[0] == 404
        assert (await f.get(f"{BASE}/Patient/aaaaaaaaaaaaaaaaaaaaaaaaaa"))[0] == 404
        status, body = await f.get(f"{BASE}/Patient/not_an%20id")
        assert status == 400 and body["resourceType"] == "OperationOutcome"


# ---- $everything ---------------------------------------------------------------------------------


@pytest.mark.parametrize("person", DEMO_PEOPLE, ids=lambda p: p.given)
async def test_everything_validates_for_every_demo_patient(facade: Any, person: Any) -> None:
    async with facade() as f:
        status, bundle = await f.get(
            f"{BASE}/Patient/{pid(person.pnr)}/$everything", params={"_count": "500"}
        )
    assert status == 200
    Bundle.model_validate(bundle)
    found = resources(bundle)
    assert bundle["total"] == len(found) > 0
    assert set(statuses(bundle).values()) == {"answered"}  # every source named, none degraded
    for r in found:
        validate(r)
        assert r["id"].startswith(pid(person.pnr))
        ref = r.get("subject", r.get("patient", {})).get("reference")
        assert r["resourceType"] == "Patient" or ref == f"Patient/{pid(person.pnr)}"
    assert found[0]["resourceType"] == "Patient"
    ids = [r["id"] for r in found]
    assert len(ids) == len(set(ids))


async def test_everything_for_tolvan_merges_three_sources(facade: Any) -> None:
    async with facade() as f:
        _, bundle = await f.get(f"{BASE}/Patient/{TOLVAN_ID}/$everything", params={"_count": "500"})
    found = resources(bundle)
    by_source = {s for r in found for s in sources(r)}
    assert by_source == {"cosmic", "viva", "npo"}
    types = {r["resourceType"] for r in found}
    assert {
        "Flag",
        "AllergyIntolerance",
        "Condition",
        "CarePlan",
        "Observation",
        "DocumentReference",
    } <= types
    # the hypertension held by Cosmic and copied to NPÖ appears once, with both sources
    hypertension = [
        r for r in found if r["resourceType"] == "Condition" and r["code"]["coding"][0]["code"] == "I10"
    ]
    assert len(hypertension) == 1
    assert sources(hypertension[0]) == {"cosmic", "npo"}
    assert hypertension[0]["meta"]["source"].endswith("cosmic")
    # the NPÖ note not approved for the patient is labelled for the policy, nullified notes are gone
    notes = [r for r in found if r["resourceType"] == "DocumentReference"]
    nopat = [n for n in notes if any(s["code"] == "NOPAT" for s in n["meta"].get("security", []))]
    texts = [base64.b64decode(n["content"][0]["attachment"]["data"]).decode() for n in nopat]
    assert len(texts) == 1 and "Misstänkt malignitet, ej delgivet patienten" in texts[0]
    assert "MAKULERAD" not in str(bundle)


async def test_everything_order_is_documented_and_stable(facade: Any) -> None:
    async with facade() as f:
        _, first = await f.get(f"{BASE}/Patient/{pid(LENNART.pnr)}/$everything", params={"_count": "500"})
        _, second = await f.get(f"{BASE}/Patient/{pid(LENNART.pnr)}/$everything", params={"_count": "500"})
    a, b = resources(first), resources(second)
    assert [r["id"] for r in a] == [r["id"] for r in b]
    types = [r["resourceType"] for r in a]
    assert types[0] == "Patient" and types[1:] == sorted(types[1:])
    obs = [r for r in a if r["resourceType"] == "Observation" and "effectiveDateTime" in r]
    from proxy.timeutil import fhir_range

    times = [fhir_range(o["effectiveDateTime"])[0] for o in obs]
    assert times == sorted(times, reverse=True)


async def test_everything_type_since_and_unknown(facade: Any) -> None:
    async with facade() as f:
        _, bundle = await f.get(f"{BASE}/Patient/{TOLVAN_ID}/$everything", params={"_type": "Condition,Flag"})
        assert {r["resourceType"] for r in resources(bundle)} == {"Condition", "Flag"}
        _, recent = await f.get(
            f"{BASE}/Patient/{TOLVAN_ID}/$everything", params={"_since": "2025-01-01T00:00:00+01:00"}
        )
        from proxy.timeutil import fhir_range

        cutoff = fhir_range("2025-01-01T00:00:00+01:00")[0]
        for r in resources(recent):
            updated = r["meta"].get("lastUpdated")
            assert updated is None or fhir_range(updated)[0] >= cutoff
        _, everything = await f.get(f"{BASE}/Patient/{TOLVAN_ID}/$everything", params={"_count": "500"})
        assert 0 < recent["total"] < everything["total"]
        status, body = await f.get(f"{BASE}/Patient/{TOLVAN_ID}/$everything", params={"_type": "Foo"})
        assert status == 400 and "Foo" in body["issue"][0]["diagnostics"]
        assert (await f.get(f"{BASE}/Patient/{TOLVAN_ID}/$everything", params={"_since": "yesterday"}))[
            0
        ] == 400
        assert (await f.get(f"{BASE}/Patient/{pid(UNKNOWN_PNR)}/$everything"))[0] == 404


# ---- type searches -------------------------------------------------------------------------------


@pytest.mark.parametrize("rtype", sorted(SUPPORTED_TYPES - {"Patient"}))
async def test_search_every_type_by_patient(facade: Any, rtype: str) -> None:
    async with facade() as f:
        totals = {}
        for person in DEMO_PEOPLE:
            status, bundle = await f.get(
                f"{BASE}/{rtype}", params={"patient": pid(person.pnr), "_count": "500"}
            )
            assert status == 200
            Bundle.model_validate(bundle)
            for r in resources(bundle):
                assert r["resourceType"] == rtype
                validate(r)
            totals[person.given] = bundle["total"]
    assert sum(totals.values()) > 0, f"no demo patient has any {rtype}"


async def test_patient_reference_forms_are_equivalent(facade: Any) -> None:
    async with facade() as f:
        totals = set()
        for params in (
            {"patient": TOLVAN_ID},
            {"patient": f"Patient/{TOLVAN_ID}"},
            {"subject": f"Patient/{TOLVAN_ID}"},
            {"patient": f"http://localhost{BASE}/Patient/{TOLVAN_ID}"},
        ):
            status, bundle = await f.get(f"{BASE}/Condition", params=params)
            assert status == 200
            totals.add(bundle["total"])
    assert totals == {3}


async def test_token_search_code_and_category(facade: Any) -> None:
    icd = "urn:oid:1.2.752.116.1.1.1.1.3"
    async with facade() as f:
        _, by_code = await f.get(f"{BASE}/Condition", params={"patient": TOLVAN_ID, "code": f"{icd}|I10"})
        assert [r["code"]["coding"][0]["code"] for r in resources(by_code)] == ["I10"]
        _, plain = await f.get(f"{BASE}/Condition", params={"patient": TOLVAN_ID, "code": "I10,J45.9"})
        assert sorted(r["code"]["coding"][0]["code"] for r in resources(plain)) == ["I10", "J45.9"]
        _, wrong_system = await f.get(
            f"{BASE}/Condition", params={"patient": TOLVAN_ID, "code": "http://snomed.info/sct|I10"}
        )
        assert wrong_system["total"] == 0
        _, labs = await f.get(
            f"{BASE}/Observation",
            params={"patient": pid(LENNART.pnr), "category": "laboratory", "_count": "500"},
        )
        _, survey = await f.get(
            f"{BASE}/Observation", params={"patient": pid(LENNART.pnr), "category": "survey", "_count": "500"}
        )
        _, every = await f.get(f"{BASE}/Observation", params={"patient": pid(LENNART.pnr), "_count": "500"})
    assert labs["total"] >= 30 and survey["total"] >= 1
    assert labs["total"] + survey["total"] == every["total"]
    for r in resources(labs):
        assert any(c["code"] == "laboratory" for cat in r["category"] for c in cat["coding"])


async def test_date_search_with_prefixes(facade: Any) -> None:
    from proxy.timeutil import fhir_range

    patient = pid(LENNART.pnr)
    async with facade() as f:
        _, every = await f.get(
            f"{BASE}/Observation", params={"patient": patient, "category": "laboratory", "_count": "500"}
        )
        dates = sorted(fhir_range(r["effectiveDateTime"])[0] for r in resources(every))
        # a cut between two distinct days
        cut_day = next(
            r["effectiveDateTime"][:10]
            for r in resources(every)
            if fhir_range(r["effectiveDateTime"])[0] > dates[0]
        )
        _, ge = await f.get(
            f"{BASE}/Observation",
            params={"patient": patient, "category": "laboratory", "date": f"ge{cut_day}", "_count": "500"},
        )
        _, lt = await f.get(
            f"{BASE}/Observation",
            params={"patient": patient, "category": "laboratory", "date": f"lt{cut_day}", "_count": "500"},
        )
        _, both = await f.get(
            f"{BASE}/Observation",
            params=[
                ("patient", patient),
                ("date", f"ge{cut_day}"),
                ("date", f"le{cut_day}"),
                ("category", "laboratory"),
            ],
        )
        _, eq = await f.get(
            f"{BASE}/Observation", params={"patient": patient, "category": "laboratory", "date": cut_day}
        )
        status, bad = await f.get(f"{BASE}/Observation", params={"patient": patient, "date": "ge2024-13-01"})
        status_ap, _ = await f.get(f"{BASE}/Observation", params={"patient": patient, "date": "ap2024"})
    start = fhir_range(cut_day)[0]
    assert ge["total"] + lt["total"] == every["total"]
    assert all(fhir_range(r["effectiveDateTime"])[0] >= start for r in resources(ge))
    assert all(fhir_range(r["effectiveDateTime"])[0] < start for r in resources(lt))
    assert both["total"] == eq["total"] > 0
    assert all(r["effectiveDateTime"].startswith(cut_day) for r in resources(eq))
    assert status == 400 and "not a FHIR date" in bad["issue"][0]["diagnostics"]
    assert status_ap == 400


@pytest.mark.parametrize(
    ("path", "params", "status"),
    [
        ("/Condition", {}, 400),  # the patient is required
        ("/Condition", {"patient": f"Patient/{TOLVAN_ID},Patient/{TOLVAN_ID}"}, 400),
        ("/Condition", {"patient": f"Encounter/{TOLVAN_ID}"}, 400),
        ("/Condition", {"patient": TOLVAN_ID, "code:not": "I10"}, 400),  # ignoring :not would invert it
        ("/Condition", {"patient": TOLVAN_ID, "code": ""}, 400),
        ("/Condition", {"patient": TOLVAN_ID, "_count": "ten"}, 400),
        ("/Condition", {"patient": TOLVAN_ID, "_summary": "text"}, 400),
        ("/Condition", {"patient": TOLVAN_ID, "onset-date": "gq2020"}, 400),
        ("/Basic", {"patient": TOLVAN_ID}, 404),
        ("/Condition", {"patient": TOLVAN_ID, "_format": "xml"}, 406),
        ("/Encounter", {"patient": TOLVAN_ID, "_include": "Encounter:reason-reference"}, 400),
        ("/Condition", {"patient": TOLVAN_ID, "_revinclude": "Encounter:reason-reference"}, 400),
        ("/Condition", {"patient": TOLVAN_ID, "_has:Encounter:reason-reference:status": "finished"}, 400),
    ],
)
async def test_bad_searches(facade: Any, path: str, params: dict[str, str], status: int) -> None:
    async with facade() as f:
        got, body = await f.get(BASE + path, params=params)
    assert got == status
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["diagnostics"]


async def test_unknown_parameters_are_ignored_unless_strict(facade: Any) -> None:
    async with facade() as f:
        status, lenient = await f.get(f"{BASE}/Condition", params={"patient": TOLVAN_ID, "foo": "bar"})
        assert status == 200 and lenient["total"] == 3
        assert "foo" not in link(lenient, "self")  # the self link shows what was applied
        status, strict = await f.get(
            f"{BASE}/Condition",
            params={"patient": TOLVAN_ID, "foo": "bar"},
            headers={"Prefer": "handling=strict"},
        )
    assert status == 400 and "foo" in strict["issue"][0]["diagnostics"]


async def test_search_with_an_id_that_is_not_ours_is_empty(facade: Any) -> None:
    async with facade() as f:
        status, bundle = await f.get(f"{BASE}/Condition", params={"patient": "aaaaaaaaaaaaaaaaaaaaaaaaaa"})
    assert status == 200 and bundle["total"] == 0


# ---- paging --------------------------------------------------------------------------------------


async def test_paging_walks_every_match_exactly_once(facade: Any) -> None:
    patient = pid(LENNART.pnr)
    async with facade() as f:
        _, whole = await f.get(f"{BASE}/Observation", params={"patient": patient, "_count": "500"})
        expected = [r["id"] for r in resources(whole)]
        assert len(expected) > 25
        seen: list[str] = []
        _, page = await f.get(f"{BASE}/Observation", params={"patient": patient, "_count": "7"})
        pages = 0
        while True:
            pages += 1
            assert pages <= 20
            assert page["total"] == len(expected)
            batch = [r["id"] for r in resources(page)]
            nxt = link(page, "next")
            assert len(batch) == 7 or nxt is None  # only the last page may be short
            seen.extend(batch)
            if nxt is None:
                break
            url = urlsplit(nxt)
            assert url.path == f"{BASE}/Observation"
            assert ("_count", "7") in parse_qsl(url.query)
            _, page = await f.get(url.path, params=parse_qsl(url.query))
        assert link(page, "previous") is not None
        last = urlsplit(link(page, "last") or "")
        _, last_page = await f.get(last.path, params=parse_qsl(last.query))
    assert seen == expected
    assert pages == -(-len(expected) // 7)
    assert [r["id"] for r in resources(last_page)] == expected[(pages - 1) * 7 :]


async def test_everything_pages_too(facade: Any) -> None:
    async with facade() as f:
        _, first = await f.get(f"{BASE}/Patient/{TOLVAN_ID}/$everything", params={"_count": "5"})
        nxt = urlsplit(link(first, "next") or "")
        assert nxt.path == f"{BASE}/Patient/{TOLVAN_ID}/$everything"
        _, second = await f.get(nxt.path, params=parse_qsl(nxt.query))
    assert len(resources(first)) == len(resources(second)) == 5
    assert not {r["id"] for r in resources(first)} & {r["id"] for r in resources(second)}


async def test_summary_count_and_count_zero(facade: Any) -> None:
    async with facade() as f:
        _, counted = await f.get(
            f"{BASE}/Observation", params={"patient": pid(LENNART.pnr), "_summary": "count"}
        )
        _, zero = await f.get(f"{BASE}/Observation", params={"patient": pid(LENNART.pnr), "_count": "0"})
        _, capped = await f.get(
            f"{BASE}/Observation", params={"patient": pid(LENNART.pnr), "_count": "100000"}
        )
    assert counted["total"] == zero["total"] > 25
    assert not resources(counted) and not resources(zero)
    assert statuses(counted) == statuses(zero) and set(statuses(zero).values()) == {"answered"}
    assert ("_count", "500") in parse_qsl(urlsplit(link(capped, "self") or "").query)


# ---- read by id ----------------------------------------------------------------------------------


async def test_read_every_resource_of_everything_by_id(facade: Any) -> None:
    async with facade() as f:
        _, bundle = await f.get(f"{BASE}/Patient/{TOLVAN_ID}/$everything", params={"_count": "500"})
        for entry in bundle["entry"]:
            if entry["search"]["mode"] == "outcome":
                continue
            r = entry["resource"]
            status, read = await f.get(f"{BASE}/{r['resourceType']}/{r['id']}")
            assert status == 200, entry["fullUrl"]
            assert read == r
            assert entry["fullUrl"].endswith(f"{BASE}/{r['resourceType']}/{r['id']}")
        condition = next(
            e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Condition"
        )
        assert (await f.get(f"{BASE}/Condition/{condition['id'][:-1]}0"))[0] in (404,)
        assert (await f.get(f"{BASE}/Flag/{condition['id']}"))[0] == 404  # right id, wrong type
        assert (await f.get(f"{BASE}/Condition/{pid(SANNA.pnr)}-cosmic-0000000000000000"))[0] == 404


# ---- HTTP protocol -------------------------------------------------------------------------------


async def test_content_negotiation_methods_and_media_types(facade: Any) -> None:
    async with facade() as f:
        c = f.client
        ok = await c.get(f"{BASE}/Patient/{TOLVAN_ID}", headers={"Accept": "application/fhir+json"})
        assert ok.status == 200 and ok.headers["Content-Type"].startswith("application/fhir+json")
        assert ok.headers["Cache-Control"] == "no-store"
        assert (await c.get(f"{BASE}/metadata", headers={"Accept": "text/html, */*;q=0.1"})).status == 200
        xml = await c.get(f"{BASE}/Patient/{TOLVAN_ID}", headers={"Accept": "application/fhir+xml"})
        assert xml.status == 406
        assert (await xml.json(content_type=None))["resourceType"] == "OperationOutcome"
        put = await c.put(f"{BASE}/Patient/{TOLVAN_ID}", json={})
        assert put.status == 405 and "GET" in put.headers["Allow"]
        wrong_type = await c.post(f"{BASE}/Condition/_search", json={"patient": TOLVAN_ID})
        assert wrong_type.status == 415
        form = await c.post(f"{BASE}/Condition/_search", data={"patient": TOLVAN_ID, "code": "I10"})
        assert form.status == 200 and (await form.json(content_type=None))["total"] == 1
        missing = await c.get("/nothing-here")
        assert missing.status == 404
        assert (await missing.json(content_type=None))["resourceType"] == "OperationOutcome"
        pretty = await c.get(f"{BASE}/Patient/{TOLVAN_ID}", params={"_pretty": "true"})
        assert b"\n  " in await pretty.read()
