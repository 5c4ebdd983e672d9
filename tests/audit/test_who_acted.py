"""The access log says who acted: a patient's event names that patient (pseudonymously); a patient's
probe of someone else's record is that asker's attempt — found by an auditor in the victim's log,
never in the victim's own view; refused emergency access and requests refused as malformed (400)
that name a patient are logged as such."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from proxy.auth.demo import DEMO_ISSUER
from proxy.edge.http import STORE_KEY
from proxy.simulators.population import GRETA, TOLVAN, UNKNOWN_PNR
from proxy.store.base import NO_OUTCOME, AuditRecord, Store
from tests.audit.test_audit import open_store_for, request_id
from tests.conftest import BASE, auth, consent_body, pid, postgres_dsn, reset_postgres, validate

AUDITOR = "SE2321000016-AUD1"
JSON = {"Content-Type": "application/fhir+json"}


def by_request(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {request_id(e): e for e in events}


def purpose(event: dict[str, Any]) -> str:
    return str(event["purposeOfEvent"][0]["coding"][0]["code"])


def details(event: dict[str, Any]) -> dict[str, str]:
    return {d["type"]: d["valueString"] for d in event["entity"][1].get("detail", [])}


async def test_a_patients_event_names_the_patient_who_acted(facade: Any) -> None:
    async with facade() as f:
        status, _ = await f.get(
            f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything",
            headers={**auth("patient", pnr=TOLVAN.pnr), "X-Request-ID": "own"},
        )
        (event,) = await f.client.server.app[STORE_KEY].all_audit_events()
    assert status == 200
    who = event["agent"][0]["who"]
    # pseudonymous: the facade's opaque id (an auditor resolves it with the deployment's key) and
    # the identity provider's subject — never the personnummer
    assert who["reference"] == f"Patient/{pid(TOLVAN.pnr)}"
    assert who["identifier"] == {"system": DEMO_ISSUER, "value": "demo-patient"}
    assert TOLVAN.pnr not in json.dumps(event)
    validate(event)


PROBES: list[tuple[str, str, dict[str, str]]] = [
    ("GET", "/Patient/{victim}/$everything", {}),
    ("GET", "/Patient/{victim}", {}),
    ("GET", "/Condition?patient={victim}", {}),
    ("GET", "/Patient?_id={victim}", {}),
    ("GET", "/Condition?patient={victim}&onset-date=garbage", {}),  # a 400 that names the victim
    ("GET", "/AuditEvent?patient={victim}", {}),
    ("GET", "/Consent?patient={victim}", {}),
    ("GET", "/Patient/{victim}/$everything", {"X-Emergency-Access": "no-time"}),
    ("POST", "/Consent", {}),  # a block on the victim's record
]


async def probe(
    f: Any, asker: dict[str, str], victim: str, i: int, tag: str = "probe"
) -> tuple[int, bytes, set[str]]:
    method, path, extra = PROBES[i]
    headers = {**asker, **extra, "X-Request-ID": f"{tag}-{i}"}
    if method == "POST":
        body = consent_body(victim, deny=True, custodians=("SE2321000016-15CQ",))
        resp = await f.client.post(f"{BASE}{path}", json=body, headers={**headers, **JSON})
    else:
        resp = await f.client.get(f"{BASE}{path.format(victim=victim)}", headers=headers)
    return resp.status, (await resp.read()).replace(victim.encode(), b"X"), set(resp.headers) - {"Date"}


@pytest.mark.parametrize("store", ["sqlite", "postgres"])
async def test_a_patients_probe_is_their_attempt_and_never_in_the_victims_view(
    facade: Any, store: str
) -> None:
    tolvan, greta = auth("patient", pnr=TOLVAN.pnr), auth("patient", pnr=GRETA.pnr)
    victim = pid(GRETA.pnr)
    async with facade(store=store, access={"auditors": frozenset({AUDITOR})}) as f:
        await f.get(f"{BASE}/Patient/{victim}", headers={**greta, "X-Request-ID": "greta-own"})
        await f.get(
            f"{BASE}/Condition?patient={victim}", headers={**auth("clinician"), "X-Request-ID": "care"}
        )
        answers = [await probe(f, tolvan, victim, i) for i in range(len(PROBES))]
        # the same probes about a patient nobody knows: the prober cannot tell the two apart
        unknown = [await probe(f, tolvan, pid(UNKNOWN_PNR), i, "unknown") for i in range(len(PROBES))]
        status, own_view = await f.get(f"{BASE}/AuditEvent?patient={victim}", headers=greta)
        _, tolvans_view = await f.get(f"{BASE}/AuditEvent?patient={pid(TOLVAN.pnr)}", headers=tolvan)
        _, audited = await f.get(
            f"{BASE}/AuditEvent?patient={victim}&_count=100", headers=auth("clinician", hsa_id=AUDITOR)
        )
        logged = by_request(await f.client.server.app[STORE_KEY].all_audit_events())
    assert answers == unknown
    assert [a[0] for a in answers] == [404, 404, 200, 200, 400, 200, 200, 403, 403]

    # the victim's own view: her own read and the clinician's, nothing of Tolvan's, no "Du själv"
    # but her own — and the totals and paging know of nothing else
    assert status == 200 and own_view["total"] == 2
    whos = sorted(e["resource"]["agent"][0]["who"]["display"] for e in own_view["entry"])
    assert whos == ["Du själv (1177)", "Medicinkliniken avd 3, Region Demoland"]
    assert tolvans_view["total"] == 0  # nor is it in the prober's view: it is no access to his record

    # every probe is logged, against the victim, as Tolvan's refused attempt
    for i in range(len(PROBES)):
        event = logged[f"probe-{i}"]
        assert event["entity"][0]["what"]["reference"] == f"Patient/{victim}"
        assert event["agent"][0]["who"]["reference"] == f"Patient/{pid(TOLVAN.pnr)}", i
        assert event["outcome"] == "8" and event["outcomeDesc"].startswith("refused"), i
        assert "disclosed" not in json.dumps(event)
        validate(event)
    # ... and the auditor finds each one in the victim's log
    found = {request_id(e["resource"]) for e in audited["entry"]}
    assert {f"probe-{i}" for i in range(len(PROBES))} <= found
    assert {"greta-own", "care"} <= found


def record(event_id: str, audience: str, *, pnr: str = TOLVAN.pnr, asker: str | None = None) -> AuditRecord:
    return AuditRecord(
        event_id, "2026-11-24T10:00:00.000+00:00", pnr, audience, None, 0, "r", {"id": event_id}, asker
    )


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_the_patients_view_of_the_store_leaves_out_other_patients_attempts(
    tmp_path: Any, kind: str
) -> None:
    async with open_store_for(kind, tmp_path) as store:
        for r in (
            record("care", "clinician"),
            record("own", "patient", asker=TOLVAN.pnr),
            record("probe", "patient", asker=GRETA.pnr),
        ):
            await store.submit_audit(r)
        total, page = await store.audit_events(TOLVAN.pnr, limit=10, offset=0, as_patient=True)
        whole_total, whole = await store.audit_events(TOLVAN.pnr, limit=10, offset=0)
        _, second_page = await store.audit_events(TOLVAN.pnr, limit=1, offset=1, as_patient=True)
    assert total == 2 and sorted(e["id"] for e in page) == ["care", "own"]
    assert len(second_page) == 1 and second_page[0]["id"] in ("care", "own")
    assert whole_total == 3 and {e["id"] for e in whole} == {"care", "own", "probe"}


async def _old_schema(kind: str, path: Any) -> None:
    """The audit_event table as it was before it recorded the asking patient, with one patient event."""
    row = ("old", "2026-11-24T10:00:00.000+00:00", TOLVAN.pnr, "patient", None, 0, "r")
    create = (
        "CREATE TABLE audit_event (seq {serial} PRIMARY KEY, id TEXT NOT NULL UNIQUE,"
        " recorded {time} NOT NULL, patient_pnr TEXT NOT NULL, audience TEXT NOT NULL,"
        " user_hsa_id TEXT, outcome {small} NOT NULL, request_id TEXT NOT NULL, event {blob} NOT NULL)"
    )
    if kind == "postgres":
        import asyncpg

        await reset_postgres()
        conn = await asyncpg.connect(postgres_dsn())
        try:
            await conn.execute(
                create.format(serial="BIGSERIAL", time="TIMESTAMPTZ", small="SMALLINT", blob="JSONB")
            )
            await conn.execute(
                "INSERT INTO audit_event (id, recorded, patient_pnr, audience, user_hsa_id, outcome,"
                " request_id, event) VALUES ($1, $2::text::timestamptz, $3, $4, $5, $6, $7, $8::text::jsonb)",
                *row,
                '{"id": "old"}',
            )
        finally:
            await conn.close()
    else:
        import sqlite3

        db = sqlite3.connect(path)
        db.execute(create.format(serial="INTEGER", time="TEXT", small="INTEGER", blob="BLOB"))
        db.execute(
            "INSERT INTO audit_event (id, recorded, patient_pnr, audience, user_hsa_id, outcome, request_id,"
            " event) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (*row, orjson.dumps({"id": "old"})),
        )
        db.commit()
        db.close()


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_store_from_before_is_upgraded_and_its_unattributed_patient_events_leave_the_view(
    tmp_path: Any, kind: str
) -> None:
    from proxy.settings import StoreSettings
    from proxy.store.base import open_store

    path = tmp_path / "audit.sqlite"
    await _old_schema(kind, path)
    store: Store = open_store(StoreSettings(kind=kind, sqlite_path=path, postgres_dsn=postgres_dsn()))
    await store.open()
    try:
        await store.submit_audit(record("new", "patient", asker=TOLVAN.pnr))
        total, page = await store.audit_events(TOLVAN.pnr, limit=10, offset=0, as_patient=True)
        whole_total, _ = await store.audit_events(TOLVAN.pnr, limit=10, offset=0)
    finally:
        await store.close()
    # an old patient event does not say which patient acted: it may be someone else's probe, so
    # the patient's own view leaves it out (fail closed); the auditor still reads it
    assert total == 1 and [e["id"] for e in page] == ["new"]
    assert whole_total == 2


async def test_refused_emergency_access_is_logged_as_a_refused_etreat_with_its_reason(facade: Any) -> None:
    everything = f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything"
    async with facade() as f:
        asks = {
            "homecare": {**auth("homecare"), "X-Emergency-Access": "no-time"},
            "patient": {**auth("patient", pnr=TOLVAN.pnr), "X-Emergency-Access": "patient-unable"},
            "bad-code": {"X-Emergency-Access": "because I want to <xyzzy>"},
            "granted": {"X-Emergency-Access": "patient-unconscious"},
        }
        statuses = {}
        for name, headers in asks.items():
            resp = await f.client.get(everything, headers={**headers, "X-Request-ID": name})
            await resp.read()
            statuses[name] = resp.status
        logged = by_request(await f.client.server.app[STORE_KEY].all_audit_events())
    assert statuses == {"homecare": 403, "patient": 403, "bad-code": 400, "granted": 200}
    for name, reason in (("homecare", "no-time"), ("patient", "patient-unable")):
        event = logged[name]
        assert purpose(event) == "ETREAT" and details(event)["emergency-reason"] == reason
        assert event["outcome"] == "8" and "refused" in event["outcomeDesc"]
        validate(event)
    assert "social-care" in logged["homecare"]["outcomeDesc"]
    bad = logged["bad-code"]  # attempted, with a reason that is not a code: never the free text
    assert purpose(bad) == "ETREAT" and details(bad)["emergency-reason"] == "not-a-reason-code"
    assert bad["outcome"] == "8" and "xyzzy" not in json.dumps(bad)
    granted = logged["granted"]
    assert purpose(granted) == "ETREAT" and granted["outcome"] == "0" and "outcomeDesc" not in granted


async def test_a_request_refused_as_malformed_that_names_a_patient_is_logged(facade: Any) -> None:
    me = pid(TOLVAN.pnr)
    patient = auth("patient", pnr=TOLVAN.pnr)
    malformed: dict[str, tuple[str, dict[str, str]]] = {
        "date": (f"/Condition?patient={me}&onset-date=garbage", {}),
        "count": (f"/Condition?subject=Patient/{me}&_count=many", {}),
        "everything-count": (f"/Patient/{me}/$everything?_count=-1", {}),
        "everything-type": (f"/Patient/{me}/$everything?_type=Nonsense", {}),
        "identifier": (f"/Patient?identifier={TOLVAN.pnr}&_summary=maybe", {}),
        "audit": (f"/AuditEvent?patient={me}&_count=x", patient),
        "consent-status": (f"/Consent?patient={me}&status=bogus", {}),
        "emergency-code": (f"/Condition?patient={me}", {"X-Emergency-Access": "now"}),
        "no-patient": ("/Condition?onset-date=garbage", {}),  # names nobody: nothing to log
        "not-our-id": ("/Condition?patient=not-one-of-ours&onset-date=garbage", {}),
    }
    async with facade() as f:
        for name, (path, headers) in malformed.items():
            resp = await f.client.get(f"{BASE}{path}", headers={**headers, "X-Request-ID": name})
            assert resp.status == 400, (name, await resp.text())
        logged = by_request(await f.client.server.app[STORE_KEY].all_audit_events())
    assert set(logged) == set(malformed) - {"no-patient", "not-our-id"}
    for name, event in logged.items():
        assert event["entity"][0]["what"]["reference"] == f"Patient/{me}", name
        assert event["outcome"] == "8" and "disclosed" not in json.dumps(event), name
        assert TOLVAN.pnr not in json.dumps(event) and "garbage" not in json.dumps(event)
        validate(event)
    assert "Condition" in logged["date"]["entity"][1]["description"]
    assert logged["everything-count"]["subtype"][0]["code"] == "everything"
    assert purpose(logged["audit"]) == "PATRQT" and purpose(logged["date"]) == "TREAT"


async def test_a_begun_probe_also_stays_out_of_the_victims_view(tmp_path: Any) -> None:
    """A probe's event logged as begun (its completion lost) is no more in the victim's view."""
    async with open_store_for("sqlite", tmp_path) as store:
        begun = AuditRecord(
            "b", "2026-11-24T10:00:00.000+00:00", TOLVAN.pnr, "patient", None, NO_OUTCOME, "r", {}, GRETA.pnr
        )
        await store.submit_audit(begun)
        total, _ = await store.audit_events(TOLVAN.pnr, limit=10, offset=0, as_patient=True)
    assert total == 0
