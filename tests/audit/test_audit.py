"""The access log: exactly one AuditEvent per request that touches a patient, committed before the
answer leaves; no audit, no answer."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from proxy.fhir.http import STORE_KEY
from proxy.simulators.population import GRETA, LENNART, SANNA, TOLVAN
from tests.conftest import BASE, auth, pid


async def events(store: Any) -> list[dict[str, Any]]:
    assert store._db is not None
    async with store._db.execute("SELECT event, patient_pnr, audience, outcome FROM audit_event") as cur:
        rows = await cur.fetchall()
    return [{**json.loads(e), "_pnr": p, "_audience": a, "_outcome": o} for e, p, a, o in rows]


async def test_exactly_one_event_per_patient_request_under_concurrency(facade: Any) -> None:
    people = [TOLVAN.pnr, GRETA.pnr, SANNA.pnr, LENNART.pnr]
    patient_token = auth("patient", pnr=TOLVAN.pnr)
    narrow = auth("clinician", scopes="user/Condition.rs")
    async with facade() as f:
        await f.faults("npo", error_status=503, rate=0.3)  # some answers partial
        requests = []
        for i in range(600):
            pnr = people[i % 4]
            kind = i % 6
            if kind == 0:
                requests.append((f"{BASE}/Patient/{pid(pnr)}/$everything", {}, None))
            elif kind == 1:
                requests.append((f"{BASE}/Condition", {"patient": pid(pnr)}, None))
            elif kind == 2:
                requests.append((f"{BASE}/Observation", {"patient": pid(pnr)}, narrow))  # 403: refused
            elif kind == 3:
                requests.append((f"{BASE}/Patient/{pid(pnr)}", {}, patient_token))  # others: 404
            elif kind == 4:
                requests.append((f"{BASE}/Flag", {"patient": pid(pnr)}, auth("ambulance")))
            else:
                requests.append(
                    (f"{BASE}/Condition", {"patient": pid(pnr), "onset-date": "bad"}, None)
                )  # 400
        sem = asyncio.Semaphore(64)

        async def send(path: str, params: dict[str, str], headers: dict[str, str] | None) -> int:
            async with sem:
                resp = await f.client.get(path, params=params, headers=headers)
                await resp.read()
                return resp.status

        statuses = await asyncio.gather(*(send(*r) for r in requests))
        logged = await events(f.client.server.app[STORE_KEY])
    touching = [s for s, r in zip(statuses, requests, strict=True) if r[1].get("onset-date") != "bad"]
    assert sorted(set(statuses)) == [200, 400, 403, 404]
    assert len(logged) == len(touching) == 500  # the 100 malformed searches named no patient
    assert len({e["id"] for e in logged}) == len(logged)
    by_outcome: dict[int, int] = {}
    for e in logged:
        by_outcome[e["_outcome"]] = by_outcome.get(e["_outcome"], 0) + 1
    assert by_outcome.get(8, 0) == statuses.count(403) + statuses.count(404)
    assert by_outcome.get(4, 0) > 0  # partial answers (NPÖ failing) are logged as such


async def test_an_event_says_who_what_why_and_nothing_clinical(facade: Any) -> None:
    token = auth("ambulance")
    async with facade() as f:
        await f.get(f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything", headers=token)
        await f.get(f"{BASE}/Patient/{pid(TOLVAN.pnr)}", headers=auth("patient", pnr=TOLVAN.pnr))
        logged = await events(f.client.server.app[STORE_KEY])
    amb, pat = logged
    text = json.dumps(amb)
    assert amb["_pnr"] == TOLVAN.pnr and amb["_audience"] == "ambulance"
    assert amb["subtype"][0]["code"] == "everything" and amb["outcome"] == "0"
    assert amb["purposeOfEvent"][0]["coding"][0]["code"] == "TREAT"
    assert amb["agent"][0]["who"]["identifier"]["value"].startswith("SE2321000016")
    details = {d["type"]: d["valueString"] for d in amb["entity"][1]["detail"]}
    assert int(details["disclosed:cosmic"]) > 0 and int(details["disclosed:npo"]) > 0
    assert "Hotfullt" not in text and "Tolvansson" not in text  # no clinical or personal content
    assert token["Authorization"].split()[1] not in text
    assert pat["purposeOfEvent"][0]["coding"][0]["code"] == "PATRQT"


async def test_no_audit_no_answer(facade: Any) -> None:
    async with facade() as f:
        store = f.client.server.app[STORE_KEY]
        await store._db.close()  # the store breaks under the running facade
        resp = await f.client.get(f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything")
        body = await resp.text()
        meta = await f.client.get(f"{BASE}/metadata")  # touches no patient: not audited, still served
    assert resp.status == 503
    assert "OperationOutcome" in body and "Tolvan" not in body and "Condition" not in body
    assert meta.status == 200
