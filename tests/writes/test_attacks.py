"""Attacks on the write path (issue 22): each test is a probe or an abuse that must fail for the
attacker."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
from typing import Any

import orjson

from proxy.auth.config import TrustedIssuer, VerificationKey
from proxy.auth.demo import _CLAIMS, DEMO_KID, DEMO_SECRET
from proxy.demo_org import REGION_PROVIDER
from proxy.edge.http import AUTH_KEY, STORE_KEY
from proxy.fhir.transaction import WRITTEN_SYSTEM
from proxy.simulators.harness import Received
from proxy.simulators.population import GRETA, TOLVAN
from tests.conftest import BASE, auth, consent_body, pid
from tests.writes.test_writes import FAST, HOMECARE, post, posted, task, until
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


def _sources(resource: dict[str, Any]) -> set[str]:
    """The backends a merged resource names: its meta.source and the also-in-source tags."""
    meta = resource.get("meta", {})
    named = {str(meta.get("source", "")).rpartition(":")[2]}
    return named | {t["code"] for t in meta.get("tag", []) if t["system"] == "urn:fhir-facade:also-in-source"}


async def test_a_write_tells_the_writer_no_more_than_a_read_does_of_which_systems_know_the_patient(
    facade: Any,
) -> None:
    """Without the patient's consent (and again under the patient's block on the region) a municipal
    nurse reads none of the region's Cosmic records: Tolvan (in Cosmic) and Greta (not in Cosmic)
    look alike there. A write tells them apart — Cosmic takes Tolvan's visit and refuses Greta's
    (an unknown patient) — so that would be a leak, were it hidden. It is not: demographics are no
    care documentation and belong to no care provider (proxy/access/pdl.py), so the nurse's read of
    the Patient names every system holding them, and the write must tell nothing beyond that: Cosmic
    took the visit exactly when the Patient read names Cosmic, under a block as without one. (The
    probe that would fail: a Patient read that hid a system's demographics while the write told.)"""
    async with facade(outbox=FAST, consent=False) as f:

        async def seen_by_the_writer(who: Any) -> tuple[list[str], set[str], bool]:
            patient = pid(who.pnr)
            _, found = await f.get(f"{BASE}/Encounter", params={"patient": patient}, headers=auth("homecare"))
            region_records = [
                e["resource"]["id"]
                for e in found.get("entry", [])
                if e["resource"].get("meta", {}).get("source") == "urn:fhir-facade:source:cosmic"
                and WRITTEN_SYSTEM not in {i.get("system") for i in e["resource"].get("identifier", [])}
            ]  # (the region's: not the visits the nurse's own provider wrote there, which they read)
            status, demographics = await f.get(f"{BASE}/Patient/{patient}", headers=auth("homecare"))
            assert status == 200
            status, _, headers = await post(f, visit(patient))
            assert status == 200
            t = await until(f, headers["Location"], "completed", "failed")  # (Cosmic's part settled)
            cosmic = next(o["valueString"] for o in t["output"] if o["type"]["text"] == "cosmic")
            assert cosmic.startswith(("delivered", "not delivered: cosmic refused it (HTTP 404)")), cosmic
            return region_records, _sources(demographics), cosmic.startswith("delivered")

        for blocked in (False, True):
            if blocked:  # Tolvan blocks the region (an outer block): its records are hidden from all outside
                block = consent_body(pid(TOLVAN.pnr), deny=True, custodians=(REGION_PROVIDER,))
                patient = {**auth("patient", pnr=TOLVAN.pnr), "Content-Type": "application/fhir+json"}
                resp = await f.client.post(f"{BASE}/Consent", data=orjson.dumps(block), headers=patient)
                assert resp.status == 201
            tolvan, greta = await seen_by_the_writer(TOLVAN), await seen_by_the_writer(GRETA)
            assert tolvan[0] == greta[0] == []  # (PDL: none of the region's records, for either)
            assert (tolvan[2], greta[2]) == (True, False)  # the write tells them apart ...
            for _, demographics_from, cosmic_took_it in (tolvan, greta):
                assert cosmic_took_it == ("cosmic" in demographics_from), (blocked, demographics_from)


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


# ---- found by a review of the write path (each failed before its fix) ----------------------------------

NOPAT = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "NOPAT"}
VERY_RESTRICTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "V"}


