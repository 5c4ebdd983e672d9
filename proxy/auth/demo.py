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

from proxy.audience import DEFAULT_AUDIENCES
from proxy.auth.config import DEFAULT_AUDIENCE, ClaimNames, TrustedIssuer
from proxy.auth.keys import VerificationKey
from proxy.demo_org import MUNICIPALITY_PROVIDER, REGION_PROVIDER, UNITS
from proxy.fhir.ids import PATIENT_ID_LENGTH, PatientIds
from proxy.pnr import normalise
from proxy.settings import DEMO_PATIENT_ID_KEY

DEMO_ISSUER = "urn:fhir-facade:demo-issuer"
DEMO_KID = "demo-hs256"
# PUBLIC and DEV-ONLY: this secret is published with the source code. Never trust it in production.
DEMO_SECRET = b"fhir-facade-demo-issuer-PUBLIC-dev-only-hs256-secret"

_CLAIMS = ClaimNames()
# Read anything about any patient (user/) or the own record (patient/); register and revoke
# consents, place and lift blocks (Consent.cu): what every example in the README needs.
CARE_SCOPES = "user/*.rs user/Consent.cu"
PATIENT_SCOPES = "patient/*.rs patient/Consent.cu"
# ... and, for the home-care nurse and the ambulance crew, document a visit (issue 22; the
# policy, ``writes.policy``, decides the targets)
WRITER_SCOPES = " ".join(
    [
        CARE_SCOPES,
        *(
            f"user/{t}.c"
            for t in ("Encounter", "Observation", "DocumentReference", "MedicationAdministration")
        ),
    ]
)
# The audiences it mints tokens for: the built-in ones (a deployment's own come from its issuers).
DEMO_AUDIENCES = DEFAULT_AUDIENCES

# Per audience: client_id, sub, default scopes, (user HSA-id, care unit, care provider).
_DEFAULTS: dict[str, tuple[str, str, str, tuple[str | None, str | None, str | None]]] = {
    "ambulance": (
        "demo-mobimed",
        "demo-ambulance-nurse",
        WRITER_SCOPES,
        ("SE2321000016-A001", UNITS["ambulans"][0], REGION_PROVIDER),
    ),
    "clinician": (
        "demo-cosmic",
        "demo-clinician",
        CARE_SCOPES,
        ("SE2321000016-L001", UNITS["med"][0], REGION_PROVIDER),
    ),
    "homecare": (
        "demo-homecare-tablet",
        "demo-homecare-nurse",
        WRITER_SCOPES,
        ("SE2120001520-S001", UNITS["hemsjukvard"][0], MUNICIPALITY_PROVIDER),
    ),
    "patient": ("demo-1177", "demo-patient", PATIENT_SCOPES, (None, None, None)),
}


_NAMES = {  # (synthetic: the demo's staff)
    "ambulance": "Demo Ambulanssjuksköterska",
    "clinician": "Demo Läkare",
    "homecare": "Demo Distriktssköterska",
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
    patient: str | None = None,
    scopes: str | None = None,
    hsa_id: str | None = None,
    care_unit: str | None = None,
    care_provider: str | None = None,
    lifetime_s: int = 3600,
    now: float | None = None,
    **overrides: Any,
) -> str:
    """A demo-issuer token for one client audience. DEV-ONLY.

    ``scopes`` is the space-separated ``scope`` claim (default ``CARE_SCOPES``, for a patient
    ``PATIENT_SCOPES``). ``patient`` is the SMART launch patient (the ``patient`` claim): a Patient
    id, or a personnummer made into the demo's id (the facade under the demo key: ``demo`` and the
    tests); a patient token names its own patient unless given another. ``overrides`` are set as
    claims last; an override of None removes the claim (tests use it to build broken tokens).
    """
    if audience not in DEMO_AUDIENCES or audience not in _DEFAULTS:
        raise ValueError(f"audience must be one of {', '.join(DEMO_AUDIENCES.names)}")
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
    if DEMO_AUDIENCES[audience].is_patient:
        if pnr is None:
            raise ValueError("a patient token needs the patient's personnummer (pnr)")
        normalised = normalise(pnr)
        if normalised is None:
            raise ValueError("pnr is not a valid personnummer")
        claims[_CLAIMS.pnr] = normalised
        if patient is None:
            patient = normalised
    else:
        claims[_CLAIMS.hsa_id] = hsa_id or d_user
        claims[_CLAIMS.care_unit] = care_unit or d_unit
        claims[_CLAIMS.care_provider] = care_provider or d_provider
        claims[_CLAIMS.user_name] = _NAMES[audience]
    if patient is not None:
        claims[_CLAIMS.launch_patient] = _patient_id(patient)
    for k, v in overrides.items():
        if v is None:
            claims.pop(k, None)
        else:
            claims[k] = v
    return jwt.encode(claims, DEMO_SECRET, algorithm="HS256", headers={"kid": DEMO_KID})


def _patient_id(patient: str) -> str:
    """A Patient id as given, or a personnummer's id under the demo key."""
    if len(patient) == PATIENT_ID_LENGTH and patient.isalnum():
        return patient
    pnr = normalise(patient)
    if pnr is None:
        raise ValueError("the launch patient must be a Patient id or a valid personnummer")
    return PatientIds(DEMO_PATIENT_ID_KEY).encode(pnr)
