"""Document once: a home visit written through the facade reaches Viva and Cosmic exactly once.

End to end on the simulators (tests/conftest.py ``facade``): the happy path; a target down during the
POST (202, the Task pending, delivered after recovery); a target refusing (the Task says refused, it
is not retried forever); a delivery worker killed mid-way and another taking over (exactly once in
each target); the same Bundle twice (once); a malformed Bundle (400 listing every problem, nothing
queued); a patient token and a token without write scope (403); another Bundle under a used
identifier (409); a Task is its writer's only.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest
from yarl import URL

from proxy.edge.http import FACADE_KEY, STORE_KEY
from proxy.pipeline.delivery import Delivery
from proxy.simulators.harness import Received
from proxy.simulators.population import TOLVAN
from tests.conftest import BASE, auth, pid
from tests.writes.visit import visit

HOMECARE = {**auth("homecare"), "Content-Type": "application/fhir+json"}
STORES = pytest.mark.parametrize("store", ["sqlite", "postgres"])
FAST = {"wait_s": 2.0, "poll_s": 0.05, "backoff_base_s": 0.05, "backoff_cap_s": 0.2}


def posted(received: list[Received], backend: str) -> list[Received]:
    return [r for r in received if r.backend == backend and r.method == "POST" and "/_sim/" not in r.path]


async def post(f: Any, bundle: dict[str, Any], headers: dict[str, str] = HOMECARE) -> tuple[int, Any, Any]:
    resp = await f.client.post(BASE, data=orjson.dumps(bundle), headers=headers)
    return resp.status, await resp.json(content_type=None), resp.headers


async def task(f: Any, location: str, headers: dict[str, str] = HOMECARE) -> tuple[int, Any]:
    resp = await f.client.get(URL(location).path, headers=headers)
    return resp.status, await resp.json(content_type=None)


async def until(f: Any, location: str, *statuses: str, timeout_s: float = 10.0) -> Any:
    """The Task once its status is one of ``statuses`` (bounded: else the test fails)."""
    for _ in range(int(timeout_s / 0.05)):
        _, t = await task(f, location)
        if t.get("status") in statuses:
            return t
        await asyncio.sleep(0.05)
    raise AssertionError(f"the Task never became {' or '.join(statuses)}: {t}")


def written_encounters(bundle: Any) -> list[Any]:
    """The Encounters of a Bundle that the facade wrote (its minted identifier)."""
    return [
        e["resource"]
        for e in bundle.get("entry", [])
        if e["resource"]["resourceType"] == "Encounter"
        and any(i.get("system") == "urn:fhir-facade:written" for i in e["resource"].get("identifier", []))
    ]


@STORES
async def test_a_home_visit_reaches_both_targets_and_reads_back_once(facade: Any, store: str) -> None:
    received: list[Received] = []
    async with facade(received=received, outbox=FAST, store=store) as f:
        status, answer, headers = await post(f, visit(pid(TOLVAN.pnr)))
        assert status == 200, answer
        assert answer["type"] == "transaction-response" and len(answer["entry"]) == 10
        assert {e["response"]["status"] for e in answer["entry"]} == {"201 Created"}
        _, t = await task(f, headers["Location"])
        assert t["status"] == "completed" and {o["type"]["text"] for o in t["output"]} == {"viva", "cosmic"}
        assert posted(received, "viva") and posted(received, "cosmic")
        assert all(
            r.headers.get("Idempotency-Key") for r in posted(received, "viva") + posted(received, "cosmic")
        )
        # stamped with the writer (the token's): user, name, care unit and care provider
        (note,) = [orjson.loads(r.body) for r in posted(received, "viva") if r.path.endswith("/anteckningar")]
        assert note["signeradAv"] == {"hsaId": "SE2120001520-S001", "namn": "Demo Distriktssköterska"}
        assert note["enhet"]["vardgivareHsaId"] == "SE2120001520-KOMM"
        # read back by care staff: the visit once, with both sources as provenance
        status, everything = await f.get(
            f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything", headers=auth("homecare")
        )
        written = written_encounters(everything)
        assert status == 200 and len(written) == 1, written
        # each entry's location finds its record: exactly the one written
        for entry in answer["entry"]:
            status, found = await f.get(f"{BASE}/{entry['response']['location']}", headers=auth("homecare"))
            records = [e["resource"] for e in found["entry"] if e["search"]["mode"] == "match"]
            assert status == 200 and len(records) == 1, (entry, found.get("total"))


@STORES
async def test_a_target_down_during_the_post_is_delivered_after_recovery_once(
    facade: Any, store: str
) -> None:
    received: list[Received] = []
    async with facade(
        received=received, outbox={**FAST, "wait_s": 0.5, "max_attempts": 1000}, store=store
    ) as f:
        await f.faults("cosmic", error_status=503, path_contains="/cosmic/api")
        status, answer, headers = await post(f, visit(pid(TOLVAN.pnr)))
        assert status == 200
        assert {e["response"]["status"] for e in answer["entry"]} == {"202 Accepted"}
        issues = answer["entry"][0]["response"]["outcome"]["issue"]
        assert any("cosmic" in i["diagnostics"] and "pending" in i["diagnostics"] for i in issues)
        _, t = await task(f, headers["Location"])
        assert t["status"] == "in-progress"
        cosmic = next(o for o in t["output"] if o["type"]["text"] == "cosmic")
        assert cosmic["valueString"].startswith("pending")
        await f.faults("cosmic")  # recovered
        await until(f, headers["Location"], "completed")
        keys = [r.headers["Idempotency-Key"] for r in posted(received, "cosmic")]
        assert len(set(keys)) == 10 < len(keys)  # each entry's key; a retry repeated a key, never a new one
        # read back once: one visit, in both sources
        status, everything = await f.get(
            f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything", headers=auth("homecare")
        )
        written = written_encounters(everything)
        assert status == 200 and len(written) == 1


@STORES
async def test_a_refused_part_is_parked_with_why_and_not_retried(facade: Any, store: str) -> None:
    received: list[Received] = []
    async with facade(received=received, outbox=FAST, store=store) as f:
        await f.faults("viva", error_status=422, path_contains="/viva/api")
        status, _, headers = await post(f, visit(pid(TOLVAN.pnr)))
        assert status == 200
        t = await until(f, headers["Location"], "failed")
        viva = next(o for o in t["output"] if o["type"]["text"] == "viva")
        refused = "viva refused it (HTTP 422) at request 1 of 10: none of the part was delivered"
        assert viva["valueString"] == f"not delivered: {refused}"
        sent = len(posted(received, "viva"))
        await asyncio.sleep(0.5)
        assert len(posted(received, "viva")) == sent == 1  # the first request refused: parked, not retried
        assert TOLVAN.pnr not in orjson.dumps(t).decode()


async def test_a_part_refused_mid_way_says_what_the_target_holds(facade: Any) -> None:
    """Viva refuses the note (the 8th of the visit's ten requests): what it took before stays there
    (a target undoes nothing), and the Task says exactly that — which request, and that the ones
    before it were delivered — rather than a bare "not delivered"."""
    received: list[Received] = []
    async with facade(received=received, outbox=FAST) as f:
        await f.faults("viva", error_status=422, path_endswith="/anteckningar")
        _, _, headers = await post(f, visit(pid(TOLVAN.pnr)))
        t = await until(f, headers["Location"], "failed")
        viva = next(o for o in t["output"] if o["type"]["text"] == "viva")
        held = "at request 8 of 10: the 7 before it were delivered"
        assert viva["valueString"] == f"not delivered: viva refused it (HTTP 422) {held}"
        assert [r.path.rsplit("/", 1)[1] for r in posted(received, "viva")][-1] == "anteckningar"
        assert len(posted(received, "viva")) == 8


async def test_a_target_down_for_good_is_given_up_on_after_max_attempts(facade: Any) -> None:
    received: list[Received] = []
    async with facade(received=received, outbox={**FAST, "max_attempts": 3}) as f:
        await f.faults("cosmic", error_status=503, path_contains="/cosmic/api")
        _, _, headers = await post(f, visit(pid(TOLVAN.pnr)))
        t = await until(f, headers["Location"], "failed")
        cosmic = next(o for o in t["output"] if o["type"]["text"] == "cosmic")
        assert (
            cosmic["valueString"]
            == "not delivered: gave up after 3 attempts (last: cosmic answered HTTP 503)"
        )
        assert len(posted(received, "cosmic")) == 3  # three sends of its first request, then no more
        await asyncio.sleep(0.3)
        assert len(posted(received, "cosmic")) == 3


@STORES
async def test_the_same_bundle_twice_is_written_once(facade: Any, store: str) -> None:
    received: list[Received] = []
    async with facade(received=received, outbox=FAST, store=store) as f:
        bundle = visit(pid(TOLVAN.pnr))
        first = await post(f, bundle)
        second = await post(f, bundle)
        assert first[0] == second[0] == 200
        assert first[2]["Location"] == second[2]["Location"]
        assert first[1] == second[1]
        assert len(posted(received, "viva")) == len(posted(received, "cosmic")) == 10
        # another Bundle under the same identifier: a conflict, nothing written
        other = visit(pid(TOLVAN.pnr), identifier=bundle["identifier"]["value"])
        other["entry"][2]["resource"]["valueQuantity"]["value"] = 80  # (another pulse: another Bundle)
        status, outcome, _ = await post(f, other)
        assert status == 409 and outcome["resourceType"] == "OperationOutcome"
        assert len(posted(received, "viva")) == 10


@STORES
async def test_a_malformed_bundle_lists_every_problem_and_nothing_is_queued(facade: Any, store: str) -> None:
    received: list[Received] = []
    async with facade(received=received, outbox=FAST, store=store) as f:
        bundle = visit(pid(TOLVAN.pnr))
        bundle["entry"][0]["resource"]["period"]["start"] = "2026-11-30T09:15:00"  # no zone
        bundle["entry"][1]["resource"]["effectiveDateTime"] = "2099-01-01T00:00:00+01:00"  # future
        bundle["entry"][2]["resource"]["encounter"] = {
            "reference": "urn:uuid:00000000-0000-4000-8000-000000000000"
        }
        status, outcome, _ = await post(f, bundle)
        assert status == 400 and outcome["resourceType"] == "OperationOutcome"
        assert len(outcome["issue"]) >= 3, outcome
        await asyncio.sleep(0.2)
        assert posted(received, "viva") == posted(received, "cosmic") == []
        status, outcome, _ = await post(f, {"resourceType": "Patient"})
        assert status == 400


@pytest.mark.parametrize(
    "headers",
    [
        {**auth("patient", pnr=TOLVAN.pnr), "Content-Type": "application/fhir+json"},
        {**auth("homecare", scopes="user/*.rs"), "Content-Type": "application/fhir+json"},
        {**auth("clinician"), "Content-Type": "application/fhir+json"},  # no policy grants it
    ],
)
@STORES
async def test_who_may_not_write_is_refused_and_nothing_is_sent(
    facade: Any, headers: dict[str, str], store: str
) -> None:
    received: list[Received] = []
    async with facade(received=received, outbox=FAST, store=store) as f:
        status, outcome, _ = await post(f, visit(pid(TOLVAN.pnr)), headers=headers)
        assert status == 403 and outcome["resourceType"] == "OperationOutcome"
        await asyncio.sleep(0.2)
        assert posted(received, "viva") == posted(received, "cosmic") == []


async def test_a_task_is_its_writers_only(facade: Any) -> None:
    async with facade(outbox=FAST) as f:
        _, _, headers = await post(f, visit(pid(TOLVAN.pnr)))
        mine = await task(f, headers["Location"])
        other = await task(f, headers["Location"], headers=auth("homecare", sub="another-nurse"))
        unknown = await task(f, f"{BASE}/Task/{'0' * 32}")
        assert mine[0] == 200 and other[0] == unknown[0] == 404
        assert other[1] == unknown[1]


@STORES
async def test_a_worker_killed_mid_delivery_leaves_each_target_with_the_visit_once(
    facade: Any, store: str
) -> None:
    """The parts were sent, but the worker died before recording it (its loop ends there); after the
    lease a restarted worker sends them again with the same keys, and the targets write nothing twice."""
    received: list[Received] = []
    async with facade(received=received, outbox={**FAST, "lease_s": 0.3, "wait_s": 0.0}, store=store) as f:
        app = f.client.server.app
        facade_, store = app[FACADE_KEY], app[STORE_KEY]
        real_delivered = store.delivered
        died: list[str] = []

        async def killed_before_recording(part_id: str, now: float, worker: str) -> bool:
            died.append(part_id)
            raise asyncio.CancelledError  # (the worker is killed here: its acknowledgement is lost)

        store.delivered = killed_before_recording
        _, _, headers = await post(f, visit(pid(TOLVAN.pnr)))
        for _ in range(200):
            if len(died) >= 1:
                break
            await asyncio.sleep(0.02)
        assert died
        store.delivered = real_delivered
        restarted = Delivery(store, facade_.clients, facade_.settings.outbox, facade_.clock, "restarted")
        for _ in range(200):
            await restarted.once()
            _, t = await task(f, headers["Location"])
            if t["status"] == "completed":
                break
            await asyncio.sleep(0.05)
        assert t["status"] == "completed", t
        for target in ("viva", "cosmic"):
            keys = [r.headers["Idempotency-Key"] for r in posted(received, target)]
            assert len(set(keys)) == 10 and len(keys) >= 10  # some sent twice, always with the same key
        assert any(len(posted(received, t)) > 10 for t in ("viva", "cosmic"))
        # and each target holds the visit once: read back once
        status, everything = await f.get(
            f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything", headers=auth("homecare")
        )
        written = written_encounters(everything)
        assert status == 200 and len(written) == 1


async def test_a_part_whose_sending_kills_the_worker_every_time_is_given_up_on_not_sent_for_ever(
    facade: Any,
) -> None:
    """No outcome is ever recorded (the worker dies after sending, each time): each claim still
    counts an attempt, and past ``max_attempts`` the part is parked without another send."""
    received: list[Received] = []
    async with facade(received=received, outbox={**FAST, "lease_s": 0.5, "max_attempts": 3}) as f:
        store = f.client.server.app[STORE_KEY]

        async def killed_before_recording(part_id: str, now: float, worker: str) -> bool:
            raise asyncio.CancelledError

        store.delivered = killed_before_recording
        _, _, headers = await post(f, visit(pid(TOLVAN.pnr)))
        for _ in range(100):  # bounded: ~3 leases of 0.5 s and then some
            _, t = await task(f, headers["Location"])
            settled = all(o["valueString"].startswith("not delivered") for o in t["output"])
            if t["status"] == "failed" and settled:
                break
            await asyncio.sleep(0.05)
        assert t["status"] == "failed", t
        for o in t["output"]:
            assert o["valueString"].startswith("not delivered: gave up after 3 attempts"), o
        for target in ("viva", "cosmic"):
            keys = [r.headers["Idempotency-Key"] for r in posted(received, target)]
            assert len(set(keys)) == 10 and len(keys) == 3 * 10, target  # its ten requests, sent thrice


async def test_a_part_whose_requests_together_take_longer_than_the_lease_is_still_delivered_once(
    facade: Any,
) -> None:
    """The lease bounds one request, not the part: it is renewed after each request the target
    acknowledged. (Bounded by the whole part, a visit of ten requests to a target answering each in
    a tenth of the lease could never be delivered: cut off and sent again from the start, each time.)"""
    received: list[Received] = []
    async with facade(received=received, outbox={**FAST, "lease_s": 1.0, "wait_s": 0.0}) as f:
        # ten requests of 0.15 s: 1.5 s, past the lease — each with 0.9 s of it (a busy machine's margin)
        await f.faults("cosmic", latency_ms=150, path_contains="/cosmic/api")
        _, _, headers = await post(f, visit(pid(TOLVAN.pnr)))
        t = await until(f, headers["Location"], "completed", "failed")  # (~1.5 s of sending)
        assert t["status"] == "completed", t
        keys = [r.headers["Idempotency-Key"] for r in posted(received, "cosmic")]
        assert len(keys) == len(set(keys)) == 10  # each request sent once: none cut off and sent again


async def test_a_worker_whose_lease_was_taken_over_sends_no_more_of_the_part(facade: Any) -> None:
    """A renewal the store refuses (another worker claimed the part: this one stalled past its lease)
    stops the sending at once — the new holder sends the part, and two never send it side by side."""
    received: list[Received] = []
    async with facade(received=received, outbox={**FAST, "lease_s": 0.6, "wait_s": 0.0}) as f:
        store = f.client.server.app[STORE_KEY]
        renewals: list[str] = []

        async def taken_over(part_id: str, until: float, worker: str) -> bool:
            renewals.append(part_id)
            return False

        store.renew = taken_over  # (a lease this short is renewed before the first request already)
        await post(f, visit(pid(TOLVAN.pnr)))
        for _ in range(40):  # bounded: until both parts met their lost lease
            if len(set(renewals)) == 2:
                break
            await asyncio.sleep(0.02)
        assert len(set(renewals)) == 2
        assert posted(received, "viva") == posted(received, "cosmic") == []


async def test_a_renewal_the_store_grants_too_late_stops_the_sending_as_a_lost_lease(facade: Any) -> None:
    """The store took longer to renew the lease than the lease leaves: sending on would overrun it
    (another worker may claim the part meanwhile, and both send). The worker stops; once the store
    is quick again the part is delivered — each request once at each target."""
    received: list[Received] = []
    async with facade(received=received, outbox={**FAST, "lease_s": 0.6, "wait_s": 0.0}) as f:
        store = f.client.server.app[STORE_KEY]
        real_renew, slow = store.renew, [0]

        async def slow_renew(part_id: str, until: float, worker: str) -> bool:
            slow[0] += 1
            await asyncio.sleep(0.6)  # (granted, but the lease it grants has run out on arrival)
            return bool(await real_renew(part_id, until, worker))

        store.renew = slow_renew
        _, _, headers = await post(f, visit(pid(TOLVAN.pnr)))
        for _ in range(60):  # bounded: until both parts met a slow renewal
            if slow[0] >= 2:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.7)  # (the slow renewals return: nothing may be sent after them)
        assert slow[0] >= 2 and posted(received, "viva") == posted(received, "cosmic") == []
        store.renew = real_renew
        await until(f, headers["Location"], "completed")  # (the leases run out: claimed again and sent)
        for target in ("viva", "cosmic"):
            keys = [r.headers["Idempotency-Key"] for r in posted(received, target)]
            assert len(keys) == len(set(keys)) == 10


async def test_a_write_is_audited_as_a_create_and_shown_in_the_patients_access_log(facade: Any) -> None:
    async with facade(outbox=FAST) as f:
        status, _, _ = await post(f, visit(pid(TOLVAN.pnr)))
        assert status == 200
        patient = auth("patient", pnr=TOLVAN.pnr)
        status, log = await f.get(f"{BASE}/AuditEvent", params={"patient": pid(TOLVAN.pnr)}, headers=patient)
    assert status == 200
    creates = [e["resource"] for e in log["entry"] if e["resource"]["action"] == "C"]
    assert len(creates) == 1, [e["resource"]["action"] for e in log["entry"]]
    (event,) = creates
    assert event["subtype"][0]["code"] == "create" and event["outcome"] == "0"
    assert event["agent"][0]["role"] == [{"text": "Kommunal hemsjukvård"}]
    # what was written is not named in the patient's view: no types, no sources, no counts
    text = orjson.dumps(event).decode()
    assert "Observation" not in text and "viva" not in text and "cosmic" not in text


async def test_one_resource_posted_alone_is_a_transaction_of_one(facade: Any) -> None:
    received: list[Received] = []
    async with facade(received=received, outbox=FAST) as f:
        pulse = next(
            e["resource"]
            for e in visit(pid(TOLVAN.pnr))["entry"]
            if e["resource"].get("code", {}).get("coding", [{}])[0].get("code") == "8867-4"
        )
        del pulse["encounter"]  # (alone: nothing in the request to refer to)
        headers = {**HOMECARE, "Idempotency-Key": "pulse-1"}
        resp = await f.client.post(f"{BASE}/Observation", data=orjson.dumps(pulse), headers=headers)
        body = await resp.json(content_type=None)
        assert resp.status == 201, body
        assert body["resourceType"] == "OperationOutcome" and "/fhir/Task/" in resp.headers["Location"]
        again = await f.client.post(f"{BASE}/Observation", data=orjson.dumps(pulse), headers=headers)
        assert again.status == 201 and again.headers["Location"] == resp.headers["Location"]
        assert len(posted(received, "viva")) == len(posted(received, "cosmic")) == 1  # once, for both POSTs
        wrong = await f.client.post(f"{BASE}/Encounter", data=orjson.dumps(pulse), headers=HOMECARE)
        assert wrong.status == 400


async def test_a_slow_target_does_not_hold_up_the_others_deliveries(facade: Any) -> None:
    """Each claimed part is sent on its own: while Cosmic takes seconds over one visit, a later
    visit's Viva part is claimed and delivered at once."""
    async with facade(outbox={**FAST, "wait_s": 0.0}) as f:
        await f.faults("cosmic", latency_ms=500, path_contains="/cosmic/api")
        _, _, first = await post(f, visit(pid(TOLVAN.pnr)))
        await asyncio.sleep(0.3)  # (the first visit's parts are being sent: Cosmic's slowly)
        _, _, second = await post(f, visit(pid(TOLVAN.pnr)))
        viva = ""
        for _ in range(40):  # 2 s: Cosmic's part of the first visit alone takes 5 s
            _, t = await task(f, second["Location"])
            viva = next(o["valueString"] for o in t["output"] if o["type"]["text"] == "viva")
            if viva.startswith("delivered"):
                break
            await asyncio.sleep(0.05)
        assert viva.startswith("delivered"), viva
        _, t = await task(f, first["Location"])
        assert t["status"] == "in-progress"  # (still sending the first visit to Cosmic)
