"""Attacks on the write path (issue 22): each test is a probe or an abuse that must fail for the
attacker. One is a known, open defect (marked xfail, strict: it fails the run the day it passes,
so the mark goes with the fix)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import orjson
import pytest

from proxy.edge.http import STORE_KEY
from proxy.simulators.harness import Received
from proxy.simulators.population import GRETA, TOLVAN
from tests.conftest import BASE, auth, pid
from tests.writes.test_writes import FAST, HOMECARE, post, posted, task
from tests.writes.visit import visit

ANOTHER_NURSE = {**auth("homecare", sub="another-nurse"), "Content-Type": "application/fhir+json"}
THIRD_NURSE = {**auth("homecare", sub="third-nurse"), "Content-Type": "application/fhir+json"}


def _pulse(patient_id: str) -> dict[str, Any]:
    pulse = next(
        e["resource"]
        for e in visit(patient_id)["entry"]
        if e["resource"].get("code", {}).get("coding", [{}])[0].get("code") == "8867-4"
    )
    del pulse["encounter"]
    return pulse


async def test_another_writers_bundle_identifier_is_no_oracle_and_cannot_be_squatted(facade: Any) -> None:
    """Bundle.identifier is one namespace for every writer: another nurse's POST under an identifier
    already used answers 409, where a fresh one answers 200. So anyone with write scope learns which
    identifiers others have used (and for a guessable scheme: that a visit was documented), and can
    take an identifier first so that its owner's real visit is refused (409, never delivered)."""
    async with facade(outbox=FAST) as f:
        used = visit(pid(TOLVAN.pnr))
        status, _, _ = await post(f, used)  # the first nurse's visit
        assert status == 200
        fresh = await post(f, visit(pid(TOLVAN.pnr)), headers=ANOTHER_NURSE)
        # the other nurse: another visit (another patient, even) under the first nurse's identifier
        probe = visit(pid(GRETA.pnr), identifier=used["identifier"]["value"])
        probed = await post(f, probe, headers=ANOTHER_NURSE)
        assert fresh[0] == 200
        assert probed[0] == fresh[0], probed[1]  # today: 409 "Another Bundle was accepted ..."
        # and the same Bundle replayed by another user (one who has not used that identifier
        # themselves) is no confirmation of it either: a new write of theirs, not the first nurse's
        replay = await post(f, used, headers=THIRD_NURSE)
        assert replay[0] == fresh[0], replay[1]
        assert replay[2]["Location"] != (await post(f, used))[2]["Location"]


async def test_a_single_post_idempotency_key_the_facade_cannot_use_is_refused_not_ignored(
    facade: Any,
) -> None:
    """A key longer than 128 characters (or not printable ASCII) is silently replaced by a random one
    (edge/writes.py ``single``): the client believes its retry is safe, and the record is written twice."""
    received: list[Received] = []
    async with facade(received=received, outbox=FAST) as f:
        pulse = _pulse(pid(TOLVAN.pnr))
        headers = {**HOMECARE, "Idempotency-Key": "k" * 129}
        first = await f.client.post(f"{BASE}/Observation", data=orjson.dumps(pulse), headers=headers)
        if first.status == 400:
            return  # refused: the client knows its key is no key
        again = await f.client.post(f"{BASE}/Observation", data=orjson.dumps(pulse), headers=headers)
        assert again.headers.get("Location") == first.headers.get("Location")
        assert len(posted(received, "viva")) == 1  # today: 2 (and 2 in Cosmic)


async def test_a_deeply_nested_single_resource_is_a_400_not_a_server_error(facade: Any) -> None:
    """orjson reads 1024 levels but writes only 255: ``single`` re-serialises the resource into a
    Bundle, and a resource nested ~300 deep makes that raise (a 500) before validation's depth
    check (64) can answer 400."""
    received: list[Received] = []
    async with facade(received=received, outbox=FAST) as f:
        pulse = _pulse(pid(TOLVAN.pnr))
        node: dict[str, Any] = {"url": "urn:x", "valueString": "x"}
        for _ in range(300):
            node = {"url": "urn:x", "extension": [node]}
        pulse["extension"] = [node]
        data = json.dumps(pulse).encode()  # (orjson itself writes no more than 255 levels)
        resp = await f.client.post(f"{BASE}/Observation", data=data, headers=HOMECARE)
        body = await resp.json(content_type=None)
        assert resp.status == 400, (resp.status, body)
        assert posted(received, "viva") == posted(received, "cosmic") == []


