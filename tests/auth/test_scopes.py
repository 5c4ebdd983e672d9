"""SMART scopes as a boundary, at the authenticator: the launch patient, the maximum token lifetime,
what the scopes grant (``Principal.may``), the discovery documents and ``fhir-facade token``."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest

from proxy.auth.demo import DEMO_KID, DEMO_SECRET, demo_issuer, make_token
from proxy.auth.verify import Authenticator, AuthError
from proxy.cli import main
from proxy.fhir.ids import PatientIds
from proxy.settings import DEMO_PATIENT_ID_KEY, ConfigError, load_settings
from proxy.simulators.population import GRETA, TOLVAN

IDS = PatientIds(DEMO_PATIENT_ID_KEY)
TOLVAN_ID, GRETA_ID = IDS.encode(TOLVAN.pnr), IDS.encode(GRETA.pnr)


@pytest.fixture
def auth(tmp_path: Path) -> Authenticator:
    return Authenticator({}, tmp_path, extra_issuer=demo_issuer(), patient_ids=IDS)


def with_claims(token: str, **changes: object) -> str:
    """The demo token with claims changed (None: removed), signed again by the demo issuer."""
    claims = jwt.decode(token, options={"verify_signature": False})
    for k, v in changes.items():
        if v is None:
            claims.pop(k, None)
        else:
            claims[k] = v
    return jwt.encode(claims, DEMO_SECRET, algorithm="HS256", headers={"kid": DEMO_KID})


def refused(auth: Authenticator, token: str, match: str) -> AuthError:
    with pytest.raises(AuthError, match=match) as info:
        auth.authenticate(f"Bearer {token}")
    err = info.value
    assert err.status == 401 and err.www_authenticate.startswith("Bearer ")
    for secret in (TOLVAN.pnr, GRETA.pnr, TOLVAN_ID, GRETA_ID, token[-20:]):
        assert secret not in err.message and secret not in err.www_authenticate
    return err


# -- the launch patient --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "scopes",
    [
        "patient/*.rs",
        "user/Condition.rs patient/Observation.rs",
        "user/*.rs patient/Observation.rs?category=laboratory",  # even one that grants nothing
        "patient/Consent.cu",
    ],
)
def test_a_care_token_with_patient_scopes_needs_a_launch_patient(auth: Authenticator, scopes: str) -> None:
    for audience in ("ambulance", "homecare", "clinician"):
        refused(auth, make_token(audience, scopes=scopes), "patient/ scopes needs a launch patient")


def test_a_care_token_with_a_launch_patient_is_bound_to_it(auth: Authenticator) -> None:
    p = auth.authenticate(
        f"Bearer {make_token('clinician', scopes='user/Condition.rs patient/*.rs', patient=TOLVAN_ID)}"
    )
    assert p.launch_pnr == TOLVAN.pnr and p.patient_pnr is None
    assert p.may("s", "Observation", TOLVAN.pnr) and p.may("r", "Observation", TOLVAN.pnr)
    assert not p.may("s", "Observation", GRETA.pnr)  # patient/ scopes: the launch patient only
    assert not p.may("s", "Observation", None)  # (a patient the facade cannot name)
    assert p.may("s", "Condition", GRETA.pnr) and p.may("s", "Condition", None)  # user/: anyone
    assert not p.may("c", "Consent", TOLVAN.pnr)


@pytest.mark.parametrize("claim", ["not-an-id", "kremj5bexrrkx4tqbkshl4dvaa", 42, TOLVAN.pnr])
def test_a_launch_patient_must_be_a_patient_id_of_this_facade(auth: Authenticator, claim: object) -> None:
    token = with_claims(make_token("clinician", scopes="patient/*.rs"), patient=claim)
    refused(auth, token, "patient claim is not a Patient id of this service")


def test_a_patient_token_may_name_only_its_own_record(auth: Authenticator) -> None:
    own = auth.authenticate(f"Bearer {make_token('patient', pnr=TOLVAN.pnr, patient=TOLVAN_ID)}")
    assert own.patient_pnr == own.launch_pnr == TOLVAN.pnr
    without = with_claims(make_token("patient", pnr=TOLVAN.pnr), patient=None)
    assert auth.authenticate(f"Bearer {without}").launch_pnr == TOLVAN.pnr
    someone_else = with_claims(make_token("patient", pnr=TOLVAN.pnr), patient=GRETA_ID)
    refused(auth, someone_else, "not the patient's own record")
    refused(auth, with_claims(someone_else, patient="garbage"), "not a Patient id")


def test_without_patient_ids_no_launch_patient_is_accepted(tmp_path: Path) -> None:
    """Fail closed: an authenticator that cannot decode the claim does not take it on trust."""
    blind = Authenticator({}, tmp_path, extra_issuer=demo_issuer())
    refused(blind, make_token("clinician", scopes="patient/*.rs", patient=TOLVAN_ID), "cannot check")
    refused(blind, make_token("patient", pnr=TOLVAN.pnr, patient=TOLVAN_ID), "cannot check")


# -- the maximum token lifetime ------------------------------------------------------------------


def test_a_token_living_longer_than_the_maximum_is_refused(auth: Authenticator) -> None:
    assert auth.max_token_lifetime_s == 3600
    auth.authenticate(f"Bearer {make_token('clinician', lifetime_s=3600)}")
    refused(auth, make_token("clinician", lifetime_s=3601), "lifetime")
    refused(auth, make_token("clinician", lifetime_s=10 * 365 * 86400), "lifetime")  # exp far ahead
    # issued long ago, with a lifetime long enough to be valid still
    refused(auth, make_token("clinician", now=time.time() - 86400, lifetime_s=86400 + 600), "lifetime")
    # without iat: exp - now
    refused(auth, make_token("clinician", lifetime_s=7200, iat=None), "lifetime")
    auth.authenticate(f"Bearer {make_token('clinician', lifetime_s=600, iat=None)}")


def test_the_maximum_is_configurable(tmp_path: Path) -> None:
    auth = Authenticator({"max_token_lifetime_s": 600}, tmp_path, extra_issuer=demo_issuer())
    auth.authenticate(f"Bearer {make_token('clinician', lifetime_s=600)}")
    refused(auth, make_token("clinician", lifetime_s=601), "600 s")


@pytest.mark.parametrize("bad", [0, 59, 86_401, 10**9, -1, True, "3600", None, [3600]])
def test_the_maximum_is_validated_at_start_up(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ConfigError, match=r"^auth\.max_token_lifetime_s: expects a number of seconds"):
        Authenticator({"max_token_lifetime_s": bad}, tmp_path)


def test_settings_accept_the_key(tmp_path: Path) -> None:
    config = tmp_path / "facade.yaml"
    shipped = (Path(__file__).parents[2] / "config" / "facade.yaml").read_text(encoding="utf-8")
    config.write_text(shipped + "\nauth:\n  max_token_lifetime_s: 900\n", encoding="utf-8")
    settings = load_settings(config)
    assert Authenticator.from_settings(settings).max_token_lifetime_s == 900


# -- discovery -----------------------------------------------------------------------------------


def test_smart_configuration_lists_the_permissions_enforced(auth: Authenticator) -> None:
    doc = auth.smart_configuration("http://127.0.0.1:8080/fhir", ["Condition", "Patient"])
    scopes = set(doc["scopes_supported"])
    for ctx in ("patient", "user"):
        assert {f"{ctx}/*.r", f"{ctx}/*.s", f"{ctx}/*.rs", f"{ctx}/*.read", f"{ctx}/Condition.rs"} <= scopes
        assert {f"{ctx}/Consent.cu", f"{ctx}/Consent.rs", f"{ctx}/AuditEvent.s"} <= scopes
    assert not any("?" in s or s.startswith(("system/", "launch")) for s in scopes)
    assert not any(c.startswith(("launch-", "context-", "client-", "sso-")) for c in doc["capabilities"])
    assert {"permission-v1", "permission-v2", "permission-patient", "permission-user"} == set(
        doc["capabilities"]
    )


def test_capability_security_describes_the_enforcement(auth: Authenticator) -> None:
    text = auth.capability_security()["description"]
    for said in ("`r` for a read by id", "`s` for a search", "`c`/`u`", "launch patient", "3600 s"):
        assert said in text, said


# -- fhir-facade token ---------------------------------------------------------------------------


@pytest.mark.parametrize("given", [TOLVAN.pnr, "19121212-1212", TOLVAN_ID])
def test_cli_token_mints_a_launch_patient(given: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--audience", "ambulance", "--patient", given, "--scope", "patient/*.rs"]) == 0
    token = capsys.readouterr().out.strip()
    assert jwt.decode(token, options={"verify_signature": False})["patient"] == TOLVAN_ID
    auth = Authenticator.from_settings(load_settings(), extra_issuer=demo_issuer(), patient_ids=IDS)
    p = auth.authenticate(f"Bearer {token}")
    assert p.launch_pnr == TOLVAN.pnr and p.may("s", "Condition", TOLVAN.pnr)


def test_cli_token_defaults_carry_consent_writes_and_the_patients_own_id(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["token", "--audience", "patient", "--pnr", TOLVAN.pnr]) == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), options={"verify_signature": False})
    assert claims["patient"] == TOLVAN_ID
    assert set(claims["scope"].split()) == {"patient/*.rs", "patient/Consent.cu"}
    assert main(["token", "--audience", "homecare"]) == 0
    claims = jwt.decode(capsys.readouterr().out.strip(), options={"verify_signature": False})
    assert "patient" not in claims
    writes = {
        f"user/{t}.c" for t in ("Encounter", "Observation", "DocumentReference", "MedicationAdministration")
    }
    assert set(claims["scope"].split()) == {"user/*.rs", "user/Consent.cu", *writes}  # (a writer: issue 22)
    assert claims["exp"] - claims["iat"] == 3600


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--audience", "clinician", "--lifetime", "3601"], "--lifetime expects 1 to 3600"),
        (["--audience", "clinician", "--patient", "19121212-1213"], "launch patient"),
    ],
)
def test_cli_token_refusals(args: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and message in captured.err
