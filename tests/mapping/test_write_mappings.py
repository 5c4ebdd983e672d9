"""Write mappings (issue 22): ``mappings/<folder>/write/*.yaml`` compiled at start-up with the read
side's error reporting, and a FHIR home visit rendered into Viva's and Cosmic's dialects."""

from __future__ import annotations

import base64
import copy
import shutil
import textwrap
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.cli import main
from proxy.fhir.ids import ResourceIds
from proxy.fhir.transaction import WRITTEN_SYSTEM
from proxy.mapping.registry import REQUEST_CONTEXT, load_mappings
from proxy.mapping.validate import MappingError
from proxy.mapping.write import (
    WriteMapping,
    WriteMappingError,
    WriteMappings,
    compile_write_mappings,
)
from proxy.mappingcheck import WRITER, home_visit
from proxy.settings import DEMO_PATIENT_ID_KEY

ROOT = Path(__file__).resolve().parents[2]
MAPPINGS = ROOT / "mappings"
BACKENDS = [("cosmic", "cosmic"), ("viva", "viva"), ("npo", "npo")]
VARS = {
    "cosmic": ["system_hsa_id", "ambulance_service_hsa_id"],
    "viva": ["system_hsa_id"],
    "npo": ["logical_address"],
}
PNR = "191212121212"


@pytest.fixture(scope="module")
def writes() -> WriteMappings:
    return compile_write_mappings(MAPPINGS, BACKENDS, variables=VARS)


def ctx(identifier: str) -> dict[str, str]:
    return {**WRITER, "pnr": PNR, "pnr_dash": "19121212-1212", "identifier": identifier}


def by_type(kind: str) -> dict[str, Any]:
    """The sample home visit's resources, keyed by a short name."""
    names = ["enc", "bp", "hr", "rr", "temp", "spo2", "acvpu", "note", "given", "notgiven"]
    return dict(zip(names, home_visit("patient-1"), strict=True))[kind]


def render(writes: WriteMappings, backend: str, resource: dict[str, Any]) -> tuple[WriteMapping, Any, Any]:
    mapping = writes.select(backend, resource)
    assert mapping is not None, (backend, resource["resourceType"])
    request = mapping.render(resource, ctx(resource["identifier"][0]["value"]))
    return mapping, request, orjson.loads(request.body)


# ---- compiling ----------------------------------------------------------------------------------


def test_every_shipped_write_mapping_compiles_and_covers_the_home_visit(writes: WriteMappings) -> None:
    assert writes.backends == {"viva", "cosmic"}  # NPÖ is read-only: no write/ folder
    for rtype in ("Encounter", "Observation", "DocumentReference", "MedicationAdministration"):
        assert set(writes.for_type(rtype)) == {"viva", "cosmic"}, rtype
    for resource in home_visit("p"):
        for backend in ("viva", "cosmic"):
            assert writes.select(backend, resource) is not None, (
                backend,
                resource["code"] if "code" in resource else resource["resourceType"],
            )


def test_the_read_registry_ignores_the_write_folder() -> None:
    mapped = load_mappings(
        MAPPINGS,
        {b: (folder, frozenset(VARS.get(b, ()))) for b, folder in BACKENDS},
        ids=ResourceIds(DEMO_PATIENT_ID_KEY),
    )
    assert not [m.name for m in mapped.all() if "write" in m.name or "write" in m.file]


def _broken(tmp_path: Path, text: str, name: str = "broken.yaml") -> Path:
    root = tmp_path / "mappings"
    shutil.copytree(MAPPINGS, root)
    (root / "viva" / "write" / name).write_text(textwrap.dedent(text), encoding="utf-8")
    return root


