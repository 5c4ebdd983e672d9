"""SMART scopes are a boundary, over HTTP — probed as an attacker would.

* ``patient/`` scopes bind every audience to the token's launch patient: a care token asking about
  anyone else under them gets 403 (search, POST _search, read, $everything, Consent, AuditEvent);
  the patient audience keeps its "unknown patient" answer.
* v2 ``r`` (read by id) and ``s`` (search, $everything) are distinct; v1 ``read`` grants both.
* Consent writes need ``c``/``u`` (v1 ``write``); Consent and AuditEvent reads ``r``/``s``.
* A refusal is a 403 OperationOutcome naming the scope missing, never echoing the token.
"""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
import pytest

from proxy.auth.demo import make_token
from proxy.simulators.population import GRETA, LENNART, REGION_PROVIDER, TOLVAN
from tests.conftest import BASE, auth, consent_body, pid

JSON = {"Content-Type": "application/fhir+json"}
A, B = TOLVAN, GRETA  # the launch patient, and someone else
AUDITOR = "SE2321000016-AUD1"


def bound_to_a(
    scopes: str = "patient/*.rs patient/Consent.cu", audience: str = "clinician"
) -> dict[str, str]:
    """A care token whose patient/ scopes are for A (its launch patient)."""
    return auth(audience, scopes=scopes, patient=pid(A.pnr), hsa_id=AUDITOR)


def forbidden(status: int, body: Any, headers: dict[str, str], *needs: str) -> None:
    """A 403 OperationOutcome that names the scope(s) missing and echoes nothing of the token."""
    assert status == 403, body
    assert body["resourceType"] == "OperationOutcome"
    text = body["issue"][0]["diagnostics"]
    for need in needs:
        assert need in text, text
    token = headers["Authorization"].split(" ", 1)[1]
    dumped = json.dumps(body)
    for part in [token, *token.split(".")]:
        assert part not in dumped
    for secret in (A.pnr, B.pnr, pid(A.pnr), pid(B.pnr)):
        assert secret not in dumped


async def first_id(f: Any, rtype: str, patient: str) -> str:
    status, bundle = await f.get(f"{BASE}/{rtype}", params={"patient": pid(patient)})
    assert status == 200 and bundle["entry"], bundle
    return str(bundle["entry"][0]["resource"]["id"])


async def search_post(f: Any, rtype: str, form: dict[str, str], headers: dict[str, str]) -> tuple[int, Any]:
    resp = await f.client.post(f"{BASE}/{rtype}/_search", data=form, headers=headers)
    return resp.status, await resp.json(content_type=None)


