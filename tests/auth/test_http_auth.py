"""Authentication and scopes over HTTP: 401 with WWW-Authenticate, 403 for types outside the scopes."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

import aiohttp
import pytest
from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from proxy.auth.demo import make_token
from proxy.simulators.population import TOLVAN
from tests.conftest import BASE, auth, pid

EVERYTHING = f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything"


def unsigned(claims: dict[str, Any]) -> str:
    enc = lambda d: base64.urlsafe_b64encode(json.dumps(d).encode()).rstrip(b"=").decode()  # noqa: E731
    return f"{enc({'alg': 'none', 'typ': 'JWT'})}.{enc(claims)}."


def tampered() -> str:
    head, body, sig = make_token("ambulance").split(".")
    claims = json.loads(base64.urlsafe_b64decode(body + "=="))
    claims["client_audience"] = "clinician"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{forged}.{sig}"


BAD = {
    "missing": None,
    "not bearer": "Basic dXNlcjpwYXNz",
    "garbage": "Bearer not-a-jwt",
    "expired": f"Bearer {make_token('clinician', now=time.time() - 7200, lifetime_s=600)}",
    "wrong issuer": f"Bearer {make_token('clinician', iss='https://evil.example/')}",
    "wrong aud": f"Bearer {make_token('clinician', aud='urn:someone-else')}",
    "alg none": "Bearer "
    + unsigned(
        {
            "iss": "urn:fhir-facade:demo-issuer",
            "aud": "urn:fhir-facade",
            "sub": "x",
            "exp": time.time() + 600,
            "client_audience": "ambulance",
        }
    ),
    "tampered": f"Bearer {tampered()}",
    "no audience claim": f"Bearer {make_token('clinician', client_audience=None)}",
}


@pytest.mark.parametrize("case", sorted(BAD))
async def test_bad_credentials_are_401_with_a_bearer_challenge(facade: Any, case: str) -> None:
    header = BAD[case]
    async with facade() as f:
        headers = {"Authorization": header} if header else {}
        # a plain session: the test client would add its default clinician token
        async with aiohttp.ClientSession() as bare:
            resp = await bare.get(f.client.make_url(EVERYTHING), headers=headers)
            body = await resp.json(content_type=None)
    assert resp.status == 401
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert body["resourceType"] == "OperationOutcome"
    text = json.dumps(body) + resp.headers["WWW-Authenticate"]
    if header:
        token = header.split(" ", 1)[-1]
        assert token not in text and token[-20:] not in text  # the token is never echoed
    assert TOLVAN.pnr not in text


async def test_capability_documents_are_open(facade: Any) -> None:
    async with facade() as f:
        for path in (f"{BASE}/metadata", f"{BASE}/.well-known/smart-configuration"):
            async with aiohttp.ClientSession() as bare:
                resp = await bare.get(f.client.make_url(path))
                assert resp.status == 200, path
                doc = await resp.json(content_type=None)
            if path.endswith("metadata"):
                CapabilityStatement.model_validate(doc)
                coding = doc["rest"][0]["security"]["service"][0]["coding"][0]
                assert coding["code"] == "SMART-on-FHIR"
            else:
                assert "permission-v2" in doc["capabilities"]


async def test_scopes_limit_types(facade: Any) -> None:
    narrow = auth("clinician", scopes="user/Condition.rs user/Patient.rs")
    async with facade() as f:
        status, body = await f.get(f"{BASE}/Observation", params={"patient": pid(TOLVAN.pnr)}, headers=narrow)
        assert status == 403 and "Observation" in body["issue"][0]["diagnostics"]
        status, bundle = await f.get(EVERYTHING, params={"_count": "500"}, headers=narrow)
    assert status == 200
    assert {e["resource"]["resourceType"] for e in bundle["entry"] if e["search"]["mode"] == "match"} == {
        "Patient",
        "Condition",
    }


async def test_each_audience_works_end_to_end(facade: Any) -> None:
    """The demo's promise: only the ambulance sees Tolvan's threat flag; the patient misses NOPAT."""
    async with facade() as f:
        flags = {}
        for audience in ("ambulance", "homecare", "clinician", "patient"):
            headers = auth(audience, pnr=TOLVAN.pnr) if audience == "patient" else auth(audience)
            status, bundle = await f.get(EVERYTHING, params={"_count": "500"}, headers=headers)
            assert status == 200
            resources = [e["resource"] for e in bundle["entry"] if e["search"]["mode"] == "match"]
            flags[audience] = sum(
                1
                for r in resources
                if r["resourceType"] == "Flag"
                and any(c["code"] == "safety" for cat in r.get("category", []) for c in cat["coding"])
            )
            nopat = [r for r in resources if any(s["code"] == "NOPAT" for s in r["meta"].get("security", []))]
            assert bool(nopat) is (audience != "patient")
    assert flags == {"ambulance": 1, "homecare": 0, "clinician": 0, "patient": 0}
