"""proxy.auth: bearer JWTs from trusted issuers become Principals; everything else is a clean 401."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from proxy.auth.demo import DEMO_ISSUER, DEMO_SECRET, demo_issuer, make_token
from proxy.auth.scopes import parse_scopes
from proxy.auth.verify import Authenticator, AuthError
from proxy.cli import main
from proxy.fhir.ids import PatientIds
from proxy.settings import DEMO_PATIENT_ID_KEY, ConfigError, load_settings
from proxy.types import Scope
from tests.clock import FakeClock

TOLVAN = "191212121212"
REGION_ISS = "https://idp.region.example/"
MUNI_ISS = "https://idp.kommun.example/"


IDS = PatientIds(DEMO_PATIENT_ID_KEY)


@pytest.fixture
def auth(tmp_path: Path) -> Authenticator:
    return Authenticator({}, tmp_path, extra_issuer=demo_issuer(), patient_ids=IDS)


def grants(*items: str) -> frozenset[Scope]:
    """``grants("user/Condition.rs")``: the Scope per permission letter of each item."""
    out = set()
    for item in items:
        ctx, _, rest = item.partition("/")
        rtype, _, letters = rest.partition(".")
        out.update(Scope(ctx, rtype, p) for p in letters)  # type: ignore[arg-type]
    return frozenset(out)


def bearer(token: str) -> str:
    return f"Bearer {token}"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def reject(
    auth: Authenticator, header: str | None, match: str, *, secrets: tuple[str, ...] = ()
) -> AuthError:
    """Assert a 401-worthy AuthError whose message matches and echoes neither token nor secrets."""
    with pytest.raises(AuthError) as info:
        auth.authenticate(header)
    err = info.value
    assert err.status == 401
    assert re.search(match, err.message), err.message
    assert err.www_authenticate.startswith("Bearer ")
    if header:
        token = header.partition(" ")[2].strip()
        for part in [p for p in (token, *token.split(".")) if len(p) >= 8]:
            assert part not in err.message
            assert part not in err.www_authenticate
    for s in secrets:
        assert s not in err.message
        assert s not in err.www_authenticate
    return err


def care_claims(iss: str, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {
        "iss": iss,
        "aud": "urn:fhir-facade",
        "sub": "user-17",
        "azp": "cosmic-reader",
        "iat": now,
        "exp": now + 600,
        "scope": "openid user/Condition.rs user/Observation.read",
        "client_audience": "clinician",
        "hsa_id": "SE2321000016-L042",
        "care_unit_hsa_id": "SE2321000016-MED3",
        "care_provider_hsa_id": "SE2321000016-15CQ",
    }
    claims.update(extra)
    return claims


def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def write_jwks(path: Path, keys: dict[str, rsa.RSAPrivateKey]) -> None:
    members = []
    for kid, key in keys.items():
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        members.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
    path.write_text(json.dumps({"keys": members}), encoding="utf-8")


# -- valid tokens -------------------------------------------------------------------------------


WRITES = (
    "user/Encounter.c",
    "user/Observation.c",
    "user/DocumentReference.c",
    "user/MedicationAdministration.c",
)


@pytest.mark.parametrize(
    ("audience", "unit", "provider"),
    [
        ("ambulance", "SE2321000016-AMB1", "SE2321000016-15CQ"),
        ("clinician", "SE2321000016-MED3", "SE2321000016-15CQ"),
        ("homecare", "SE2120001520-HSV1", "SE2120001520-KOMM"),
    ],
)
def test_care_audience_token_maps_to_principal(
    auth: Authenticator, audience: str, unit: str, provider: str
) -> None:
    p = auth.authenticate(bearer(make_token(audience)))
    assert p.audience.name == audience
    assert p.issuer == DEMO_ISSUER
    # the home-care nurse and the ambulance crew also document visits (issue 22)
    writes = () if audience == "clinician" else WRITES
    assert p.scopes == grants("user/*.rs", "user/Consent.cu", *writes)
    assert p.care_unit_hsa_id == unit
    assert p.care_provider_hsa_id == provider
    assert p.user_hsa_id is not None and p.user_hsa_id.startswith(provider.split("-")[0])
    assert p.patient_pnr is None
    assert p.client_id.startswith("demo-")
    assert p.subject
    assert p.may("r", "Condition", TOLVAN) and p.may("s", "Condition", None)
    assert p.may("c", "Consent", None) and not p.may("c", "Condition", None)


def test_patient_token_maps_to_principal(auth: Authenticator) -> None:
    p = auth.authenticate(bearer(make_token("patient", pnr="19121212-1212")))
    assert p.audience.name == "patient"
    assert p.patient_pnr == TOLVAN
    assert p.scopes == grants("patient/*.rs", "patient/Consent.cu")
    assert p.launch_pnr == TOLVAN
    assert (p.user_hsa_id, p.care_unit_hsa_id, p.care_provider_hsa_id) == (None, None, None)


def test_scheme_is_case_insensitive_and_explicit_values_win(auth: Authenticator) -> None:
    token = make_token(
        "clinician",
        scopes="user/Condition.rs user/Flag.c",
        hsa_id="SE2321000016-L999",
        care_unit="SE2321000016-VCN1",
    )
    p = auth.authenticate(f"bEaReR   {token} ")
    assert p.scopes == grants("user/Condition.rs", "user/Flag.c")
    assert p.may("r", "Condition", None) and not p.may("r", "Flag", None) and p.may("c", "Flag", None)
    assert p.user_hsa_id == "SE2321000016-L999"
    assert p.care_unit_hsa_id == "SE2321000016-VCN1"


def test_client_id_falls_back_to_azp_then_unknown(auth: Authenticator) -> None:
    p = auth.authenticate(bearer(make_token("ambulance", client_id=None, azp="mobimed-7")))
    assert p.client_id == "mobimed-7"
    p = auth.authenticate(bearer(make_token("ambulance", client_id=None)))
    assert p.client_id == "unknown"


def test_the_users_name_is_optional_and_a_name_that_is_no_plain_text_refuses_the_token(
    auth: Authenticator,
) -> None:
    assert (
        auth.authenticate(bearer(make_token("homecare", name="Anna Sjöström"))).user_name == "Anna Sjöström"
    )
    assert auth.authenticate(bearer(make_token("homecare", name=None))).user_name is None
    for bad in ("", "x" * 201, "Anna\nSjöström", 42, ["Anna"]):
        with pytest.raises(AuthError, match="name claim") as refused:
            auth.authenticate(bearer(make_token("homecare", name=bad)))
        assert "Anna" not in str(refused.value)  # (never the claim's value)


def test_token_without_read_scope_is_still_an_identity(auth: Authenticator) -> None:
    p = auth.authenticate(bearer(make_token("clinician", scopes="openid fhirUser")))
    assert p.scopes == frozenset()
    assert not p.may("r", "Patient", None) and not p.may("s", "Patient", None)


def test_expired_within_leeway_is_accepted(auth: Authenticator) -> None:
    expired_10s_ago = make_token("ambulance", now=time.time() - 3610, lifetime_s=3600)
    assert auth.authenticate(bearer(expired_10s_ago)).audience.name == "ambulance"


def test_nbf_within_leeway_is_accepted(auth: Authenticator) -> None:
    token = make_token("ambulance", nbf=int(time.time()) + 10, iat=None)
    assert auth.authenticate(bearer(token)).audience.name == "ambulance"


# -- rejected requests, one by one --------------------------------------------------------------


@pytest.mark.parametrize("header", [None, "", "   "])
def test_missing_header(auth: Authenticator, header: str | None) -> None:
    err = reject(auth, header, "needs an Authorization: Bearer token")
    assert err.error is None and err.code == "login"
    assert err.www_authenticate == 'Bearer realm="fhir-facade"'


def test_wrong_scheme(auth: Authenticator) -> None:
    err = reject(auth, "Basic dXNlcjpwYXNzd29yZA==", "scheme must be Bearer")
    assert err.error == "invalid_request"
    reject(auth, f"Token {make_token('ambulance')}", "scheme must be Bearer")


def test_bearer_without_token(auth: Authenticator) -> None:
    reject(auth, "Bearer ", "no token")


@pytest.mark.parametrize(
    "garbage",
    ["not-a-jwt", "a.b.c", "eyJhbGciOiJIUzI1NiJ9.e30", "x" * 20000, "abc.def.ghi jkl", "ä.ö.å"],
)
def test_garbage_token(auth: Authenticator, garbage: str) -> None:
    err = reject(auth, bearer(garbage), "not a well-formed JWT")
    assert err.error == "invalid_token"
    assert 'error="invalid_token"' in err.www_authenticate


def test_expired_beyond_leeway(auth: Authenticator) -> None:
    expired_60s_ago = make_token("ambulance", now=time.time() - 3660, lifetime_s=3600)
    err = reject(auth, bearer(expired_60s_ago), "expired")
    assert err.code == "expired"


def test_nbf_in_the_future(auth: Authenticator) -> None:
    token = make_token("ambulance", nbf=int(time.time()) + 120, iat=None)
    reject(auth, bearer(token), "not valid yet")


def test_iat_in_the_future(auth: Authenticator) -> None:
    reject(auth, bearer(make_token("ambulance", now=time.time() + 120)), "not valid yet")


def test_unknown_issuer(auth: Authenticator) -> None:
    token = make_token("ambulance", iss="https://evil.example/")
    reject(auth, bearer(token), "issuer is not trusted", secrets=("evil",))


def test_demo_issuer_is_not_trusted_unless_passed_in(tmp_path: Path) -> None:
    plain = Authenticator({}, tmp_path)
    reject(plain, bearer(make_token("ambulance")), "issuer is not trusted")
    assert plain.issuers == ()


def test_wrong_aud(auth: Authenticator) -> None:
    reject(
        auth, bearer(make_token("ambulance", aud="urn:some-other-service")), r"not issued for this service"
    )


def test_configured_aud_is_the_one_checked(tmp_path: Path) -> None:
    other = Authenticator({"audience": "urn:region:fhir"}, tmp_path, extra_issuer=demo_issuer())
    reject(other, bearer(make_token("ambulance")), "not issued for this service")
    token = make_token("ambulance", aud="urn:region:fhir")
    assert other.authenticate(bearer(token)).audience.name == "ambulance"


def test_alg_none(auth: Authenticator) -> None:
    claims = jwt.decode(make_token("ambulance"), options={"verify_signature": False})
    for alg in ("none", "None", "NONE"):
        header = b64url(json.dumps({"alg": alg, "typ": "JWT"}).encode())
        token = f"{header}.{b64url(json.dumps(claims).encode())}."
        reject(auth, bearer(token), "unsigned tokens are not accepted")


def test_tampered_payload(auth: Authenticator) -> None:
    token = make_token("ambulance")
    header, payload, signature = token.split(".")
    raw = base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    flipped = raw.replace(b"demo-ambulance-nurse", b"demo-ambulance-nursf")
    assert flipped != raw
    reject(auth, bearer(f"{header}.{b64url(flipped)}.{signature}"), "signature is invalid")


def test_signed_with_another_secret(auth: Authenticator) -> None:
    claims = jwt.decode(make_token("ambulance"), options={"verify_signature": False})
    forged = jwt.encode(
        claims, b"x" * 32 + b"not-the-demo-secret", algorithm="HS256", headers={"kid": "demo-hs256"}
    )
    reject(auth, bearer(forged), "signature is invalid")


def test_hs256_with_the_public_key_as_secret_is_refused(tmp_path: Path) -> None:
    """The classic algorithm-confusion attack against an RS256 issuer."""
    key = rsa_key()
    (tmp_path / "region.pem").write_bytes(public_pem(key))
    auth = Authenticator(
        {"issuers": [{"issuer": REGION_ISS, "pem_file": "region.pem", "algorithms": ["RS256"]}]}, tmp_path
    )
    claims = care_claims(REGION_ISS)
    assert auth.authenticate(bearer(jwt.encode(claims, key, algorithm="RS256"))).audience.name == "clinician"

    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    signing_input = f"{header}.{b64url(json.dumps(claims).encode())}"
    mac = hmac.new(public_pem(key), signing_input.encode(), hashlib.sha256).digest()
    reject(auth, bearer(f"{signing_input}.{b64url(mac)}"), "algorithm is not accepted")


def test_hs256_with_the_public_key_as_secret_is_refused_beside_the_demo_issuer(tmp_path: Path) -> None:
    """Trusting the HS256 demo issuer must not open HS256 for the RS256 issuer."""
    key = rsa_key()
    (tmp_path / "region.pem").write_bytes(public_pem(key))
    auth = Authenticator(
        {"issuers": [{"issuer": REGION_ISS, "pem_file": "region.pem"}]}, tmp_path, extra_issuer=demo_issuer()
    )
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "demo-hs256"}).encode())
    signing_input = f"{header}.{b64url(json.dumps(care_claims(REGION_ISS)).encode())}"
    for secret in (public_pem(key), DEMO_SECRET):
        mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        reject(auth, bearer(f"{signing_input}.{b64url(mac)}"), "algorithm is not accepted")


@pytest.mark.parametrize("claim", ["sub", "exp", "client_audience"])
def test_missing_required_claim(auth: Authenticator, claim: str) -> None:
    reject(auth, bearer(make_token("ambulance", **{claim: None})), f"lacks the required claim {claim}")


def test_missing_iss(auth: Authenticator) -> None:
    reject(auth, bearer(make_token("ambulance", iss=None)), "lacks the required claim iss")


def test_missing_aud(auth: Authenticator) -> None:
    reject(auth, bearer(make_token("ambulance", aud=None)), "lacks the required claim aud")


def test_unknown_audience_value(auth: Authenticator) -> None:
    token = make_token("ambulance", client_audience="superuser")
    reject(auth, bearer(token), "client_audience claim is not one of", secrets=("superuser",))


def test_patient_without_pnr(auth: Authenticator) -> None:
    token = make_token("patient", pnr=TOLVAN, patient_pnr=None)
    reject(auth, bearer(token), "needs the claim patient_pnr")


@pytest.mark.parametrize("bad", ["191212121213", "19121212", "191312121212", "abcdefghijkl"])
def test_patient_with_invalid_pnr(auth: Authenticator, bad: str) -> None:
    token = make_token("patient", pnr=TOLVAN, patient_pnr=bad)
    reject(auth, bearer(token), "not a valid personnummer", secrets=(bad, TOLVAN))


def test_patient_with_user_scope(auth: Authenticator) -> None:
    token = make_token("patient", pnr=TOLVAN, scopes="patient/*.rs user/Condition.rs")
    reject(auth, bearer(token), "only carry patient/ scopes", secrets=(TOLVAN,))
    token = make_token("patient", pnr=TOLVAN, scopes="patient/*.rs system/*.rs")
    reject(auth, bearer(token), "only carry patient/ scopes", secrets=(TOLVAN,))


@pytest.mark.parametrize("audience", ["ambulance", "homecare", "clinician"])
@pytest.mark.parametrize("claim", ["hsa_id", "care_unit_hsa_id", "care_provider_hsa_id"])
def test_care_audience_without_hsa_id(auth: Authenticator, audience: str, claim: str) -> None:
    # make_token's own hsa_id argument shadows the claim of that name: drop the claim and re-sign
    claims = jwt.decode(make_token(audience), options={"verify_signature": False})
    del claims[claim]
    token = jwt.encode(claims, DEMO_SECRET, algorithm="HS256", headers={"kid": "demo-hs256"})
    reject(auth, bearer(token), f"a {audience} token needs the claim {claim}")


@pytest.mark.parametrize(
    "unit",
    [
        "MED3-not-an-hsa-id",
        # near misses of SE2321000016-MED3: an HSA-id is compared exactly with the records' and the
        # consents' (one rule, proxy.hsa), so a spelling no record carries is refused, not accepted
        "SE2321000016-med3",
        "SE2321000016-MED3\n",
        " SE2321000016-MED3",
    ],
)
def test_care_audience_with_malformed_hsa_id(auth: Authenticator, unit: str) -> None:
    token = make_token("clinician", care_unit=unit)
    reject(auth, bearer(token), "care_unit_hsa_id claim is not an HSA-id", secrets=("MED3",))


# -- configured issuers --------------------------------------------------------------------------


def test_rs256_issuer_from_jwks_picks_the_key_by_kid(tmp_path: Path) -> None:
    old, new = rsa_key(), rsa_key()
    (tmp_path / "keys").mkdir()
    write_jwks(tmp_path / "keys" / "region-jwks.json", {"old": old, "new": new})
    auth = Authenticator(
        {"issuers": [{"issuer": REGION_ISS, "jwks_file": "keys/region-jwks.json"}], "leeway_s": 5}, tmp_path
    )
    claims = care_claims(REGION_ISS)
    for kid, key in (("old", old), ("new", new)):
        p = auth.authenticate(bearer(jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})))
        assert p.issuer == REGION_ISS
        assert p.client_id == "cosmic-reader"
        assert p.subject == "user-17"
        assert p.scopes == grants("user/Condition.rs", "user/Observation.rs")
        assert p.user_hsa_id == "SE2321000016-L042"

    wrong_kid = jwt.encode(claims, new, algorithm="RS256", headers={"kid": "old"})
    reject(auth, bearer(wrong_kid), "signature is invalid")
    unknown_kid = jwt.encode(claims, new, algorithm="RS256", headers={"kid": "rotated-away"})
    reject(auth, bearer(unknown_kid), "matches the token's key id")
    no_kid = jwt.encode(claims, new, algorithm="RS256")  # tried against both keys
    assert auth.authenticate(bearer(no_kid)).issuer == REGION_ISS
    stranger = jwt.encode(claims, rsa_key(), algorithm="RS256")
    reject(auth, bearer(stranger), "signature is invalid")
    # a demo-signed token claiming the region's iss: HS256 is not allowed for the region
    reject(auth, bearer(make_token("clinician", iss=REGION_ISS)), "algorithm is not accepted")


def test_es256_issuer_from_pem_with_renamed_claims(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "kommun.pem").write_bytes(public_pem(key))
    auth = Authenticator(
        {
            "issuers": [
                {
                    "issuer": MUNI_ISS,
                    "pem_file": "kommun.pem",
                    "algorithms": ["ES256"],
                    "claims": {"audience": "role", "hsa_id": "employeeHsaId"},
                }
            ]
        },
        tmp_path,
    )
    claims = care_claims(
        MUNI_ISS,
        role="homecare",
        employeeHsaId="SE2120001520-S007",
        care_unit_hsa_id="SE2120001520-HSV1",
        care_provider_hsa_id="SE2120001520-KOMM",
        scope="user/CarePlan.rs user/Observation.s user/Condition.c",
        client_audience=None,
        hsa_id=None,
    )
    claims = {k: v for k, v in claims.items() if v is not None}
    p = auth.authenticate(bearer(jwt.encode(claims, key, algorithm="ES256", headers={"kid": "any"})))
    assert (p.audience.name, p.user_hsa_id, p.issuer) == ("homecare", "SE2120001520-S007", MUNI_ISS)
    assert p.scopes == grants("user/CarePlan.rs", "user/Observation.s", "user/Condition.c")
    # ES256 issuer, RS256-signed token: refused before any key is tried
    reject(auth, bearer(jwt.encode(claims, rsa_key(), algorithm="RS256")), "algorithm is not accepted")
    # the default claim name is not read once renamed
    del claims["role"]
    reject(auth, bearer(jwt.encode(claims, key, algorithm="ES256")), "lacks the required claim role")


def test_certificate_pem_is_accepted(tmp_path: Path) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "idp.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    auth = Authenticator({"issuers": [{"issuer": MUNI_ISS, "pem_file": "idp.crt"}]}, tmp_path)
    token = jwt.encode(care_claims(MUNI_ISS), key, algorithm="ES256")
    assert auth.authenticate(bearer(token)).audience.name == "clinician"


# -- configuration errors ------------------------------------------------------------------------


def _issuer(**kw: Any) -> dict[str, Any]:
    return {"issuers": [{"issuer": REGION_ISS, **kw}]}


@pytest.mark.parametrize(
    ("auth_section", "match"),
    [
        (
            _issuer(jwks_file="keys/missing.json"),
            r"^auth\.issuers\[0\]\.jwks_file: cannot read keys/missing\.json",
        ),
        (_issuer(pem_file="missing.pem"), r"^auth\.issuers\[0\]\.pem_file: cannot read"),
        (_issuer(pem_file="garbage.txt"), r"^auth\.issuers\[0\]\.pem_file: .*not a PEM public key"),
        (_issuer(jwks_file="garbage.txt"), r"^auth\.issuers\[0\]\.jwks_file: .*not JSON"),
        (_issuer(pem_file="rsa.pem", algorithms=["HS256"]), r"^auth\.issuers\[0\]\.algorithms: HS256 is not"),
        (_issuer(pem_file="rsa.pem", algorithms=["none"]), r"^auth\.issuers\[0\]\.algorithms: none is not"),
        (
            _issuer(pem_file="rsa.pem", algorithms=["XS256"]),
            r"^auth\.issuers\[0\]\.algorithms: unknown algorithm",
        ),
        (
            _issuer(pem_file="rsa.pem", algorithms=["ES256"]),
            r"^auth\.issuers\[0\]\.pem_file: .*cannot verify",
        ),
        (_issuer(pem_file="private.pem"), r"^auth\.issuers\[0\]\.pem_file: .*private key"),
        (_issuer(pem_file="small.pem"), r"^auth\.issuers\[0\]\.pem_file: RSA key of 1024 bits"),
        (_issuer(pem_file="rsa.pem", jwks_file="x.json"), r"^auth\.issuers\[0\]: expects exactly one"),
        (_issuer(), r"^auth\.issuers\[0\]: expects exactly one"),
        (_issuer(pem_file="rsa.pem", claims={"pnr": ""}), r"^auth\.issuers\[0\]\.claims\.pnr:"),
        (
            _issuer(pem_file="rsa.pem", claims={"personnummer": "x"}),
            r"^auth\.issuers\[0\]\.claims: unknown key",
        ),
        (_issuer(pem_file="rsa.pem", colour="blue"), r"^auth\.issuers\[0\]: unknown key"),
        (_issuer(pem_file="rsa.pem", token_endpoint="ftp://x"), r"^auth\.issuers\[0\]\.token_endpoint:"),
        ({"issuers": [{"pem_file": "rsa.pem"}]}, r"^auth\.issuers\[0\]\.issuer:"),
        ({"issuers": {"issuer": REGION_ISS}}, r"^auth\.issuers: expects a list"),
        ({"leeway_s": 3600}, r"^auth\.leeway_s:"),
        ({"audience": ""}, r"^auth\.audience:"),
        (
            {
                "issuers": [
                    {"issuer": REGION_ISS, "pem_file": "rsa.pem"},
                    {"issuer": REGION_ISS, "pem_file": "rsa.pem"},
                ]
            },
            r"^auth\.issuers\[1\]\.issuer: names an issuer already listed",
        ),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, auth_section: dict[str, Any], match: str) -> None:
    key = rsa_key()
    (tmp_path / "rsa.pem").write_bytes(public_pem(key))
    (tmp_path / "small.pem").write_bytes(public_pem(rsa_key(1024)))
    (tmp_path / "garbage.txt").write_text("hello", encoding="utf-8")
    (tmp_path / "private.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with pytest.raises(ConfigError, match=match):
        Authenticator(auth_section, tmp_path)


def test_jwks_with_private_or_only_symmetric_keys_is_refused(tmp_path: Path) -> None:
    key = rsa_key()
    private = jwt.algorithms.RSAAlgorithm.to_jwk(key, as_dict=True)
    (tmp_path / "private.json").write_text(json.dumps({"keys": [private]}), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^auth\.issuers\[0\]\.jwks_file .*keys\[0\]: is a private key"):
        Authenticator(_issuer(jwks_file="private.json"), tmp_path)
    oct_key = {"kty": "oct", "k": b64url(b"s" * 32), "kid": "shared"}
    (tmp_path / "oct.json").write_text(json.dumps({"keys": [oct_key]}), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"^auth\.issuers\[0\]\.jwks_file: .*no signing key"):
        Authenticator(_issuer(jwks_file="oct.json"), tmp_path)


def test_demo_issuer_name_cannot_be_shadowed(tmp_path: Path) -> None:
    (tmp_path / "rsa.pem").write_bytes(public_pem(rsa_key()))
    section = {"issuers": [{"issuer": DEMO_ISSUER, "pem_file": "rsa.pem"}]}
    with pytest.raises(ConfigError, match="demo issuer"):
        Authenticator(section, tmp_path, extra_issuer=demo_issuer())


def test_the_shipped_config_compiles(tmp_path: Path) -> None:
    settings = load_settings()
    auth = Authenticator.from_settings(settings)
    assert auth.audience == "urn:fhir-facade"
    assert auth.leeway_s == 30


# -- scopes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "granted"),
    [
        ("patient/Condition.rs", {"patient/Condition.rs"}),
        ("user/*.rs", {"user/*.rs"}),
        ("patient/*.r", {"patient/*.r"}),
        ("patient/*.s", {"patient/*.s"}),
        ("patient/*.cruds", {"patient/*.cruds"}),
        ("user/Observation.rs", {"user/Observation.rs"}),
        ("patient/*.read", {"patient/*.rs"}),  # v1 read: read by id and search
        ("user/Condition.read", {"user/Condition.rs"}),
        ("patient/*.*", {"patient/*.cruds"}),
        ("patient/*.write", {"patient/*.cud"}),
        ("patient/*.c", {"patient/*.c"}),
        ("patient/*.cud", {"patient/*.cud"}),
        ("user/Consent.cu user/Consent.r", {"user/Consent.cru"}),
        ("user/Condition.read user/Condition.c", {"user/Condition.crs"}),  # v1 and v2 together
        ("patient/*.sr", set()),  # v2 permissions must be in c r u d s order
        ("patient/*.rr", set()),
        ("patient/*.", set()),
        ("patient/*.rw", set()),
        ("patient/Observation.rs?category=laboratory", set()),  # a restriction the facade cannot enforce
        ("user/Consent.cu?status=active", set()),
        ("user/*.read?x=y", set()),
        ("system/*.rs", set()),
        ("openid fhirUser launch/patient offline_access", set()),
        ("patient/condition.rs", set()),
        ("PATIENT/*.rs", set()),
        ("patient/*.rs user/Flag.r openid", {"patient/*.rs", "user/Flag.r"}),
        ("", set()),
    ],
)
def test_scope_parsing(scope: str, granted: set[str]) -> None:
    assert parse_scopes(scope) == grants(*granted)


def test_scope_claim_may_be_a_list(auth: Authenticator) -> None:
    p = auth.authenticate(bearer(make_token("clinician", scope=["user/Condition.rs", "openid"])))
    assert p.scopes == grants("user/Condition.rs")
    reject(auth, bearer(make_token("clinician", scope=42)), "scope claim must be")


# -- discovery -----------------------------------------------------------------------------------


def test_smart_configuration_is_honest(tmp_path: Path) -> None:
    auth = Authenticator({}, tmp_path, extra_issuer=demo_issuer())
    doc = auth.smart_configuration("http://127.0.0.1:8080/fhir", ["Condition", "Patient"])
    assert set(doc["capabilities"]) == {
        "permission-v2",
        "permission-v1",
        "permission-patient",
        "permission-user",
    }
    assert "patient/*.rs" in doc["scopes_supported"] and "user/Condition.rs" in doc["scopes_supported"]
    for absent in ("token_endpoint", "authorization_endpoint", "grant_types_supported", "issuer"):
        assert absent not in doc
    assert doc["trusted_issuers"] == [DEMO_ISSUER]


def test_smart_configuration_publishes_configured_endpoints(tmp_path: Path) -> None:
    (tmp_path / "rsa.pem").write_bytes(public_pem(rsa_key()))
    auth = Authenticator(
        _issuer(
            pem_file="rsa.pem",
            token_endpoint="https://idp.region.example/token",
            authorization_endpoint="https://idp.region.example/authorize",
            grant_types=["authorization_code"],
        ),
        tmp_path,
    )
    doc = auth.smart_configuration("https://fhir.region.example/fhir")
    assert doc["token_endpoint"] == "https://idp.region.example/token"
    assert doc["authorization_endpoint"] == "https://idp.region.example/authorize"
    assert doc["grant_types_supported"] == ["authorization_code"]
    assert doc["code_challenge_methods_supported"] == ["S256"]
    sec = auth.capability_security()
    uris = {e["url"]: e["valueUri"] for e in sec["extension"][0]["extension"]}
    assert uris == {
        "token": "https://idp.region.example/token",
        "authorize": "https://idp.region.example/authorize",
    }


def test_capability_security(auth: Authenticator) -> None:
    sec = auth.capability_security()
    (coding,) = sec["service"][0]["coding"]
    assert coding["system"] == "http://terminology.hl7.org/CodeSystem/restful-security-service"
    assert coding["code"] == "SMART-on-FHIR"
    assert "Bearer" in sec["description"]
    assert "extension" not in sec


# -- the demo issuer and `fhir-facade token` -----------------------------------------------------


def test_demo_secret_is_long_enough_and_labelled() -> None:
    assert len(DEMO_SECRET) >= 32
    assert b"dev-only" in DEMO_SECRET


def test_make_token_refuses_a_patient_without_a_valid_pnr() -> None:
    with pytest.raises(ValueError, match="needs the patient's personnummer"):
        make_token("patient")
    with pytest.raises(ValueError, match="not a valid personnummer"):
        make_token("patient", pnr="191212121213")
    with pytest.raises(ValueError, match="audience must be one of"):
        make_token("admin")


@pytest.mark.parametrize("audience", ["ambulance", "homecare", "clinician", "patient"])
def test_cli_token_verifies(audience: str, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["token", "--audience", audience]
    if audience == "patient":
        args += ["--pnr", TOLVAN]
    assert main(args) == 0
    token = capsys.readouterr().out.strip()
    assert "\n" not in token
    auth = Authenticator.from_settings(load_settings(), extra_issuer=demo_issuer(), patient_ids=IDS)
    p = auth.authenticate(bearer(token))
    assert p.audience.name == audience
    assert p.patient_pnr == (TOLVAN if audience == "patient" else None)
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert 3590 <= exp - time.time() <= 3610


def test_cli_token_scope_and_lifetime(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--audience", "clinician", "--scope", "user/Condition.rs", "--lifetime", "60"]) == 0
    token = capsys.readouterr().out.strip()
    p = Authenticator.from_settings(load_settings(), extra_issuer=demo_issuer()).authenticate(bearer(token))
    assert p.scopes == grants("user/Condition.rs")
    exp = jwt.decode(token, options={"verify_signature": False})["exp"]
    assert 50 <= exp - time.time() <= 70


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--audience", "patient"], "needs --pnr"),
        (["--audience", "patient", "--pnr", "191212121213"], "not a valid personnummer"),
        (["--audience", "ambulance", "--pnr", TOLVAN], "only for --audience patient"),
        (["--audience", "clinician", "--lifetime", "0"], "--lifetime"),
    ],
)
def test_cli_token_refusals(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err


def test_cli_token_unknown_audience_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["token", "--audience", "admin"])
    assert info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_a_verified_token_is_remembered_only_until_it_expires(auth: Authenticator) -> None:
    auth.clock = clock = FakeClock()
    token = make_token("clinician", now=clock.time(), lifetime_s=2)
    first = auth.authenticate(f"Bearer {token}")
    assert auth.authenticate(f"Bearer {token}") is first  # remembered: no second verification
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    with pytest.raises(AuthError):
        auth.authenticate(f"Bearer {flipped}")  # any change is a different, unverified token
    clock.advance(2.1)
    auth.leeway_s = 0.0
    with pytest.raises(AuthError):
        auth.authenticate(f"Bearer {token}")  # past exp the cache does not answer


def test_token_times_are_judged_by_the_injected_clock_not_the_machine_s(auth: Authenticator) -> None:
    """exp, nbf and iat hold at the Authenticator's clock, with the leeway, whatever the machine's
    clock says: a token long expired by the machine's clock is good at a clock a day behind it, and
    one the machine's clock would accept is refused once that clock has moved past its exp."""
    auth.clock = clock = FakeClock(epoch=time.time() - 86_400)  # a day behind the machine
    token = make_token("clinician", now=clock.time(), lifetime_s=600)  # expired, by the machine
    assert auth.authenticate(bearer(token)).audience.name == "clinician"
    clock.advance(600 + auth.leeway_s - 1)
    assert auth.authenticate(bearer(token)).audience.name == "clinician"  # within the leeway
    clock.advance(2)
    assert reject(auth, bearer(token), "expired").code == "expired"  # the remembered token too

    auth.clock = clock = FakeClock()
    fresh = make_token("clinician", now=clock.time(), lifetime_s=600)
    clock.advance(601 + auth.leeway_s)  # good by the machine's clock, expired by this one
    reject(auth, bearer(fresh), "expired")

    auth.clock = clock = FakeClock(epoch=time.time() - 3600)  # an hour behind: the token is ahead
    reject(auth, bearer(make_token("ambulance", now=time.time())), "not valid yet")  # iat
    reject(auth, bearer(make_token("ambulance", nbf=int(time.time()), iat=None)), "not valid yet")
    clock.advance(3600)
    assert auth.authenticate(bearer(make_token("ambulance", nbf=int(time.time()), iat=None)))


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", ["1900000000", True, [1], {"n": 1}, float("inf"), float("nan")])
def test_a_time_claim_that_is_not_a_number_is_refused(auth: Authenticator, claim: str, value: Any) -> None:
    token = make_token("clinician", **{claim: value})
    reject(auth, bearer(token), f"the token's {claim} is not a NumericDate")