GOOD = """
resource: Encounter
request: {method: POST, path: /viva/api/v2/hembesok}
body:
  personnummer: "{@pnr}"
"""


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"extra": 1}, "(top): unknown key(s) ['extra']"),
        ({"resource": "Bundle"}, "resource: 'Bundle' is not one of"),
        ({"request": {"method": "GET", "path": "/x"}}, "request.method: expects one of"),
        ({"request": {"method": "POST", "path": "x"}}, "request.path: expects an absolute path"),
        (
            {"request": {"method": "POST", "path": "/x/{@nope}"}},
            "request: template uses an unknown context name",
        ),
        (
            {"request": {"method": "POST", "path": "/x", "headers": {"Idempotency-Key": "k"}}},
            "request.headers: Idempotency-Key and Content-Type are set by the facade",
        ),
        ({"body": {"a": "{@nope}"}}, "body.a: unknown context name '@nope'"),
        (
            {"body": {"a": {"$path": "status", "$format": "yyyy"}}},
            "body.a.$format: expects a strftime format",
        ),
        (
            {"body": {"a": {"$path": "status", "$map": "no-such-map"}}},
            "body.a.$map: unknown code map 'no-such-map'",
        ),
        ({"body": {"a": {"$path": "status", "$required": "yes"}}}, "body.a.$required: expects true"),
        (
            {"body": {"a": {"$path": "status", "$required": True, "$default": "x"}}},
            "body.a.$required: a constant $default",
        ),
        ({"body": {"a": {"$ref": {"mapping": "x", "id": "y"}}}}, "body.a: $ref belongs to read mappings"),
        ({"when": {"path": "status", "same_as": 1}}, "when: a condition needs exactly one of"),
        ({"body": "text"}, "body: expects the dialect's JSON object"),
    ],
)
def test_a_broken_write_mapping_names_its_file_and_field(
    tmp_path: Path, change: dict[str, Any], where: str
) -> None:
    import yaml

    doc = {**yaml.safe_load(GOOD), **change}
    root = _broken(tmp_path, yaml.safe_dump(doc, allow_unicode=True))
    with pytest.raises(MappingError) as caught:
        compile_write_mappings(root, BACKENDS, variables=VARS)
    assert str(caught.value).startswith("mappings/viva/write/broken.yaml: ")
    assert where in str(caught.value)


def test_a_missing_required_key_is_named(tmp_path: Path) -> None:
    root = _broken(tmp_path, "resource: Encounter\nbody: {a: 1}\n")
    with pytest.raises(MappingError, match=r"mappings/viva/write/broken.yaml: request: is required"):
        compile_write_mappings(root, BACKENDS, variables=VARS)


