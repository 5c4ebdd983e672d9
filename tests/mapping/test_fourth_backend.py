"""A new backend joins by YAML alone: a config entry and a mapping folder, no Python.

The 'lab system' below is test scaffolding standing in for a vendor's server, in a dialect the
facade has never seen (nested JSON, day-first dates, its own status words).
"""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from proxy.app import create_app
from proxy.auth.demo import demo_issuer
from proxy.settings import DEMO_PATIENT_ID_KEY, load_settings
from proxy.simulators.harness import serving
from tests.conftest import BASE, auth, pid, validate

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
    vars: {{system_hsa_id: SE0000000000-LAB1}}
"""

MAPPING = """
resource: Observation
request:
  path: /labsys/v1/results
  query: {ssn: "{@pnr}"}
select: $.data.results
where: {path: state, not_equals: CANCELLED}
id: "{rid}"
origin: "{@system_hsa_id}|{rid}"
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


def lab_system() -> web.Application:
    async def results(request: web.Request) -> web.Response:
        return web.json_response(ANSWER if request.query.get("ssn") == PNR else {"data": {"results": []}})

    app = web.Application()
    app.router.add_get("/labsys/v1/results", results)
    return app


def write_deployment(root: Path, url: str, mapping: str) -> Path:
    (root / "mappings" / "labsys").mkdir(parents=True)
    (root / "mappings" / "labsys" / "results.yaml").write_text(textwrap.dedent(mapping), encoding="utf-8")
    config = root / "facade.yaml"
    config.write_text(CONFIG.format(url=url), encoding="utf-8")
    return config


async def observations(config: Path) -> dict[str, Any]:
    app = create_app(load_settings(config), patient_id_key=DEMO_PATIENT_ID_KEY, extra_issuer=demo_issuer())
    async with TestClient(TestServer(app), headers=auth("clinician")) as client:
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
