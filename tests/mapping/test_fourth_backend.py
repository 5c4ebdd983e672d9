"""A new backend joins by YAML alone: a config entry and a mapping folder, no Python.

The 'lab system' below is test scaffolding standing in for a vendor's server, in a dialect the
facade has never seen (nested JSON, day-first dates, its own status words).
"""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from proxy.app import create_app
from proxy.auth.demo import demo_issuer
from proxy.cli import main
from proxy.fhir.bundle import PDL_SYSTEM
from proxy.mapping.validate import MappingError
from proxy.settings import DEMO_PATIENT_ID_KEY, ConfigError, load_settings
from proxy.simulators.harness import serving
from tests.conftest import BASE, FacadeTestServer, auth, pid, validate

PNR = "191212121212"

CONFIG = """
facade: {{base_path: /fhir}}
mappings_dir: mappings
merge: {{source_priority: [labsys]}}
backends:
  labsys:
    description: A regional lab system, never seen before
    base_url: {url}
    mappings: labsys
    timeout: {{connect_s: 1, total_s: 2}}
    vars: {{system_hsa_id: SE0000000000-LAB1, care_provider_hsa_id: SE2321000016-15CQ}}
{extra}"""

MAPPING = """
resource: Observation
request:
  path: /labsys/v1/results
  query: {ssn: "{@pnr}"}
select: $.data.results
where: {path: state, not_equals: CANCELLED}
id: "{rid}"
origin: "{@system_hsa_id}|{rid}"
care_provider: "{@care_provider_hsa_id}"    # the region runs this lab: its records are the region's
fields:
  status: {$path: state, $map: {DONE: final, PRELIM: preliminary}}
  category:
    - coding:
        - system: http://terminology.hl7.org/CodeSystem/observation-category
          code: laboratory
  code:
    coding:
      - system: urn:oid:1.2.752.108.1
        code: {$path: test.npu}
        display: {$path: test.name}
  subject: {reference: "Patient/{@patient_id}"}
  effectiveDateTime: {$path: taken, $date: "%d/%m/%Y %H:%M"}
  valueQuantity:
    value: {$path: val, $as: decimal}
    unit: {$path: unit}
"""

ANSWER = {
    "data": {
        "results": [
            {
                "rid": "R1",
                "state": "DONE",
                "test": {"npu": "NPU02319", "name": "B-Hb"},
                "val": "141",
                "unit": "g/L",
                "taken": "15/05/2024 08:15",
                "comment": "Hemolys i provet",
            },
            {
                "rid": "R2",
                "state": "CANCELLED",
                "test": {"npu": "NPU03429", "name": "P-K"},
                "val": "0",
                "unit": "mmol/L",
                "taken": "16/05/2024 09:00",
            },
        ]
    }
}


def lab_system(answer: dict[str, Any] = ANSWER) -> web.Application:
    async def results(request: web.Request) -> web.Response:
        return web.json_response(answer if request.query.get("ssn") == PNR else {"data": {"results": []}})

    app = web.Application()
    app.router.add_get("/labsys/v1/results", results)
    return app


def write_deployment(root: Path, url: str, mapping: str, extra: str = "") -> Path:
    (root / "mappings" / "labsys").mkdir(parents=True)
    (root / "mappings" / "labsys" / "results.yaml").write_text(textwrap.dedent(mapping), encoding="utf-8")
    config = root / "facade.yaml"
    config.write_text(CONFIG.format(url=url, extra=extra), encoding="utf-8")
    return config


async def observations(config: Path, audience: str = "clinician", **claims: Any) -> dict[str, Any]:
    app = create_app(load_settings(config), patient_id_key=DEMO_PATIENT_ID_KEY, extra_issuer=demo_issuer())
    async with TestClient(FacadeTestServer(app), headers=auth(audience, **claims)) as client:
        resp = await client.get(f"{BASE}/Observation", params={"patient": pid(PNR)})
        assert resp.status == 200
        return await resp.json(content_type=None)