async def post_consent(f: Any, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    resp = await f.client.post(f"{BASE}/Consent", json=body, headers={**JSON, **(headers or {})})
    return resp.status, await resp.json(content_type=None)


async def put_consent(f: Any, body: Any, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    resp = await f.client.put(f"{BASE}/Consent/{body['id']}", json=body, headers={**JSON, **(headers or {})})
    return resp.status, await resp.json(content_type=None)


# -- patient/ scopes: the launch patient only ----------------------------------------------------


async def test_a_care_token_bound_to_a_cannot_ask_about_b(facade: Any) -> None:
    token = bound_to_a()
    cover = "patient/ scopes cover only its launch patient"
    async with facade(access={"auditors": frozenset({AUDITOR})}) as f:
        b_plan = await first_id(f, "CarePlan", B.pnr)
        _, b_consents = await f.get(f"{BASE}/Consent", params={"patient": pid(B.pnr)})
        b_consent = b_consents["entry"][0]["resource"]["id"]

        status, body = await f.get(f"{BASE}/Condition", params={"patient": pid(B.pnr)}, headers=token)
        forbidden(status, body, token, "user/Condition.s", cover)
        status, body = await search_post(f, "CarePlan", {"patient": pid(B.pnr)}, token)
        forbidden(status, body, token, "user/CarePlan.s", cover)
        status, body = await f.get(f"{BASE}/Patient", params={"_id": pid(B.pnr)}, headers=token)
        forbidden(status, body, token, "user/Patient.s")
        status, body = await f.get(f"{BASE}/CarePlan/{b_plan}", headers=token)
        forbidden(status, body, token, "user/CarePlan.r", cover)
        status, body = await f.get(f"{BASE}/Patient/{pid(B.pnr)}", headers=token)
        forbidden(status, body, token, "user/Patient.r")
        status, body = await f.get(f"{BASE}/Patient/{pid(B.pnr)}/$everything", headers=token)
        forbidden(status, body, token, "$everything", "user/*.s", cover)
        # Consent and the access log: the same boundary
        status, body = await f.get(f"{BASE}/Consent", params={"patient": pid(B.pnr)}, headers=token)
        forbidden(status, body, token, "user/Consent.s")
        status, body = await f.get(f"{BASE}/AuditEvent", params={"patient": pid(B.pnr)}, headers=token)
        forbidden(status, body, token, "user/AuditEvent.s")
        status, body = await post_consent(f, consent_body(pid(B.pnr), recipient=REGION_PROVIDER), token)
        forbidden(status, body, token, "user/Consent.c")
        # another patient's consent by id: as if there were none (its existence is not confirmed)
        status, body = await f.get(f"{BASE}/Consent/{b_consent}", headers=token)
        assert status == 404, body
        b_resource = b_consents["entry"][0]["resource"]
        status, body = await put_consent(f, {**b_resource, "status": "inactive"}, token)
        assert status == 404, body
        status, body = await f.get(f"{BASE}/Consent/{b_consent}")  # (it is there, for user/ scopes)
        assert status == 200

        # an id that names nobody is refused the same way: nothing is learnt from the difference
        status, body = await f.get(f"{BASE}/Condition", params={"patient": "not-an-id"}, headers=token)
        forbidden(status, body, token, "user/Condition.s")

        # and the launch patient works throughout
        a = pid(A.pnr)
        status, bundle = await f.get(f"{BASE}/Condition", params={"patient": a}, headers=token)
        assert status == 200 and bundle["total"] > 0
        assert (await search_post(f, "Condition", {"patient": a}, token))[0] == 200
        assert (await f.get(f"{BASE}/Patient/{a}/$everything", headers=token))[0] == 200
        condition = await first_id(f, "Condition", A.pnr)
        assert (await f.get(f"{BASE}/Condition/{condition}", headers=token))[0] == 200
        assert (await f.get(f"{BASE}/Consent", params={"patient": a}, headers=token))[0] == 200
        assert (await f.get(f"{BASE}/AuditEvent", params={"patient": a}, headers=token))[0] == 200
        status, created = await post_consent(f, consent_body(a, recipient=REGION_PROVIDER), token)
        assert status == 201, created
        status, body = await put_consent(f, {**created, "status": "inactive"}, token)
        assert status == 200, body


async def test_user_and_patient_scopes_together(facade: Any) -> None:
    """user/ scopes keep working for any patient beside patient/ scopes for the launch patient."""
    token = bound_to_a("user/Condition.rs patient/*.rs")
    lennart = pid(LENNART.pnr)
    async with facade() as f:
        assert (await f.get(f"{BASE}/Condition", params={"patient": lennart}, headers=token))[0] == 200
        status, body = await f.get(f"{BASE}/Observation", params={"patient": lennart}, headers=token)
        forbidden(status, body, token, "user/Observation.s", "patient/ scopes cover only its launch patient")
        everything = {"_count": "500"}
        status, bundle = await f.get(
            f"{BASE}/Patient/{pid(A.pnr)}/$everything", params=everything, headers=token
        )
        assert status == 200
        assert {"Patient", "Flag", "Condition", "Observation"} <= matches(bundle)
        status, bundle = await f.get(
            f"{BASE}/Patient/{lennart}/$everything", params=everything, headers=token
        )
        assert status == 200
        assert matches(bundle) == {"Condition"}  # what user/ grants, and nothing else


def matches(bundle: dict[str, Any]) -> set[str]:
    return {e["resource"]["resourceType"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"}


async def test_the_patient_audience_keeps_the_unknown_patient_answer(facade: Any) -> None:
    me = auth("patient", pnr=A.pnr)
    async with facade() as f:
        b_plan = await first_id(f, "CarePlan", B.pnr)
        unknown = "01010101"  # no one: compare with a patient nobody knows
        status, other = await f.get(f"{BASE}/CarePlan", params={"patient": pid(B.pnr)}, headers=me)
        assert status == 200 and other["total"] == 0
        assert (await f.get(f"{BASE}/CarePlan/{b_plan}", headers=me))[0] == 404
        assert (await f.get(f"{BASE}/Patient/{pid(B.pnr)}/$everything", headers=me))[0] == 404
        assert (await f.get(f"{BASE}/CarePlan", params={"patient": unknown}, headers=me))[0] == 200
        # a patient token whose launch patient is someone else: refused outright
        someone_else = auth("patient", pnr=A.pnr, patient=pid(B.pnr))
        async with aiohttp.ClientSession() as bare:
            resp = await bare.get(
                f.client.make_url(f"{BASE}/CarePlan"), params={"patient": pid(B.pnr)}, headers=someone_else
            )
            body = await resp.json(content_type=None)
        assert resp.status == 401 and "own record" in body["issue"][0]["diagnostics"]
        assert pid(B.pnr) not in json.dumps(body) + resp.headers["WWW-Authenticate"]


# -- r and s are distinct ------------------------------------------------------------------------


async def test_read_only_and_search_only_scopes(facade: Any) -> None:
    read_only, search_only = auth("clinician", scopes="user/*.r"), auth("clinician", scopes="user/*.s")
    t = pid(A.pnr)
    async with facade() as f:
        condition = await first_id(f, "Condition", A.pnr)
        # r: read by id, no search
        assert (await f.get(f"{BASE}/Condition/{condition}", headers=read_only))[0] == 200
        assert (await f.get(f"{BASE}/Patient/{t}", headers=read_only))[0] == 200
        status, body = await f.get(f"{BASE}/Condition", params={"patient": t}, headers=read_only)
        forbidden(status, body, read_only, "search (s) of Condition", "user/Condition.s")
        status, body = await search_post(f, "Condition", {"patient": t}, read_only)
        forbidden(status, body, read_only, "user/Condition.s")
        status, body = await f.get(f"{BASE}/Patient", params={"_id": t}, headers=read_only)
        forbidden(status, body, read_only, "user/Patient.s")
        status, body = await f.get(f"{BASE}/Patient/{t}/$everything", headers=read_only)
        forbidden(status, body, read_only, "$everything", "user/*.s")
        # s: search and $everything, no read by id
        assert (await f.get(f"{BASE}/Condition", params={"patient": t}, headers=search_only))[0] == 200
        assert (await f.get(f"{BASE}/Patient/{t}/$everything", headers=search_only))[0] == 200
        status, body = await f.get(f"{BASE}/Condition/{condition}", headers=search_only)
        forbidden(status, body, search_only, "read (r) of Condition", "user/Condition.r")
        status, body = await f.get(f"{BASE}/Patient/{t}", headers=search_only)
        forbidden(status, body, search_only, "user/Patient.r")


async def test_everything_returns_only_the_types_granted_search(facade: Any) -> None:
    mixed = auth("clinician", scopes="user/Patient.s user/Condition.s user/Observation.r user/Flag.read")
    async with facade() as f:
        status, bundle = await f.get(
            f"{BASE}/Patient/{pid(A.pnr)}/$everything", params={"_count": "500"}, headers=mixed
        )
    assert status == 200
    assert matches(bundle) == {"Patient", "Condition", "Flag"}  # Observation: granted r only


@pytest.mark.parametrize(
    ("scopes", "search", "read"),
    [
        ("user/Condition.read", 200, 200),  # v1: both
        ("user/Condition.*", 200, 200),
        ("user/Condition.r user/Condition.read", 200, 200),
        ("user/Condition.r user/Observation.read", 403, 200),
        ("user/Condition.s user/Condition.c", 200, 403),
        ("user/Condition.rs?code=I10", 403, 403),  # a restriction the facade cannot enforce: nothing
        ("user/*.rs?category=problem-list-item user/Condition.s", 200, 403),
        ("user/Condition.write", 403, 403),
        ("openid fhirUser launch/patient", 403, 403),
    ],
)
async def test_v1_v2_mixtures_and_restrictions(facade: Any, scopes: str, search: int, read: int) -> None:
    token = auth("clinician", scopes=scopes)
    async with facade() as f:
        condition = await first_id(f, "Condition", A.pnr)
        status, body = await f.get(f"{BASE}/Condition", params={"patient": pid(A.pnr)}, headers=token)
        assert status == search, body
        if status == 403:
            forbidden(status, body, token, "user/Condition.s")
        status, body = await f.get(f"{BASE}/Condition/{condition}", headers=token)
        assert status == read, body
        if status == 403:
            forbidden(status, body, token, "user/Condition.r")


# -- Consent and the access log ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scopes", "create", "update"),
    [
        ("user/*.rs", 403, 403),
        ("user/*.read", 403, 403),
        ("user/Consent.rs", 403, 403),
        ("user/Consent.c?status=active user/Consent.rs", 403, 403),
        ("user/Consent.crs", 201, 403),
        ("user/Consent.rus", 403, 200),
        ("user/Consent.write", 201, 200),  # v1
        ("user/Consent.*", 201, 200),
        ("user/*.cruds", 201, 200),
        ("patient/Consent.cu", 201, 200),  # (its launch patient, A)
    ],
)
async def test_consent_writes_need_a_write_scope(facade: Any, scopes: str, create: int, update: int) -> None:
    token = bound_to_a(scopes)
    async with facade(consent=False) as f:
        body = consent_body(pid(A.pnr), recipient=REGION_PROVIDER)
        status, created = await post_consent(f, body, token)
        assert status == create, created
        if status == 403:
            forbidden(status, created, token, "create (c) of Consent", "user/Consent.c")
        status, existing = await post_consent(f, body)  # the default demo token may
        assert status == 201
        status, answer = await put_consent(f, {**existing, "status": "inactive"}, token)
        assert status == update, answer
        if status == 403:
            forbidden(status, answer, token, "update (u) of Consent", "user/Consent.u")
        status, read = await f.get(f"{BASE}/Consent/{existing['id']}")
        assert read["status"] == ("inactive" if update == 200 else "active")


async def test_consent_and_audit_reads_need_their_read_scopes(facade: Any) -> None:
    t = pid(A.pnr)
    writes_only = auth("clinician", scopes="user/Consent.cu user/AuditEvent.r", hsa_id=AUDITOR)
    search_only = auth("clinician", scopes="user/Consent.s user/AuditEvent.s", hsa_id=AUDITOR)
    async with facade(access={"auditors": frozenset({AUDITOR})}) as f:
        _, bundle = await f.get(f"{BASE}/Consent", params={"patient": t})
        consent = bundle["entry"][0]["resource"]["id"]
        status, body = await f.get(f"{BASE}/Consent", params={"patient": t}, headers=writes_only)
        forbidden(status, body, writes_only, "user/Consent.s")
        status, body = await f.get(f"{BASE}/Consent/{consent}", headers=writes_only)
        forbidden(status, body, writes_only, "user/Consent.r")
        status, body = await f.get(f"{BASE}/Consent/no-such-consent", headers=writes_only)
        forbidden(status, body, writes_only, "user/Consent.r")  # before any lookup: same answer
        status, body = await f.get(f"{BASE}/AuditEvent", params={"patient": t}, headers=writes_only)
        forbidden(status, body, writes_only, "user/AuditEvent.s")

        assert (await f.get(f"{BASE}/Consent", params={"patient": t}, headers=search_only))[0] == 200
        assert (await f.get(f"{BASE}/AuditEvent", params={"patient": t}, headers=search_only))[0] == 200
        status, body = await f.get(f"{BASE}/Consent/{consent}", headers=search_only)
        forbidden(status, body, search_only, "user/Consent.r")

        # the patient: their own log needs patient/AuditEvent.s (or patient/*.s)
        for scopes, expected in (("patient/Condition.rs", 403), ("patient/*.r", 403), ("patient/*.s", 200)):
            mine = auth("patient", pnr=A.pnr, scopes=scopes)
            status, body = await f.get(f"{BASE}/AuditEvent", params={"patient": t}, headers=mine)
            assert status == expected, (scopes, body)
            if status == 403:
                forbidden(status, body, mine, "patient/AuditEvent.s")


# -- the token's lifetime ------------------------------------------------------------------------


async def test_a_long_lived_token_is_refused(facade: Any) -> None:
    long_lived = make_token("ambulance", lifetime_s=30 * 86400)
    old_but_valid = make_token("ambulance", now=time.time() - 7 * 86400, lifetime_s=7 * 86400 + 600)
    async with facade() as f:
        for token in (long_lived, old_but_valid):
            async with aiohttp.ClientSession() as bare:
                resp = await bare.get(
                    f.client.make_url(f"{BASE}/Patient/{pid(A.pnr)}/$everything"),
                    headers={"Authorization": f"Bearer {token}"},
                )
                body = await resp.json(content_type=None)
            assert resp.status == 401, body
            assert resp.headers["WWW-Authenticate"].startswith(
                'Bearer realm="fhir-facade", error="invalid_token"'
            )
            assert "lifetime" in body["issue"][0]["diagnostics"]
            assert token[-20:] not in json.dumps(body) + resp.headers["WWW-Authenticate"]
