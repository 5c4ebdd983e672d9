"""The access log: exactly one AuditEvent per request that touches a patient, committed before the
answer leaves (an access that asks the backends as *begun*, completed after); no audit, no answer."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from proxy.audit.events import BEGUN
from proxy.edge.http import STORE_KEY
from proxy.settings import StoreSettings
from proxy.simulators.population import GRETA, LENNART, SANNA, TOLVAN
from proxy.store.base import NO_OUTCOME, AuditRecord, Store, StoreUnavailable, open_store
from tests.conftest import BASE, auth, consent_to, pid, postgres_dsn, reset_postgres, validate


async def events(store: Store) -> list[dict[str, Any]]:
    return await store.all_audit_events()


def request_id(event: dict[str, Any]) -> str:
    (entity,) = [e for e in event["entity"] if e["type"].get("code") == "XrequestId"]
    return str(entity["what"]["identifier"]["value"])


# 800 requests, 64 in flight at once: 25 of each kind for each patient. (bench/run.py puts the
# facade under real load; here the point is that no event is lost or doubled when requests overlap.)
REQUESTS = 800


@pytest.mark.load
@pytest.mark.parametrize("store", ["sqlite", "postgres"])
async def test_exactly_one_event_per_patient_request_under_concurrency(facade: Any, store: str) -> None:
    people = [TOLVAN.pnr, GRETA.pnr, SANNA.pnr, LENNART.pnr]
    patient_token = auth("patient", pnr=TOLVAN.pnr)
    narrow = auth("clinician", scopes="user/Condition.rs")
    async with facade(store=store, consent=False) as f:
        await f.faults("npo", error_status=503, rate=0.3)  # some answers partial
        requests: list[tuple[str, dict[str, str], dict[str, str]]] = []
        for i in range(REQUESTS):
            pnr = people[i % 4]
            kind = i % 8
            headers = {"X-Request-ID": f"req-{i}"}
            if kind == 0:
                requests.append((f"{BASE}/Patient/{pid(pnr)}/$everything", {}, headers))
            elif kind == 1:
                requests.append((f"{BASE}/Condition", {"patient": pid(pnr)}, headers))
            elif kind == 2:  # 403: refused by scope
                requests.append((f"{BASE}/Observation", {"patient": pid(pnr)}, {**narrow, **headers}))
            elif kind == 3:  # others' records: 404
                requests.append((f"{BASE}/Patient/{pid(pnr)}", {}, {**patient_token, **headers}))
            elif kind == 4:
                requests.append((f"{BASE}/Flag", {"patient": pid(pnr)}, {**auth("ambulance"), **headers}))
            elif kind == 5:  # 403: social care has no emergency access
                emergency = {**auth("homecare"), "X-Emergency-Access": "no-time", **headers}
                requests.append((f"{BASE}/Patient/{pid(pnr)}/$everything", {}, emergency))
            elif kind == 6:
                requests.append((f"{BASE}/AuditEvent", {"patient": pid(pnr)}, {**patient_token, **headers}))
            else:  # 400: malformed, and names the patient: logged against them
                requests.append((f"{BASE}/Condition", {"patient": pid(pnr), "onset-date": "bad"}, headers))
        sem = asyncio.Semaphore(64)

        async def send(path: str, params: dict[str, str], headers: dict[str, str]) -> int:
            async with sem:
                resp = await f.client.get(path, params=params, headers=headers)
                await resp.read()
                return resp.status

        statuses = await asyncio.gather(*(send(*r) for r in requests))
        logged = await events(f.client.server.app[STORE_KEY])
    touching = {r[2]["X-Request-ID"] for r in requests}  # every one names a patient
    assert sorted(set(statuses)) == [200, 400, 403, 404]
    per_request = Counter(request_id(e) for e in logged)
    assert set(per_request) == touching and set(per_request.values()) == {1}
    assert len(logged) == REQUESTS
    by_outcome = Counter(e["outcome"] for e in logged)
    # refused: by scope, others' records (404, and the patient's own log about others: 200 as for
    # an unknown patient), emergency access without it, malformed
    probes = sum(1 for i in range(REQUESTS) if i % 8 == 6 and people[i % 4] != TOLVAN.pnr)
    assert by_outcome["8"] == statuses.count(403) + statuses.count(404) + statuses.count(400) + probes
    assert by_outcome["4"] > 0  # partial answers (NPÖ failing) are logged as such


async def test_an_event_says_who_what_why_and_nothing_clinical(facade: Any) -> None:
    token = auth("ambulance")
    async with facade() as f:
        await f.get(f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything", headers=token)
        await f.get(f"{BASE}/Patient/{pid(TOLVAN.pnr)}", headers=auth("patient", pnr=TOLVAN.pnr))
        logged = await events(f.client.server.app[STORE_KEY])
    amb, pat = sorted(logged, key=lambda e: e["agent"][0]["role"][0]["coding"][0]["code"])
    text = json.dumps(amb)
    assert amb["entity"][0]["what"]["reference"] == f"Patient/{pid(TOLVAN.pnr)}"
    assert amb["agent"][0]["role"][0]["coding"][0]["code"] == "ambulance"
    assert amb["subtype"][0]["code"] == "everything" and amb["outcome"] == "0"
    assert amb["purposeOfEvent"][0]["coding"][0]["code"] == "TREAT"
    assert amb["agent"][0]["who"]["identifier"]["value"].startswith("SE2321000016")
    details = {d["type"]: d["valueString"] for d in amb["entity"][1]["detail"]}
    assert int(details["disclosed:cosmic"]) > 0 and int(details["disclosed:npo"]) > 0
    assert "Hotfullt" not in text and "Tolvansson" not in text  # no clinical or personal content
    assert token["Authorization"].split()[1] not in text
    assert pat["purposeOfEvent"][0]["coding"][0]["code"] == "PATRQT"


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
async def test_no_audit_no_answer(facade: Any, store: str) -> None:
    async with facade(store=store) as f:
        await f.client.server.app[STORE_KEY]._disconnect()  # the store breaks under the running facade
        resp = await f.client.get(f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything")
        body = await resp.text()
        # the patient's answer needs no consent lookup: it is the audit write that fails
        own = await f.client.get(
            f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything", headers=auth("patient", pnr=TOLVAN.pnr)
        )
        own_body = await own.text()
        meta = await f.client.get(f"{BASE}/metadata")  # touches no patient: not audited, still served
    assert resp.status == 503 and own.status == 503
    for text in (body, own_body):
        assert "OperationOutcome" in text and "Tolvan" not in text and "Condition" not in text
    assert meta.status == 200


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
async def test_the_patient_reads_who_accessed_their_record_and_nothing_hidden(
    facade: Any, store: str
) -> None:
    patient = auth("patient", pnr=TOLVAN.pnr)
    me = pid(TOLVAN.pnr)
    async with facade(store=store) as f:
        _, flags = await f.get(f"{BASE}/Flag?patient={me}", headers=auth("ambulance"))
        threat = next(
            e["resource"]
            for e in flags["entry"]
            if e["resource"]["category"][0]["coding"][0]["code"] == "safety"
        )
        await f.get(f"{BASE}/Flag/{threat['id']}", headers=auth("ambulance"))  # read only the threat flag
        await f.get(f"{BASE}/Patient/{me}/$everything", headers={"X-Emergency-Access": "no-time"})
        await f.get(f"{BASE}/Condition?patient={me}", headers=auth("homecare"))
        await f.get(f"{BASE}/Condition?patient={pid(GRETA.pnr)}")  # someone else's record
        status, log = await f.get(f"{BASE}/AuditEvent?patient={me}", headers=patient)
        status_other, other = await f.get(f"{BASE}/AuditEvent?patient={pid(GRETA.pnr)}", headers=patient)
    assert status == 200 and log["total"] == 4
    events = [e["resource"] for e in log["entry"]]
    whos = [e["agent"][0]["who"]["display"] for e in events]
    assert whos.count("Ambulanssjukvården, Region Demoland") == 2
    assert (
        "Medicinkliniken avd 3, Region Demoland" in whos and "Kommunal hemsjukvård Norr, Demo kommun" in whos
    )
    assert sorted(e["purposeOfEvent"][0]["coding"][0]["code"] for e in events) == [
        "ETREAT",
        "TREAT",
        "TREAT",
        "TREAT",
    ]
    assert [e["recorded"] for e in events] == sorted((e["recorded"] for e in events), reverse=True)
    text = json.dumps(log)
    # nothing that tells what was read or hidden: no types, ids, counts, sources, clients, labels
    for leak in (
        "Flag",
        threat["id"],
        "THREAT",
        "safety",
        "disclosed",
        "cosmic",
        "npo",
        "mobimed",
        "SE2321000016-A001",
    ):
        assert leak not in text, leak
    for e in events:
        validate(e)
    assert status_other == 200 and other["total"] == 0  # another's log reads as an unknown patient's


async def test_only_patients_and_configured_auditors_read_the_log(facade: Any) -> None:
    auditor = auth("clinician", hsa_id="SE2321000016-AUD1")
    url = f"{BASE}/AuditEvent?patient={pid(TOLVAN.pnr)}"
    async with facade(access={"auditors": frozenset({"SE2321000016-AUD1"})}) as f:
        await f.get(f"{BASE}/Flag?patient={pid(TOLVAN.pnr)}", headers=auth("ambulance"))
        assert (await f.get(url))[0] == 403
        assert (await f.get(url, headers=auth("ambulance")))[0] == 403
        status, full = await f.get(url, headers=auditor)
    assert status == 200 and full["total"] == 3  # the ambulance, the refused clinician, the ambulance
    ambulance = [e["resource"] for e in full["entry"] if "Flag" in json.dumps(e["resource"])]
    assert ambulance and "disclosed:cosmic" in json.dumps(ambulance)  # the auditor sees it all


def audit_record(event_id: str, outcome: int, event: dict[str, Any]) -> AuditRecord:
    return AuditRecord(
        event_id, "2026-11-24T10:00:00.000+00:00", TOLVAN.pnr, "clinician", None, outcome, "r", event
    )


@contextlib.asynccontextmanager
async def open_store_for(kind: str, tmp_path: Path) -> AsyncIterator[Store]:
    if kind == "postgres":
        await reset_postgres()
    settings = StoreSettings(kind=kind, sqlite_path=tmp_path / "audit.sqlite", postgres_dsn=postgres_dsn())
    store = open_store(settings)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


async def test_a_large_batch_of_events_is_stored_whole(tmp_path: Path) -> None:
    async with open_store_for("sqlite", tmp_path) as store:
        records = [audit_record(f"ev-{i}", 0, {"i": i}) for i in range(450)]  # > one INSERT's worth
        await asyncio.gather(*(store.submit_audit(r) for r in records))
        stored = await store.all_audit_events()
    assert sorted(e["i"] for e in stored) == list(range(450))


async def outcomes(store: Store) -> dict[str, int]:
    """The outcome column of every stored event, by id (both stores read SQL this way)."""
    rows = await store._fetch("SELECT id, outcome FROM audit_event")  # type: ignore[attr-defined]
    return {str(r[0]): int(r[1]) for r in rows}


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_completed_event_replaces_the_begun_one_and_reads_see_every_submitted_write(
    tmp_path: Path, kind: str
) -> None:
    async with open_store_for(kind, tmp_path) as store:
        await store.submit_audit(audit_record("a", NO_OUTCOME, {"step": "begun"}))
        store.submit_audit(audit_record("a", 0, {"step": "completed"}))  # not waited for
        store.submit_audit(audit_record("b", NO_OUTCOME, {"step": "begun"}))  # both in one batch
        store.submit_audit(audit_record("b", 4, {"step": "completed"}))
        store.submit_audit(audit_record("c", NO_OUTCOME, {"step": "begun"}))
        seen = await store.all_audit_events()  # a read waits for what was submitted before it
        total, page = await store.audit_events(TOLVAN.pnr, limit=10, offset=0)
        await store.submit_audit(audit_record("a", 8, {"step": "rewritten"}))  # a completed event stays
        columns = await outcomes(store)
        final = await store.all_audit_events()
    assert sorted(e["step"] for e in seen) == ["begun", "completed", "completed"]
    assert total == 3 and len(page) == 3
    assert columns == {"a": 0, "b": 4, "c": NO_OUTCOME}
    assert "rewritten" not in json.dumps(final)


async def test_a_batch_too_large_for_one_statement_is_stored_whole_or_not_at_all(tmp_path: Path) -> None:
    async with open_store_for("sqlite", tmp_path) as store:
        records = [audit_record(f"ev-{i}", 0, {"i": i}) for i in range(150)]
        records[120] = replace(records[120], patient_pnr=None)  # type: ignore[arg-type]  (NOT NULL)
        results = await asyncio.gather(*(store.submit_audit(r) for r in records), return_exceptions=True)
        stored = await store.all_audit_events()
    assert all(isinstance(r, StoreUnavailable) for r in results)
    assert stored == []  # the first 100 rows were not kept either


async def test_a_consent_written_while_a_large_audit_batch_fails_is_kept(tmp_path: Path) -> None:
    async with open_store_for("sqlite", tmp_path) as store:
        records = [audit_record(f"ev-{i}", 0, {"i": i}) for i in range(150)]
        records[120] = replace(records[120], patient_pnr=None)  # type: ignore[arg-type]  (NOT NULL)
        pending = [store.submit_audit(r) for r in records]  # one batch: one transaction, rolled back
        await consent_to(store, [TOLVAN.pnr])  # written while that transaction is open
        await asyncio.gather(*pending, return_exceptions=True)
        kept = await store.consents(TOLVAN.pnr)
    assert len(kept) == 2  # neither consent went with the audit batch's rollback


async def test_if_the_audit_writer_breaks_nobody_waits_for_it_and_nothing_is_disclosed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_store_for("sqlite", tmp_path) as store:
        waiting = store.submit_audit(audit_record("ev-waiting", 0, {}))
        store.submit_audit(object())  # type: ignore[arg-type]  (something the writer cannot handle)
        with pytest.raises(StoreUnavailable):
            await waiting
        with pytest.raises(StoreUnavailable):
            store.submit_audit(audit_record("ev-later", 0, {}))
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "the audit writer stopped (AttributeError)" in logged
    assert "ev-waiting" in logged and "ev-later" in logged


async def test_what_the_store_cannot_store_before_it_closes_is_logged_by_event_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with open_store_for("sqlite", tmp_path) as store:
        store.drain_timeout_s = 0.2

        async def stuck(records: list[AuditRecord]) -> None:
            await asyncio.sleep(60)

        store._insert_audit = stuck  # type: ignore[method-assign]
        first = store.submit_audit(audit_record("ev-stuck", NO_OUTCOME, {}))
        await asyncio.sleep(0)  # the writer takes it
        second = store.submit_audit(audit_record("ev-queued", 0, {}))
    for done in (first, second):
        assert isinstance(done.exception(), StoreUnavailable)
    (message,) = [r.getMessage() for r in caplog.records if "stored:" in r.getMessage()]
    assert "ev-stuck" in message and "ev-queued" in message and TOLVAN.pnr not in message


async def test_closing_the_store_stores_what_was_submitted_first(tmp_path: Path) -> None:
    async with open_store_for("sqlite", tmp_path) as store:
        store.submit_audit(audit_record("a", NO_OUTCOME, {"step": "begun"}))
        store.submit_audit(audit_record("a", 0, {"step": "completed"}))
    async with open_store_for("sqlite", tmp_path) as reopened:
        assert await reopened.all_audit_events() == [{"step": "completed"}]


async def test_a_request_that_fails_unexpectedly_is_logged_too(facade: Any, monkeypatch: Any) -> None:
    from proxy.edge import routes

    async with facade() as f:
        store = f.client.server.app[STORE_KEY]

        def broken_render(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("rendering failed")

        with monkeypatch.context() as m:  # fails after the backends answered and the access was logged
            m.setattr(routes, "fhir_response", broken_render)
            late = await f.client.get(
                f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything", headers={"X-Request-ID": "late"}
            )

        async def broken_collect(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("the pipeline failed")

        with monkeypatch.context() as m:  # fails before anything was decided
            m.setattr(routes, "run", broken_collect)
            early = await f.client.get(
                f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything", headers={"X-Request-ID": "early"}
            )

        async def refused(*args: Any, **kwargs: Any) -> Any:
            raise web.HTTPTooManyRequests()

        with monkeypatch.context() as m:  # an HTTP error from below is logged with its own status
            m.setattr(routes, "run", refused)
            busy = await f.client.get(
                f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything", headers={"X-Request-ID": "busy"}
            )
        texts = await late.text() + await early.text()
        logged = {request_id(e): e for e in await events(store)}
    assert late.status == 500 and early.status == 500 and busy.status == 429
    assert logged["busy"]["outcome"] == "8"
    assert "OperationOutcome" in texts and "RuntimeError" not in texts and "failed" not in texts
    # the begun access is completed as a major failure, whether it failed before or after the
    # backends answered; nothing is recorded as disclosed by an answer that did not leave
    assert logged["late"]["outcome"] == "12" and logged["early"]["outcome"] == "12"
    assert "disclosed" not in json.dumps(logged["late"])


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
async def test_the_access_is_logged_before_the_answer_leaves_and_completed_after(
    facade: Any, store: str
) -> None:
    timeline: list[tuple[str, list[int]]] = []
    async with facade(store=store) as f:
        audit = f.client.server.app[STORE_KEY]
        insert = audit._insert_audit

        async def slow_begun_commit(records: list[AuditRecord]) -> None:
            if any(r.outcome == NO_OUTCOME for r in records):
                await asyncio.sleep(0.3)  # far longer than the backends take to answer
            await insert(records)
            timeline.append(("committed", [r.outcome for r in records]))

        audit._insert_audit = slow_begun_commit
        status, bundle = await f.get(f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything")
        timeline.append(("answered", []))
        (event,) = await events(audit)
    assert status == 200 and bundle["entry"]
    assert timeline[0] == ("committed", [NO_OUTCOME])  # the begun access, before the answer
    assert ("committed", [0]) in timeline  # then completed (before or after the answer arrived)
    assert event["outcome"] == "0" and "outcomeDesc" not in event
    assert "disclosed:cosmic" in json.dumps(event)


async def test_an_access_whose_completion_cannot_be_stored_stays_logged_as_begun(
    facade: Any, caplog: pytest.LogCaptureFixture
) -> None:
    patient = auth("patient", pnr=TOLVAN.pnr)
    async with facade() as f:
        audit = f.client.server.app[STORE_KEY]
        insert = audit._insert_audit

        async def completions_fail(records: list[AuditRecord]) -> None:
            if any(r.outcome != NO_OUTCOME for r in records):
                raise OSError("disk full")
            await insert(records)

        audit._insert_audit = completions_fail
        status, bundle = await f.get(f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything", headers=patient)
        (stored,) = await events(audit)
        audit._insert_audit = insert
        _, log = await f.get(f"{BASE}/AuditEvent?patient={pid(TOLVAN.pnr)}", headers=patient)
    assert status == 200 and bundle["entry"]  # the access was logged before the answer: it stands
    assert "outcome" not in stored and stored["outcomeDesc"] == BEGUN
    begun = next(e["resource"] for e in log["entry"] if e["resource"]["id"] == stored["id"])
    assert "outcome" not in begun
    validate(begun)
    failures = [r for r in caplog.records if "audit write failed" in r.getMessage()]
    assert failures and all(TOLVAN.pnr not in r.getMessage() for r in caplog.records)


def consents_unreadable(store: Store) -> None:
    async def unreadable(*_: str) -> Any:
        raise StoreUnavailable("consent read failed")

    # (alone, or with the page-snapshot generation)
    store.consents = store.consents_at = unreadable  # type: ignore[method-assign]


def first_audit_write_fails(store: Store) -> None:
    """The begun event's write fails (a connection blip); the store takes the next one."""
    insert = store._insert_audit
    calls: list[int] = []

    async def fails_once(records: list[AuditRecord]) -> None:
        calls.append(len(records))
        if len(calls) == 1:
            raise OSError("connection reset")
        await insert(records)

    store._insert_audit = fails_once  # type: ignore[method-assign]


@pytest.mark.parametrize("break_store", [consents_unreadable, first_audit_write_fails])
async def test_an_access_refused_because_the_store_failed_is_logged_as_failed(
    facade: Any, break_store: Callable[[Store], None]
) -> None:
    async with facade() as f:
        audit = f.client.server.app[STORE_KEY]
        break_store(audit)
        resp = await f.client.get(
            f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything", headers={"X-Request-ID": "refused"}
        )
        text = await resp.text()
        (event,) = await events(audit)
    assert resp.status == 503 and "Tolvan" not in text
    # the store took the completion: it says the access failed, and that nothing was disclosed
    assert request_id(event) == "refused" and event["outcome"] == "12"
    assert "disclosed" not in json.dumps(event)