def _entry(bundle: dict[str, Any], rtype: str, loinc: str | None = None) -> dict[str, Any]:
    return next(
        e["resource"]
        for e in bundle["entry"]
        if e["resource"]["resourceType"] == rtype
        and (loinc is None or e["resource"].get("code", {}).get("coding", [{}])[0].get("code") == loinc)
    )


def _texts(found: Any) -> list[str]:
    return [
        base64.b64decode(a["data"]).decode()
        for e in found.get("entry", [])
        if e["resource"]["resourceType"] == "DocumentReference"
        for c in e["resource"].get("content", [])
        if "data" in (a := c["attachment"])
    ]


async def test_a_security_label_the_targets_cannot_carry_is_refused_not_dropped(facade: Any) -> None:
    """Fail closed. A nurse labels the nursing note NOPAT (not for the patient) and V (very restricted):
    validation never looks at meta.security, the write mappings drop it, the answer is 201 — and the
    patient reads the note in 1177 (and every care audience reads it unlabelled)."""
    async with facade(outbox=FAST) as f:
        patient = pid(TOLVAN.pnr)
        bundle = visit(patient)
        note = _entry(bundle, "DocumentReference")
        note["meta"] = {"security": [NOPAT, VERY_RESTRICTED]}
        note["content"][0]["attachment"]["data"] = base64.b64encode(b"NOT-FOR-THE-PATIENT").decode()
        status, answer, _ = await post(f, bundle)
        assert status == 400, answer  # refused: the writer learns that the label cannot travel
        assert any(i["expression"][0].endswith(".meta.security") for i in answer["issue"]), answer
        as_patient = auth("patient", pnr=TOLVAN.pnr)
        _, found = await f.get(f"{BASE}/DocumentReference", params={"patient": patient}, headers=as_patient)
        assert "NOT-FOR-THE-PATIENT" not in _texts(found)


async def test_a_reference_by_identifier_cannot_tie_a_record_to_another_patients_visit(facade: Any) -> None:
    """ "References resolvable inside the Bundle" and "one patient" check ``reference`` only. A logical
    reference ``{identifier: {system: urn:fhir-facade:written, value: <minted id>}}`` is taken as is
    and rendered as Viva besokExterntId / Cosmic contactExternalId: Tolvan's pulse is filed under
    Greta's home visit (or under any string the client likes)."""
    received: list[Received] = []
    async with facade(outbox=FAST, received=received) as f:
        status, answer, _ = await post(f, visit(pid(GRETA.pnr)))
        assert status == 200
        gretas_visit = answer["entry"][0]["response"]["location"].rsplit("|", 1)[1]
        pulse = _pulse(pid(TOLVAN.pnr))
        pulse["encounter"] = {"identifier": {"system": WRITTEN_SYSTEM, "value": gretas_visit}}
        received.clear()
        resp = await f.client.post(f"{BASE}/Observation", data=orjson.dumps(pulse), headers=HOMECARE)
        await asyncio.sleep(0.3)
        sent = [r.body for r in posted(received, "viva") + posted(received, "cosmic")]
        assert resp.status == 400, await resp.text()
        assert not any(gretas_visit.encode() in b for b in sent)


async def test_what_no_mapping_carries_is_refused_not_silently_dropped(facade: Any) -> None:
    """Bad input loses nothing. An Observation.note ("fell in the bathroom") and a nursing note's
    second attachment validate, the answer is 201 Created "Delivered to every target" — and neither
    text reaches Viva or Cosmic (the mappings read content[0] only and no note)."""
    received: list[Received] = []
    async with facade(outbox=FAST, received=received) as f:
        patient = pid(TOLVAN.pnr)
        pulse = _pulse(patient)
        pulse["note"] = [{"text": "OBSERVATION-NOTE-TEXT"}]
        resp = await f.client.post(f"{BASE}/Observation", data=orjson.dumps(pulse), headers=HOMECARE)
        bundle = visit(patient)
        second = base64.b64encode(b"SECOND-ATTACHMENT").decode()
        _entry(bundle, "DocumentReference")["content"].append(
            {"attachment": {"contentType": "text/plain", "data": second}}
        )
        status, _, _ = await post(f, bundle)
        await asyncio.sleep(0.3)
        sent = b"".join(r.body for r in posted(received, "viva") + posted(received, "cosmic"))
        assert (resp.status, status) == (400, 400)  # refused, both: nothing is lost silently
        assert b"OBSERVATION-NOTE-TEXT" not in sent and b"SECOND-ATTACHMENT" not in sent