async def test_the_delivery_loop_outlives_an_unexpected_error(facade: Any) -> None:
    """``Delivery.run`` survives only StoreUnavailable: any other exception (a bug, a row it cannot
    decode, an aiosqlite/asyncpg error class not mapped) ends the task for good, silently (app.py
    never looks at it again), and every later write stays pending forever while the POSTs say 202."""
    async with facade(outbox=FAST) as f:
        store = f.client.server.app[STORE_KEY]
        real_claim = store.claim
        calls = 0

        async def flaky_claim(*args: Any, **kw: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("an unexpected error, once")
            return await real_claim(*args, **kw)

        store.claim = flaky_claim
        await asyncio.sleep(0.3)  # (the loop polls every 0.05 s: it has met the error by now)
        status, _, headers = await post(f, visit(pid(TOLVAN.pnr)))
        assert status == 200
        for _ in range(100):
            _, t = await task(f, headers["Location"])
            if t["status"] == "completed":
                break
            await asyncio.sleep(0.05)
        assert t["status"] == "completed", t  # today: in-progress for ever


@pytest.mark.xfail(
    strict=True,
    reason="open in issue 22: a write's delivery outcome tells whether another care provider's system"
    " knows the patient (a design decision: refuse a write to a target the writer may not read under PDL,"
    " or report every target's outcome alike)",
)
async def test_a_write_does_not_tell_whether_a_patient_hidden_by_pdl_exists_in_another_providers_system(
    facade: Any,
) -> None:
    """Without the patient's consent, a municipal home-care nurse reads none of the region's Cosmic
    records (PDL: another care provider's): Tolvan (in Cosmic) and Greta (not in Cosmic) look alike.
    A write tells them apart: Cosmic takes Tolvan's visit (201) and refuses Greta's (404, parked):
    202 "cosmic: not delivered" — whether the patient is known to the region leaks through the write."""
    async with facade(outbox=FAST, consent=False) as f:
        reads = {}
        for who in (TOLVAN, GRETA):
            status, found = await f.get(
                f"{BASE}/Encounter", params={"patient": pid(who.pnr)}, headers=auth("homecare")
            )
            assert status == 200
            reads[who.pnr] = [
                e["resource"]["id"]
                for e in found.get("entry", [])
                if e["resource"].get("meta", {}).get("source") == "urn:fhir-facade:source:cosmic"
            ]
        assert reads[TOLVAN.pnr] == reads[GRETA.pnr] == []  # (PDL: the region's records are hidden)
        answers = {}
        for who in (TOLVAN, GRETA):
            status, answer, headers = await post(f, visit(pid(who.pnr)))
            assert status == 200
            await asyncio.sleep(0.3)
            _, t = await task(f, headers["Location"])
            answers[who.pnr] = (
                [e["response"]["status"] for e in answer["entry"]],
                t["status"],
                next(o["valueString"].split(" at ")[0] for o in t["output"] if o["type"]["text"] == "cosmic"),
            )
        assert answers[TOLVAN.pnr] == answers[GRETA.pnr], answers


async def test_another_writer_cannot_take_a_single_posts_idempotency_key_first(facade: Any) -> None:
    """A single POST's Bundle.identifier is ``urn:fhir-facade:single-write|sha256(client_id, sub,
    key)`` — unkeyed, of values that are no secret — and a transaction Bundle may name that system
    itself. Another nurse computes the victim's identifier for a key it will use ("pulse-1"), POSTs
    any visit under it first, and the victim's own POST is then refused 409 (its pulse never written)."""
    async with facade(outbox=FAST) as f:
        victim_key = hashlib.sha256(b"demo-homecare-tablet\ndemo-homecare-nurse\npulse-1").hexdigest()[:32]
        squat = visit(pid(GRETA.pnr))
        squat["identifier"] = {"system": "urn:fhir-facade:single-write", "value": victim_key}
        status, _, _ = await post(f, squat, headers=ANOTHER_NURSE)
        assert status == 200  # (accepted: the facade's own system is not reserved)
        pulse = _pulse(pid(TOLVAN.pnr))
        headers = {**HOMECARE, "Idempotency-Key": "pulse-1"}
        resp = await f.client.post(f"{BASE}/Observation", data=orjson.dumps(pulse), headers=headers)
        assert resp.status == 201, await resp.json(content_type=None)  # today: 409
