"""The Cosmic simulator over HTTP: its dialect, its data, and fault injection (proxy.simulators.faults)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import asdict
from typing import Any

import aiohttp
import pytest

from proxy.simulators import cosmic
from proxy.simulators import population as pop
from proxy.simulators.faults import Faults

BASE = "/cosmic/api/v1"
GENERATED = 12
TOLVAN = pop.pnr_dash(pop.TOLVAN.pnr)
LENNART = pop.pnr_dash(pop.LENNART.pnr)
TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}$")
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
TIMESTAMP_FIELDS = (
    "diagnosedAt",
    "resolvedAt",
    "changedAt",
    "validFrom",
    "validTo",
    "sampledAt",
    "resultAt",
    "startAt",
    "endAt",
    "signedAt",
    "administeredAt",
    "registeredAt",
)
DATE_FIELDS = ("startDate", "endDate")


def people() -> list[pop.Person]:
    return pop.population(GENERATED)


def cosmic_people() -> list[pop.Person]:
    return [p for p in people() if p.in_cosmic]


@pytest.fixture
async def client(aiohttp_client: Any) -> Any:
    return await aiohttp_client(cosmic.create_app(people()))


async def get_json(client: Any, path: str, status: int = 200) -> Any:
    resp = await client.get(path)
    assert resp.status == status, (path, resp.status, await resp.text())
    return await resp.json()


# ---- the dialect --------------------------------------------------------------------------------


async def test_patient_at_bare_path_with_dashed_pnr(client: Any) -> None:
    body = await get_json(client, f"{BASE}/patients/{TOLVAN}")
    assert body["personalIdentityNumber"] == "19121212-1212"
    assert (body["firstName"], body["lastName"], body["sex"]) == ("Tolvan", "Tolvansson", "M")
    assert body["dateOfBirth"] == "1912-12-12"
    assert body["protectedIdentity"] is False
    assert TIMESTAMP.match(body["lastChanged"])
    assert body["patientId"].startswith("CP-")


async def test_protected_identity_flag(client: Any) -> None:
    body = await get_json(client, f"{BASE}/patients/{pop.pnr_dash(pop.SANNA.pnr)}")
    assert body["protectedIdentity"] is True


async def test_undashed_pnr_is_not_found(client: Any) -> None:
    body = await get_json(client, f"{BASE}/patients/{pop.TOLVAN.pnr}", status=404)
    assert body["errorCode"] == "PATIENT_NOT_FOUND"


@pytest.mark.parametrize("kind", cosmic.KINDS)
async def test_lists_have_cosmic_envelope(client: Any, kind: str) -> None:
    for person in cosmic_people():
        dash = pop.pnr_dash(person.pnr)
        patient = await get_json(client, f"{BASE}/patients/{dash}")
        body = await get_json(client, f"{BASE}/patients/{dash}/{kind}")
        assert set(body) == {"patientId", "items", "totalCount"}
        assert body["patientId"] == patient["patientId"]
        assert isinstance(body["items"], list)
        assert body["totalCount"] == len(body["items"])


@pytest.mark.parametrize(
    "path",
    [
        f"{BASE}/patients/{pop.pnr_dash(pop.UNKNOWN_PNR)}",
        f"{BASE}/patients/{pop.pnr_dash(pop.UNKNOWN_PNR)}/diagnoses",
        f"{BASE}/patients/{pop.pnr_dash(pop.UNKNOWN_PNR)}/labresults",
        f"{BASE}/ambulance/patients/{pop.pnr_dash(pop.UNKNOWN_PNR)}/threats",
        # Greta is known only to the municipality
        f"{BASE}/patients/{pop.pnr_dash(pop.GRETA.pnr)}",
        f"{BASE}/patients/{pop.pnr_dash(pop.GRETA.pnr)}/medications",
    ],
)
async def test_unknown_patient_is_404_patient_not_found(client: Any, path: str) -> None:
    body = await get_json(client, path, status=404)
    assert body["errorCode"] == "PATIENT_NOT_FOUND"
    assert body["status"] == 404


async def test_unknown_kind_is_404_resource_not_found(client: Any) -> None:
    body = await get_json(client, f"{BASE}/patients/{TOLVAN}/prescriptions", status=404)
    assert body["errorCode"] == "RESOURCE_NOT_FOUND"
    # the threat register is not a patient resource: only the ambulance module serves it
    body = await get_json(client, f"{BASE}/patients/{TOLVAN}/threats", status=404)
    assert body["errorCode"] == "RESOURCE_NOT_FOUND"


async def test_timestamps_are_local_minutes_and_dates_plain(client: Any) -> None:
    seen = 0
    for person in cosmic_people():
        dash = pop.pnr_dash(person.pnr)
        lists = [await get_json(client, f"{BASE}/patients/{dash}/{kind}") for kind in cosmic.KINDS]
        lists.append(await get_json(client, f"{BASE}/ambulance/patients/{dash}/threats"))
        for body in lists:
            for item in body["items"]:
                for key in TIMESTAMP_FIELDS:
                    if item.get(key) is not None:
                        assert TIMESTAMP.match(item[key]), (key, item[key])
                        seen += 1
                for key in DATE_FIELDS:
                    if item.get(key) is not None:
                        assert DATE.match(item[key]), (key, item[key])
    assert seen > 100


async def test_decimals_use_a_comma(client: Any) -> None:
    body = await get_json(client, f"{BASE}/patients/{TOLVAN}/labresults")
    kalium = next(i for i in body["items"] if i["resultId"] == "L-400002")
    assert (kalium["resultValue"], kalium["referenceLow"], kalium["referenceHigh"]) == ("4,1", "3,5", "4,4")
    commas = 0
    for person in cosmic_people():
        labs = await get_json(client, f"{BASE}/patients/{pop.pnr_dash(person.pnr)}/labresults")
        for item in labs["items"]:
            for key in ("resultValue", "referenceLow", "referenceHigh"):
                assert isinstance(item[key], str)
                assert "." not in item[key]
                assert re.match(r"^\d+(,\d+)?$", item[key]), item[key]
                commas += "," in item[key]
    assert commas > 10


async def test_status_codes_are_cosmic_own(client: Any) -> None:
    allowed = {
        "diagnoses": {"ACT", "INACT", "RES"},
        "medications": {"ACTIVE", "ENDED"},
        "labresults": {"FINAL", "PRELIMINARY"},
        "notes": {"SIGNED", "UNSIGNED"},
    }
    for person in cosmic_people():
        for kind, states in allowed.items():
            body = await get_json(client, f"{BASE}/patients/{pop.pnr_dash(person.pnr)}/{kind}")
            assert {i["state"] for i in body["items"]} <= states


async def test_tolvan_alerts_mix_kinds_in_one_list(client: Any) -> None:
    body = await get_json(client, f"{BASE}/patients/{TOLVAN}/alerts")
    kinds = {i["alertId"]: i["alertKind"] for i in body["items"]}
    assert kinds == {"A-300001": "CARE_LIMITATION", "A-300002": "HYPERSENSITIVITY"}


async def test_threats_at_the_ambulance_path(client: Any) -> None:
    body = await get_json(client, f"{BASE}/ambulance/patients/{TOLVAN}/threats")
    assert body["totalCount"] == 1
    (threat,) = body["items"]
    assert threat["threatId"] == "T-800001"
    assert threat["category"] == "HOT"
    assert threat["registeredBy"]["unitHsaId"] == pop.UNITS["ambulans-city"][0]  # the crew's station
    assert TIMESTAMP.match(threat["registeredAt"])
    none = await get_json(client, f"{BASE}/ambulance/patients/{LENNART}/threats")
    assert none["items"] == [] and none["totalCount"] == 0


async def test_generated_patients_are_deterministic(aiohttp_client: Any) -> None:
    assert pop.generated_people(5) == pop.generated_people(GENERATED)[:5]
    assert pop.generated_people(5) != pop.generated_people(5, seed=pop.DEFAULT_SEED + 1)
    first = await aiohttp_client(cosmic.create_app(people()))
    second = await aiohttp_client(cosmic.create_app(people()))
    smaller = await aiohttp_client(cosmic.create_app(pop.population(5)))
    for i, person in enumerate(pop.generated_people(GENERATED)):
        dash = pop.pnr_dash(person.pnr)
        assert await get_json(first, f"{BASE}/patients/{dash}") == await get_json(
            second, f"{BASE}/patients/{dash}"
        )
        for kind in cosmic.KINDS:
            a = await get_json(first, f"{BASE}/patients/{dash}/{kind}")
            b = await get_json(second, f"{BASE}/patients/{dash}/{kind}")
            assert a == b
            if i < 5:  # a patient's records do not depend on how many others were generated
                c = await get_json(smaller, f"{BASE}/patients/{dash}/{kind}")
                assert c["items"] == a["items"]
        assert (await get_json(first, f"{BASE}/patients/{dash}/diagnoses"))["items"]


# ---- fault injection (shared code in proxy/simulators/faults.py) --------------------------------

FAULTS = "/_sim/faults"
LABS = f"{BASE}/patients/{TOLVAN}/labresults"


async def put_faults(client: Any, settings: dict[str, Any], method: str = "PUT") -> dict[str, Any]:
    resp = await client.request(method, FAULTS, json=settings)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def test_control_endpoint_get_put_patch_delete(client: Any) -> None:
    assert await get_json(client, FAULTS) == asdict(Faults())
    after_put = await put_faults(client, {"latency_ms": 5, "error_status": 503})
    assert after_put["latency_ms"] == 5 and after_put["error_status"] == 503
    assert await get_json(client, FAULTS) == after_put
    # PUT replaces: fields left out go back to their defaults
    replaced = await put_faults(client, {"malformed": True})
    assert replaced == asdict(Faults(malformed=True))
    # PATCH changes only the fields given
    patched = await put_faults(client, {"latency_ms": 7}, method="PATCH")
    assert patched == asdict(Faults(malformed=True, latency_ms=7))
    assert await get_json(client, FAULTS) == patched
    resp = await client.delete(FAULTS)
    assert resp.status == 200
    assert await resp.json() == asdict(Faults())
    assert await get_json(client, FAULTS) == asdict(Faults())
    assert await get_json(client, "/_sim/health") == {"status": "up"}


@pytest.mark.parametrize(
    "settings",
    [
        {"nonsense": 1},
        {"latency_ms": -1},
        {"latency_ms": "slow"},
        {"latency_ms": 600_001},
        {"error_status": 200},
        {"error_status": 600},
        {"error_status": "503"},
        {"rate": 1.5},
        {"rate": -0.1},
        {"hang_s": -1},
        {"hang_s": 3601},
        {"oversize_bytes": -5},
        {"malformed": "yes"},
        {"hang": 1},
        {"drop": None},
        {"path_contains": 5},
        {"latency_ms": True},
        {"oversize_bytes": True},
        "not an object",
        [],
        None,
        0,
    ],
)
@pytest.mark.parametrize("method", ["PUT", "PATCH"])
async def test_invalid_fault_settings_are_400(client: Any, settings: Any, method: str) -> None:
    before = await get_json(client, FAULTS)
    resp = await client.request(method, FAULTS, json=settings)
    assert resp.status == 400
    assert "error" in await resp.json()
    assert await get_json(client, FAULTS) == before


async def test_body_that_is_not_json_is_400(client: Any) -> None:
    resp = await client.put(FAULTS, data=b"{latency_ms: 5", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert await get_json(client, FAULTS) == asdict(Faults())


async def test_latency_delays_the_answer(client: Any) -> None:
    await put_faults(client, {"latency_ms": 250})
    start = time.monotonic()
    body = await get_json(client, LABS)
    elapsed = time.monotonic() - start
    assert elapsed >= 0.25
    assert body["totalCount"] == 4  # latency alone does not change the answer


async def test_latency_does_not_delay_the_control_endpoint(client: Any) -> None:
    await put_faults(client, {"latency_ms": 60_000})
    await asyncio.wait_for(get_json(client, FAULTS), timeout=10)


async def test_error_status_answers_in_cosmic_dialect(client: Any) -> None:
    await put_faults(client, {"error_status": 503})
    for path in (LABS, f"{BASE}/patients/{TOLVAN}", f"{BASE}/ambulance/patients/{TOLVAN}/threats"):
        resp = await client.get(path)
        assert resp.status == 503
        body = await resp.json()
        assert body["errorCode"] == "SERVER_ERROR"
        assert body["status"] == 503
    await client.delete(FAULTS)
    assert (await get_json(client, LABS))["totalCount"] == 4


async def test_initial_faults_from_config(aiohttp_client: Any) -> None:
    client = await aiohttp_client(cosmic.create_app(people(), Faults(error_status=502)))
    resp = await client.get(LABS)
    assert resp.status == 502
    assert (await resp.json())["errorCode"] == "SERVER_ERROR"


async def test_malformed_body_is_not_json(client: Any) -> None:
    await put_faults(client, {"malformed": True})
    resp = await client.get(LABS)
    assert resp.status == 200
    raw = await resp.read()
    assert raw
    with pytest.raises(ValueError):
        json.loads(raw)


async def test_drop_cuts_the_connection_mid_body(client: Any) -> None:
    await put_faults(client, {"drop": True})
    with pytest.raises(
        (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientConnectionError)
    ):
        resp = await client.get(LABS)
        await resp.read()


async def test_hang_outlasts_the_client_timeout(client: Any) -> None:
    await put_faults(client, {"hang": True, "hang_s": 0.3})
    with pytest.raises(asyncio.TimeoutError):
        resp = await client.get(LABS, timeout=aiohttp.ClientTimeout(total=0.1))
        await resp.read()
    await asyncio.sleep(0.3)  # let the hanging handler finish before the server shuts down


async def test_oversize_pads_json_without_changing_it(client: Any) -> None:
    plain = await get_json(client, LABS)
    await put_faults(client, {"oversize_bytes": 200_000})
    resp = await client.get(LABS)
    raw = await resp.read()
    assert len(raw) >= 200_000
    assert json.loads(raw) == plain


async def test_path_contains_limits_the_fault(client: Any) -> None:
    await put_faults(client, {"error_status": 500, "path_contains": "/labresults"})
    assert (await client.get(LABS)).status == 500
    assert (await client.get(f"{BASE}/patients/{TOLVAN}/diagnoses")).status == 200
    assert (await client.get(f"{BASE}/patients/{TOLVAN}")).status == 200
    assert (await client.get(f"{BASE}/ambulance/patients/{TOLVAN}/threats")).status == 200


async def test_rate_zero_never_hits(client: Any) -> None:
    await put_faults(client, {"error_status": 500, "malformed": True, "drop": True, "rate": 0})
    for _ in range(25):
        body = await get_json(client, LABS)
        assert body["totalCount"] == 4


async def test_partial_rate_hits_some_requests(client: Any) -> None:
    await put_faults(client, {"error_status": 503, "rate": 0.5})
    statuses = [(await client.get(LABS)).status for _ in range(40)]
    assert set(statuses) == {200, 503}