async def test_a_value_the_target_cannot_take_is_not_echoed_in_the_400(facade: Any) -> None:
    """Diagnostics never echo what the client sent. An ACVPU Observation with only text (validation
    allows "coded or text") whose text is not one of the letters: the write mapping's refusing $map
    (proxy/mapping/write.py ``code_map``) answers ``code '<the first 64 characters>' has no equivalent
    here`` — a personnummer, a name, clinical free text, once per target."""
    async with facade(outbox=FAST) as f:
        bundle = visit(pid(TOLVAN.pnr))
        _entry(bundle, "Observation", "80288-4")["valueCodeableConcept"] = {
            "text": "Tolvan 19121212-1212 mycket orolig"
        }
        status, answer, _ = await post(f, bundle)
        assert status == 400
        text = json.dumps(answer, ensure_ascii=False)
        assert "19121212-1212" not in text and "orolig" not in text, text


async def test_a_time_far_in_the_past_is_a_400_not_a_500(facade: Any) -> None:
    """``0001-01-01T00:00:00+14:00`` passes validation (a time with a zone, not in the future) and
    R4's model; the write mapping's ``$format`` converts it to Swedish time and ``astimezone``
    raises OverflowError (not the ValueError ``local_time`` expects)."""
    async with facade(outbox=FAST) as f:
        bundle = visit(pid(TOLVAN.pnr))
        _entry(bundle, "Encounter")["period"] = {"start": "0001-01-01T00:00:00+14:00"}
        status, answer, _ = await post(f, bundle)
        assert status == 400, (status, answer)


async def test_a_task_is_not_readable_by_the_same_subject_from_another_issuer(facade: Any) -> None:
    """Only its writer follows a Task: ``written_by`` compares (audience, sub) — not the issuer (nor
    the client), unlike paging's binding (proxy/paging.py: issuer, subject, client, audience, user,
    unit, provider). With two trusted IdPs (auth.issuers is a list: a region's and a municipality's),
    ``sub`` is only unique per issuer: a nurse of another municipality whose IdP happens to issue the
    same sub reads the Task — the patient's id, the Bundle.identifier, which systems took it. The
    Bundle.identifier namespace (``_writers_own``) leaves the issuer out the same way (a 409 oracle,
    and squatting, across IdPs)."""
    async with facade(outbox=FAST) as f:
        other_idp = "https://idp.other-municipality.example/"
        authenticator = f.client.server.app[AUTH_KEY]
        authenticator._issuers[other_idp] = TrustedIssuer(
            issuer=other_idp,
            keys=(VerificationKey(DEMO_SECRET, frozenset({"HS256"}), DEMO_KID),),
            claims=_CLAIMS,
        )
        status, _, headers = await post(f, visit(pid(TOLVAN.pnr)))
        assert status == 200
        stranger = auth(
            "homecare",
            iss=other_idp,
            client_id="other-municipality-tablet",
            hsa_id="SE9999999999-S001",
            care_unit="SE9999999999-HSV1",
            care_provider="SE9999999999-0001",
        )
        seen, t = await task(f, headers["Location"], stranger)
        assert seen == 404, t


async def test_a_write_tells_a_writer_who_cannot_read_the_patient_nothing_of_the_targets(
    facade: Any,
) -> None:
    """test_attacks' argument ("a write tells no more than the writer's Patient read") assumes the
    writer may read the Patient. A write-only token (``user/Observation.c``: a device or integration)
    gets 403 on Patient/<id>, yet its Task tells Tolvan (in Cosmic: delivered) from Greta (not: cosmic
    refused it, HTTP 404). Either a write needs the Patient read as well, or such a writer's Task must
    not tell the targets apart."""
    async with facade(outbox=FAST) as f:
        write_only = {
            **auth("homecare", scopes="user/Observation.c"),
            "Content-Type": "application/fhir+json",
        }
        outcomes: list[int] = []
        for who in (TOLVAN, GRETA):
            read, _ = await f.get(f"{BASE}/Patient/{pid(who.pnr)}", headers=write_only)
            assert read == 403
            pulse = _pulse(pid(who.pnr))
            resp = await f.client.post(f"{BASE}/Observation", data=orjson.dumps(pulse), headers=write_only)
            outcomes.append(resp.status)
        assert outcomes == [403, 403]  # a write needs what a read of the Patient needs
