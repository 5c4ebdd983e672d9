"""The audiences: one ``Audience`` value each, built once from the config, looked up when a token is
verified (an unknown name is refused), read by access, PDL, audit and stored resources; adding one
is a config entry and its policy. A config naming an audience that is not one fails at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.access import decide
from proxy.access.pdl import emergency_reason
from proxy.audience import DEFAULT_AUDIENCES, ETREAT, PATRQT, TREAT, Audience, Audiences
from proxy.audit.events import begun_event, patient_view
from proxy.auth.demo import demo_issuer, make_token
from proxy.auth.verify import Authenticator, AuthError
from proxy.fhir.errors import FhirError
from proxy.fhir.ids import PatientIds
from proxy.redact.policy import compile_policy
from proxy.settings import (
    DEFAULT_CONFIG,
    DEMO_PATIENT_ID_KEY,
    REPO_ROOT,
    ConfigError,
    Settings,
    load_settings,
)
from proxy.simulators.population import TOLVAN
from proxy.types import PatientRef, Principal, Query, Scope
from tests.conftest import auth, pid

IDS = PatientIds(DEMO_PATIENT_ID_KEY)
BASE = "/fhir"


def config_with(tmp_path: Path, change: dict[str, Any], drop: tuple[str, ...] = ()) -> Path:
    doc = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    for dotted in drop:
        *parents, last = dotted.split(".")
        node = doc
        for p in parents:
            node = node[p]
        del node[last]
    for dotted, value in change.items():
        *parents, last = dotted.split(".")
        node = doc
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    doc["mappings_dir"] = str(REPO_ROOT / "mappings")
    path = tmp_path / "facade.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    return path


# A deployment with a dental audience (one entry, its policy, emergency access) and no home care.
DENTAL = {
    "audiences.dentist": {"display": "Tandvården"},
    "policy.audiences.dentist": {"sees": ["NOPAT"]},
    "access.emergency_audiences": ["ambulance", "clinician", "dentist"],
}
NO_HOMECARE = ("audiences.homecare", "policy.audiences.homecare", "writes.policy.homecare")


def test_the_shipped_config_builds_the_table_once_and_the_defaults_are_the_same(tmp_path: Path) -> None:
    shipped = load_settings().audiences
    assert shipped == DEFAULT_AUDIENCES
    assert load_settings(config_with(tmp_path, {}, drop=("audiences",))).audiences == DEFAULT_AUDIENCES
    patient, homecare = shipped["patient"], shipped["homecare"]
    ambulance, clinician = shipped["ambulance"], shipped["clinician"]
    assert (patient.is_patient, patient.purpose, patient.scope_context) == (True, PATRQT, "patient")
    assert not patient.emergency_allowed and not patient.social_care
    assert homecare.social_care and not homecare.emergency_allowed and homecare.purpose == TREAT
    assert ambulance.emergency_allowed and clinician.emergency_allowed
    assert (
        [a.name for a in shipped if not a.is_patient]
        == list(shipped.care)
        == ["ambulance", "homecare", "clinician"]
    )
    assert shipped.display("homecare") == "Kommunal hemsjukvård"


def test_emergency_access_follows_the_config_not_the_name(tmp_path: Path) -> None:
    only_ambulance = load_settings(config_with(tmp_path, {"access.emergency_audiences": ["ambulance"]}))
    assert only_ambulance.audiences["ambulance"].emergency_allowed
    assert not only_ambulance.audiences["clinician"].emergency_allowed


def test_an_added_audience_is_one_config_entry_and_its_policy(tmp_path: Path) -> None:
    settings = load_settings(config_with(tmp_path, DENTAL))
    dentist = settings.audiences["dentist"]
    assert dentist == Audience("dentist", "Tandvården", emergency_allowed=True)
    authenticator = Authenticator.from_settings(settings, extra_issuer=demo_issuer(), patient_ids=IDS)
    p = authenticator.authenticate(f"Bearer {make_token('clinician', client_audience='dentist')}")
    assert p.audience is dentist
    assert emergency_reason(p, "no-time") == "no-time"
    event = begun_event(p, interaction="read", patient_id="x", resource_types=["Condition"], request_id="r")
    assert event["purposeOfEvent"][0]["coding"][0]["code"] == TREAT
    assert event["agent"][0]["role"][0]["coding"][0]["code"] == "dentist"
    policy = compile_policy(settings.policy, settings.audiences.names)
    assert ("http://terminology.hl7.org/CodeSystem/v3-ActCode", "NOPAT") in policy.grants["dentist"]


def test_an_audience_not_configured_is_refused_at_token_verification(tmp_path: Path) -> None:
    settings = load_settings(config_with(tmp_path, {}, drop=NO_HOMECARE))
    assert "homecare" not in settings.audiences
    authenticator = Authenticator.from_settings(settings, extra_issuer=demo_issuer(), patient_ids=IDS)
    for claim in ("homecare", "Clinician", "clinician ", ["clinician"], {"name": "clinician"}, 1):
        token = make_token("clinician", client_audience=claim)
        with pytest.raises(AuthError, match="client_audience claim is not one of") as info:
            authenticator.authenticate(f"Bearer {token}")
        assert info.value.status == 401
    assert authenticator.authenticate(f"Bearer {make_token('clinician')}").audience.name == "clinician"


@pytest.mark.parametrize(
    ("change", "drop", "key"),
    [
        ({"policy.audiences.nurse": {"sees": ["R"]}}, (), r"policy\.audiences\.nurse: not an audience"),
        (
            {"policy.audiences.homecare": {"sees": ["R"]}},
            ("audiences.homecare",),
            r"policy\.audiences\.homecare",
        ),
        (
            {"policy.protected_identity.disclosed_to": ["patient", "nurse"]},
            (),
            r"policy\.protected_identity\.disclosed_to",
        ),
        (
            {"access.emergency_audiences": ["ambulance", "nurse"]},
            (),
            r"access\.emergency_audiences: 'nurse' is not",
        ),
        ({"access.emergency_audiences": ["patient"]}, (), r"access\.emergency_audiences: 'patient' is not"),
        (
            {"access.emergency_audiences": ["homecare"]},
            (),
            r"access\.emergency_audiences: homecare is social care",
        ),
        ({"access.emergency_audiences": "ambulance"}, (), r"access\.emergency_audiences: expects a list"),
        ({"access.threat_register.audiences": ["nurse"]}, (), r"access\.threat_register\.audiences"),
        ({"access.threat_register.audiences": ["patient"]}, (), r"access\.threat_register\.audiences"),
        (
            {"audiences.nurse": {"display": "x", "patient": True, "social_care": True}},
            (),
            r"audiences\.nurse: the",
        ),
        (
            {"audiences.nurse": {"display": "x", "patient": "yes"}},
            (),
            r"audiences\.nurse\.patient: expects true",
        ),
        ({"audiences.nurse": {"role": "x"}}, (), r"audiences\.nurse: unknown key"),
        ({"audiences.nurse": {"display": ""}}, (), r"audiences\.nurse\.display"),
        ({"audiences.Nurse Team": {"display": "x"}}, (), r"audiences\.Nurse Team: an audience name"),
        ({"audiences.none": {"display": "x"}}, (), r"audiences\.none: none is reserved"),
        ({"audiences": {}}, (), r"audiences: expects a mapping"),
        ({"audiences": ["ambulance"]}, (), r"audiences: expects a mapping"),
    ],
)
def test_a_config_naming_an_unknown_audience_fails_at_start_up_with_file_and_key(
    tmp_path: Path, change: dict[str, Any], drop: tuple[str, ...], key: str
) -> None:
    with pytest.raises(ConfigError, match=rf"^facade\.yaml: {key}"):
        load_settings(config_with(tmp_path, change, drop))


def principal(audience: Audience, **kw: Any) -> Principal:
    care = (
        {"launch_pnr": kw.get("patient_pnr")}
        if audience.is_patient
        else {"care_unit_hsa_id": "SE-U", "care_provider_hsa_id": "SE-P"}
    )
    return Principal(
        audience, "s", "c", "i", frozenset({Scope(audience.scope_context, "*", "s")}), **care, **kw
    )


def test_emergency_access_reads_the_audience() -> None:
    social = Audience("kommun", "Kommunen", social_care=True)
    plain = Audience("lab", "Laboratoriet")
    with pytest.raises(FhirError, match="social-care providers have no emergency access"):
        emergency_reason(principal(social), "no-time")
    with pytest.raises(FhirError, match="the lab audience has no emergency access"):
        emergency_reason(principal(plain), "no-time")
    allowed = principal(Audience("jour", "Jouren", emergency_allowed=True))
    assert emergency_reason(allowed, "patient-unconscious") == "patient-unconscious"
    event = begun_event(
        allowed,
        interaction="read",
        patient_id="x",
        resource_types=[],
        request_id="r",
        emergency_reason="no-time",
    )
    assert event["purposeOfEvent"][0]["coding"][0]["code"] == ETREAT  # per request, not per audience


def test_the_access_decision_says_who_asks_and_whether_pdl_applies() -> None:
    query = Query(
        interaction="everything",
        resource_types=frozenset({"Condition"}),
        patient=PatientRef(TOLVAN.pnr, pid(TOLVAN.pnr), "s"),
    )
    own = decide(principal(DEFAULT_AUDIENCES["patient"], patient_pnr=TOLVAN.pnr), query)
    assert (own.under_pdl, own.as_unknown, own.audience.name) == (False, False, "patient")
    other = decide(principal(DEFAULT_AUDIENCES["patient"], patient_pnr="191111111111"), query)
    assert other.as_unknown
    # a second patient audience (another portal) is a patient audience too: same rules, no names
    portal = decide(
        principal(Audience("portal", "Portalen", is_patient=True), patient_pnr="191111111111"), query
    )
    assert portal.as_unknown and not portal.under_pdl
    care = decide(principal(Audience("lab", "Laboratoriet")), query)
    assert care.under_pdl and not care.as_unknown and care.audience.name == "lab"


def test_the_patients_view_names_the_role_as_configured() -> None:
    audiences = Audiences([Audience("clinician", "Vården i regionen")])
    event = begun_event(
        principal(DEFAULT_AUDIENCES["clinician"]),
        interaction="read",
        patient_id="x",
        resource_types=[],
        request_id="r",
    )
    event["agent"][0].pop("extension")  # no care unit: the role names the asker
    view = patient_view(event, {}, audiences)["agent"][0]
    assert view["who"] == {"display": "Vården i regionen"} and view["role"] == [{"text": "Vården i regionen"}]
    gone = patient_view(event, {}, Audiences([]))["agent"][0]  # an audience no longer configured
    assert (
        view["requestor"] and gone["who"] == {"display": "clinician"} and gone["role"] == [{"text": "Vården"}]
    )


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """(for the ``facade`` fixture) the dental deployment without home care"""
    return load_settings(config_with(tmp_path, DENTAL, drop=NO_HOMECARE))


async def test_an_added_audience_reads_over_http_and_a_removed_one_is_refused(facade: Any) -> None:
    async with facade() as f:
        everything = f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything"
        dentist = auth("clinician", client_audience="dentist")
        status, bundle = await f.get(everything, headers=dentist)
        assert status == 200 and bundle["entry"]
        shown = {
            (s["system"], s["code"])
            for e in bundle["entry"]
            for s in e["resource"].get("meta", {}).get("security", ())
        }
        assert not {c for _, c in shown} & {"THREAT", "V", "R"}  # the policy grants it NOPAT only
        status, _ = await f.get(everything, headers={**dentist, "X-Emergency-Access": "no-time"})
        assert status == 200  # configured for emergency access
        status, body = await f.get(everything, headers=auth("homecare"))
        assert status == 401 and "client_audience" in body["issue"][0]["diagnostics"]
