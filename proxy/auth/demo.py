"""The demo issuer: DEV-ONLY tokens for ``fhir-facade demo``, ``fhir-facade token`` and the tests.

Its HS256 secret is in this public source file, so anyone can mint any token it signs. An
``Authenticator`` trusts it only when ``demo_issuer()`` is passed in explicitly as
``extra_issuer``; configuration cannot name it (configured issuers may not use HS*), and ``serve``
never passes it.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import jwt

from proxy.auth import DEFAULT_AUDIENCE, ClaimNames, TrustedIssuer, VerificationKey
from proxy.pnr import normalise
from proxy.simulators.population import MUNICIPALITY_PROVIDER, REGION_PROVIDER, UNITS
from proxy.types import AUDIENCES

DEMO_ISSUER = "urn:fhir-facade:demo-issuer"
DEMO_KID = "demo-hs256"
# PUBLIC and DEV-ONLY: this secret is published with the source code. Never trust it in production.
DEMO_SECRET = b"fhir-facade-demo-issuer-PUBLIC-dev-only-hs256-secret"

_CLAIMS = ClaimNames()

# Per audience: client_id, sub, default scopes, (user HSA-id, care unit, care provider).
_DEFAULTS: dict[str, tuple[str, str, str, tuple[str | None, str | None, str | None]]] = {
    "ambulance": (
        "demo-mobimed",
        "demo-ambulance-nurse",
        "user/*.rs",
        ("SE2321000016-A001", UNITS["ambulans"][0], REGION_PROVIDER),
    ),
    "clinician": (
        "demo-cosmic",
        "demo-clinician",
        "user/*.rs",
        ("SE2321000016-L001", UNITS["med"][0], REGION_PROVIDER),
    ),
    "homecare": (
        "demo-homecare-tablet",
        "demo-homecare-nurse",
        "user/*.rs",
        ("SE2120001520-S001", UNITS["hemsjukvard"][0], MUNICIPALITY_PROVIDER),
    ),
    "patient": ("demo-1177", "demo-patient", "patient/*.rs", (None, None, None)),
}


def demo_issuer() -> TrustedIssuer:
    """The demo issuer, for ``Authenticator(..., extra_issuer=demo_issuer())``. DEV-ONLY."""
    return TrustedIssuer(
        issuer=DEMO_ISSUER,
        keys=(VerificationKey(DEMO_SECRET, frozenset({"HS256"}), DEMO_KID),),
        claims=_CLAIMS,
    )


def make_token(
    audience: str,
    *,
    pnr: str | None = None,
    scopes: str | None = None,
    hsa_id: str | None = None,
    care_unit: str | None = None,
    care_provider: str | None = None,
    lifetime_s: int = 3600,
    now: float | None = None,
    **overrides: Any,
) -> str:
    """A demo-issuer token for one client audience. DEV-ONLY.

    ``scopes`` is the space-separated ``scope`` claim (default ``user/*.rs``, for a patient
    ``patient/*.rs``). ``overrides`` are set as claims last; an override of None removes the claim
    (tests use it to build broken tokens).
    """
    if audience not in AUDIENCES:
        raise ValueError(f"audience must be one of {', '.join(AUDIENCES)}")
    client_id, sub, default_scopes, (d_user, d_unit, d_provider) = _DEFAULTS[audience]
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": DEMO_ISSUER,
        "aud": DEFAULT_AUDIENCE,
        "sub": sub,
        "client_id": client_id,
        "iat": issued,
        "nbf": issued,
        "exp": issued + int(lifetime_s),
        "jti": uuid.uuid4().hex,
        "scope": default_scopes if scopes is None else scopes,
        _CLAIMS.audience: audience,
    }
    if audience == "patient":
        if pnr is None:
            raise ValueError("a patient token needs the patient's personnummer (pnr)")
        normalised = normalise(pnr)
        if normalised is None:
            raise ValueError("pnr is not a valid personnummer")
        claims[_CLAIMS.pnr] = normalised
    else:
        claims[_CLAIMS.hsa_id] = hsa_id or d_user
        claims[_CLAIMS.care_unit] = care_unit or d_unit
        claims[_CLAIMS.care_provider] = care_provider or d_provider
    for k, v in overrides.items():
        if v is None:
            claims.pop(k, None)
        else:
            claims[k] = v
    return jwt.encode(claims, DEMO_SECRET, algorithm="HS256", headers={"kid": DEMO_KID})