def test_mappings_check_compiles_the_write_mappings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A broken write mapping fails `fhir-facade mappings check` (so CI catches it) with file and key."""
    root = _broken(tmp_path, GOOD.replace('"{@pnr}"', '"{@nobody}"'))
    config = (ROOT / "config" / "facade.yaml").read_text(encoding="utf-8")
    (tmp_path / "facade.yaml").write_text(f"{config}\nmappings_dir: {root}\n", encoding="utf-8")
    assert main(["--config", str(tmp_path / "facade.yaml"), "mappings", "check"]) == 2
    err = capsys.readouterr().err
    assert "mappings/viva/write/broken.yaml: body.personnummer: unknown context name '@nobody'" in err


# ---- rendering: golden-ish bodies, each type, each target --------------------------------------


def test_the_home_visit_encounter(writes: WriteMappings) -> None:
    enc = by_type("enc")
    _, viva, vb = render(writes, "viva", enc)
    assert (viva.method, viva.path) == ("POST", "/viva/api/v2/hembesok")
    assert viva.headers["Content-Type"] == "application/json"
    assert vb == {
        "personnummer": PNR,
        "externtId": enc["identifier"][0]["value"],
        "start": "202603101000",  # 10:00+01:00 is Swedish winter time
        "slut": "202603101045",
        "besokstyp": "HEMSJUKVARD",
        "status": "UTFORT",
        "utforare": "Sara Sjuksköterska",
        "enhet": {"hsaId": "SE2120001520-HSV1", "vardgivareHsaId": "SE2120001520-KOMM"},
    }
    _, cosmic, cb = render(writes, "cosmic", enc)
    assert cosmic.path == "/cosmic/api/v1/patients/19121212-1212/carecontacts"
    assert cb == {
        "externalId": enc["identifier"][0]["value"],
        "contactType": "HOME",
        "state": "FINISHED",
        "startAt": "2026-03-10 10:00",
        "endAt": "2026-03-10 10:45",
        "responsible": {"hsaId": "SE2120001520-SSK1", "name": "Sara Sjuksköterska"},
        "careUnit": {"hsaId": "SE2120001520-HSV1", "providerHsaId": "SE2120001520-KOMM"},
    }


def test_times_are_written_as_swedish_local_time_whatever_zone_they_come_in(writes: WriteMappings) -> None:
    enc = copy.deepcopy(by_type("enc"))
    enc["period"] = {"start": "2026-07-01T06:00:00Z"}  # summer: +02:00
    assert render(writes, "viva", enc)[2]["start"] == "202607010800"
    assert render(writes, "cosmic", enc)[2]["startAt"] == "2026-07-01 08:00"
    assert "slut" not in render(writes, "viva", enc)[2]  # no end: left out


def test_the_vital_signs(writes: WriteMappings) -> None:
    visit = by_type("enc")["identifier"][0]["value"]
    bp = render(writes, "viva", by_type("bp"))
    assert bp[0].name == "viva/write/matvarden-blodtryck"
    assert {k: bp[2][k] for k in ("typ", "systoliskt", "diastoliskt", "matenhet", "besokExterntId")} == {
        "typ": "BLODTRYCK",
        "systoliskt": 142,
        "diastoliskt": 88,
        "matenhet": "mmHg",
        "besokExterntId": visit,
    }
    temp = render(writes, "viva", by_type("temp"))[2]
    assert (temp["typ"], temp["varde"], temp["matenhet"], temp["tidpunkt"]) == (
        "TEMPERATUR",
        "37,4",
        "°C",
        "202603101015",
    )
    assert temp["signeradAv"] == {"hsaId": "SE2120001520-SSK1", "namn": "Sara Sjuksköterska"}
    assert render(writes, "viva", by_type("acvpu"))[2]["varde"] == "A"
    assert render(writes, "viva", by_type("spo2"))[2]["typ"] == "SATURATION"

    cbp = render(writes, "cosmic", by_type("bp"))
    assert cbp[1].path == "/cosmic/api/v1/patients/19121212-1212/vitalsigns"
    assert {
        k: cbp[2][k] for k in ("term", "systolic", "diastolic", "unit", "measuredAt", "contactExternalId")
    } == {
        "term": "BP",
        "systolic": "142",
        "diastolic": "88",
        "unit": "mmHg",
        "measuredAt": "2026-03-10 10:15",
        "contactExternalId": visit,
    }
    ctemp = render(writes, "cosmic", by_type("temp"))[2]
    assert (ctemp["term"], ctemp["value"], ctemp["unit"]) == ("TEMP", "37,4", "Cel")
    assert render(writes, "cosmic", by_type("rr"))[2]["term"] == "RESP_RATE"
    assert render(writes, "cosmic", by_type("hr"))[2]["term"] == "PULSE"
    assert render(writes, "cosmic", by_type("acvpu"))[2]["value"] == "A"


def test_the_level_of_consciousness_by_text_alone(writes: WriteMappings) -> None:
    acvpu = copy.deepcopy(by_type("acvpu"))
    acvpu["valueCodeableConcept"] = {"text": "V"}
    assert render(writes, "viva", acvpu)[2]["varde"] == "V"
    acvpu["valueCodeableConcept"] = {"text": "somnolent"}
    with pytest.raises(WriteMappingError) as caught:
        render(writes, "cosmic", acvpu)
    assert caught.value.field == "body.value.$default"


def test_the_nursing_note(writes: WriteMappings) -> None:
    note = by_type("note")
    vb = render(writes, "viva", note)[2]
    assert vb["text"] == "Hembesök: mår bra, sår omlagt. Blodtryck något förhöjt."  # decoded
    assert (vb["lagrum"], vb["datum"], vb["rubrik"]) == ("HSL", "202603101040", "Omvårdnadsanteckning")
    cb = render(writes, "cosmic", note)[2]
    assert (cb["noteType"], cb["state"], cb["signedAt"]) == ("NURSING", "SIGNED", "2026-03-10 10:40")
    assert cb["signedBy"] == {"hsaId": "SE2120001520-SSK1", "name": "Sara Sjuksköterska"}
    assert cb["contactExternalId"] == by_type("enc")["identifier"][0]["value"]


def test_a_dose_given_and_one_not_given(writes: WriteMappings) -> None:
    given = render(writes, "viva", by_type("given"))[2]
    assert {k: given.get(k) for k in ("status", "atc", "preparat", "dosMangd", "dosEnhet", "kommentar")} == {
        "status": "GIVEN",
        "atc": "C03CA01",
        "preparat": "Furosemid 40 mg tablett",
        "dosMangd": "1",
        "dosEnhet": "tablett",
        "kommentar": None,
    }
    not_given = render(writes, "viva", by_type("notgiven"))[2]
    assert (not_given["status"], not_given["orsak"], not_given["kommentar"]) == (
        "EJ_GIVEN",
        "SOVER",
        "Sov, väcktes inte",
    )
    assert "dosMangd" not in not_given
    cgiven = render(writes, "cosmic", by_type("given"))[2]
    assert (cgiven["state"], cgiven["dose"], cgiven["doseUnit"], cgiven["administeredAt"]) == (
        "GIVEN",
        "1",
        "tablett",
        "2026-03-10 10:20",
    )
    cnot = render(writes, "cosmic", by_type("notgiven"))[2]
    assert (cnot["state"], cnot["notGivenReason"]) == ("NOT_GIVEN", "Sov, väcktes inte")
    # a reason Viva has no code for goes as text only
    other = copy.deepcopy(by_type("notgiven"))
    other["statusReason"] = [{"text": "Patienten ville vänta"}]
    body = render(writes, "viva", other)[2]
    assert "orsak" not in body and body["kommentar"] == "Patienten ville vänta"


# ---- what a dialect cannot take ----------------------------------------------------------------


def _refused(writes: WriteMappings, backend: str, resource: dict[str, Any]) -> WriteMappingError:
    mapping = writes.select(backend, resource)
    assert mapping is not None
    with pytest.raises(WriteMappingError) as caught:
        mapping.render(resource, ctx("0" * 32))
    return caught.value


@pytest.mark.parametrize("backend", ["viva", "cosmic"])
def test_what_the_dialect_cannot_take_is_refused_with_the_field(backend: str, writes: WriteMappings) -> None:
    start = "body.start" if backend == "viva" else "body.startAt"
    enc = copy.deepcopy(by_type("enc"))
    enc["period"]["start"] = "2026-03-10T10:00:00"  # no zone: which local time?
    assert _refused(writes, backend, enc).field == start
    enc["period"]["start"] = "2026-03-10"
    assert "a time and a zone" in _refused(writes, backend, enc).reason
    del enc["period"]["start"]
    assert _refused(writes, backend, enc).field == start
    enc = copy.deepcopy(by_type("enc"))
    enc["status"] = "entered-in-error"
    err = _refused(writes, backend, enc)
    assert err.field == ("body.status" if backend == "viva" else "body.state")
    assert "no equivalent" not in err.reason and "entered-in-error" not in err.reason  # (never echoed)
    assert "not one this target has an equivalent for" in err.reason
    enc = copy.deepcopy(by_type("enc"))
    enc["period"]["start"] = "0001-01-01T00:00:00+14:00"  # (no Swedish local time so early)
    assert "out of range" in _refused(writes, backend, enc).reason

    note = copy.deepcopy(by_type("note"))
    note["content"][0]["attachment"]["data"] = base64.b64encode(b"\xff\xfe").decode()
    assert _refused(writes, backend, note).field == "body.text"

    not_given = copy.deepcopy(by_type("notgiven"))
    del not_given["statusReason"]  # not given, and no reason
    assert "required" in _refused(writes, backend, not_given).reason

    temp = copy.deepcopy(by_type("temp"))
    temp["valueQuantity"]["code"] = "[degF]"
    assert _refused(writes, backend, temp).field.endswith(("matenhet", "unit"))
    bp = copy.deepcopy(by_type("bp"))
    bp["component"] = bp["component"][:1]  # no diastolic
    assert _refused(writes, backend, bp).field.endswith(("diastoliskt", "diastolic"))


def test_a_resource_no_mapping_takes_is_none(writes: WriteMappings) -> None:
    lab = copy.deepcopy(by_type("hr"))
    lab["category"] = [{"coding": [{"code": "laboratory"}]}]
    assert writes.select("viva", lab) is None and writes.select("cosmic", lab) is None
    pdf = copy.deepcopy(by_type("note"))
    pdf["content"][0]["attachment"]["contentType"] = "application/pdf"
    assert writes.select("viva", pdf) is None
    assert writes.select("npo", by_type("enc")) is None


def test_the_written_system_is_the_contracts() -> None:
    assert WRITTEN_SYSTEM == "urn:fhir-facade:written"
    assert {i["system"] for r in home_visit("p") for i in r["identifier"]} == {WRITTEN_SYSTEM}


def test_the_context_names_a_write_may_use(writes: WriteMappings) -> None:
    """The writer is stamped from the context, never from the resource: a resource naming another
    performer does not change whose unit the record is written for."""
    enc = copy.deepcopy(by_type("enc"))
    enc["serviceProvider"] = {"identifier": {"value": "SE2321000016-AKM1"}}
    assert render(writes, "cosmic", enc)[2]["careUnit"]["hsaId"] == "SE2120001520-HSV1"
    # an empty writer name: the HSA-id instead
    mapping = writes.select("viva", enc)
    assert mapping is not None
    body = orjson.loads(mapping.render(enc, {**ctx("1" * 32), "writer_name": ""}).body)
    assert body["utforare"] == "SE2120001520-SSK1"
    assert REQUEST_CONTEXT  # (the read side's names are its own)