async def test_a_fourth_backend_by_yaml_alone(tmp_path: Path) -> None:
    async with serving(lab_system()) as url:
        bundle = await observations(write_deployment(tmp_path, url, MAPPING))
    assert bundle["total"] == 1  # the cancelled result is filtered by the mapping's `where`
    obs = bundle["entry"][0]["resource"]
    validate(obs)
    assert obs["meta"]["source"] == "urn:fhir-facade:source:labsys"
    assert obs["id"].startswith(pid(PNR) + "-labsys-")
    assert obs["status"] == "final"
    assert obs["valueQuantity"] == {"value": 141, "unit": "g/L"}
    assert obs["effectiveDateTime"] == "2024-05-15T08:15:00+02:00"


async def test_adding_a_field_is_a_yaml_change(tmp_path: Path) -> None:
    with_note = MAPPING + "  note:\n    - text: {$path: comment}\n"
    async with serving(lab_system()) as url:
        bundle = await observations(write_deployment(tmp_path, url, with_note))
    obs = bundle["entry"][0]["resource"]
    validate(obs)
    assert obs["note"] == [{"text": "Hemolys i provet"}]


# ---- whose records: a backend's records need a known care provider (PDL) ---------------------------

WITHOUT_PROVIDER = MAPPING.replace(
    'care_provider: "{@care_provider_hsa_id}"    # the region runs this lab: its records are the region\'s\n',
    "",
)


def test_a_backend_mapping_without_care_provider_is_refused_at_start_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without an owner the PDL rules cannot decide who may read a record: refuse the mapping at
    start-up and in `mappings check`, naming the file and the key (not: readable by everyone)."""
    assert "care_provider" not in WITHOUT_PROVIDER
    config = write_deployment(tmp_path, "http://127.0.0.1:9", WITHOUT_PROVIDER)
    with pytest.raises(MappingError) as refused:
        create_app(load_settings(config), patient_id_key=DEMO_PATIENT_ID_KEY)
    message = str(refused.value)
    assert message.startswith("mappings/labsys/results.yaml: care_provider: "), message
    assert "backends.labsys.care_documentation: false" in message
    assert main(["--config", str(config), "mappings", "check"]) == 2
    assert "mappings/labsys/results.yaml: care_provider: " in capsys.readouterr().err


async def test_a_backend_declared_without_care_documentation_may_leave_it_out(tmp_path: Path) -> None:
    async with serving(lab_system()) as url:
        config = write_deployment(tmp_path, url, WITHOUT_PROVIDER, "    care_documentation: false\n")
        bundle = await observations(config, care_provider="SE0000000000-ELSEWHERE")
    assert bundle["total"] == 1  # not PDL care documentation: no provider's, no consent needed


def test_care_documentation_takes_a_boolean(tmp_path: Path) -> None:
    config = write_deployment(tmp_path, "http://127.0.0.1:9", MAPPING, "    care_documentation: maybe\n")
    with pytest.raises(ConfigError, match=r"backends\.labsys\.care_documentation: expects true or false"):
        load_settings(config)


async def test_a_record_whose_provider_comes_out_empty_is_withheld_from_care_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    per_record = MAPPING.replace('"{@care_provider_hsa_id}"', '"{orderedBy.provider}"')
    results = ANSWER["data"]["results"]
    answer = {
        "data": {
            "results": [
                {**results[0], "orderedBy": {"provider": "SE2321000016-15CQ"}},
                {**results[0], "rid": "R3", "orderedBy": {"provider": ""}},
                {**results[0], "rid": "R4"},
            ]
        }
    }
    async with serving(lab_system(answer)) as url:
        config = write_deployment(tmp_path, url, per_record)
        with caplog.at_level(logging.WARNING, logger="proxy.pipeline"):
            care = await observations(config)
        own = await observations(config, "patient", pnr=PNR)
    assert care["total"] == 1  # the region's own result; the two without an owner are withheld
    hint = [e["resource"] for e in care["entry"] if e["search"]["mode"] == "outcome"]
    codes = [c for o in hint for i in o["issue"] for c in i["details"]["coding"]]
    assert [c["code"] for c in codes if c["system"] == PDL_SYSTEM] == ["provider-unknown"]
    assert own["total"] == 3  # the patient reads all of their own records
    reports = [r.getMessage() for r in caplog.records if "care provider" in r.getMessage()]
    assert len(reports) == 1, reports
    assert "labsys" in reports[0] and "labsys/results" in reports[0] and " 2 " in reports[0]
    for secret in (PNR, pid(PNR), "141", "B-Hb", "Hemolys"):
        assert secret not in reports[0]
