"""One JSON access-log line per request, naming each source's status and nothing about the patient;
backend faults and breaker changes logged at WARNING."""

from __future__ import annotations

import logging
import re
from typing import Any

import orjson
import pytest

from proxy.accesslog import ACCESS_LOGGER, JsonFormatter
from proxy.simulators.population import DEMO_PEOPLE, TOLVAN
from tests.conftest import BASE, auth, pid

EVERYTHING = f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything"


def access_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [JsonFormatter().format(r) for r in caplog.records if r.name == ACCESS_LOGGER]


def assert_patient_free(text: str) -> None:
    assert not re.search(r"\d{12}", text), "a 12-digit number (a personnummer?) in the log"
    for p in DEMO_PEOPLE:
        for secret in (p.pnr, pid(p.pnr), p.given, p.family):
            assert secret not in text


async def test_the_access_line_names_each_source_and_its_status_and_no_patient(
    facade: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    async with facade() as f:
        await f.faults("npo", error_status=503)
        resp = await f.client.get(EVERYTHING, headers={"X-Request-ID": "trace-me-42"})
        assert resp.status == 200
    (line,) = access_lines(caplog)
    assert "\n" not in line
    doc = orjson.loads(line)
    assert doc["logger"] == ACCESS_LOGGER and doc["request_id"] == "trace-me-42"
    assert doc["method"] == "GET" and doc["status"] == 200 and doc["audience"] == "clinician"
    assert doc["route"] == f"{BASE}/Patient/{{id}}/$everything"  # the template, not the path
    assert doc["sources"] == {"cosmic": "ok", "viva": "ok", "npo": "error"}
    assert isinstance(doc["duration_ms"], float) and doc["duration_ms"] > 0
    assert_patient_free(line)
    assert_patient_free("\n".join(r.getMessage() for r in caplog.records))


async def test_every_request_gets_one_line_refused_and_unmatched_ones_too(
    facade: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=ACCESS_LOGGER)
    async with facade() as f:
        await f.client.get(EVERYTHING, headers={"Authorization": "Bearer nonsense"})
        await f.client.get(f"/no/such/{TOLVAN.pnr}")
        await f.client.get(
            f"{BASE}/Patient", params={"identifier": f"x|{TOLVAN.pnr}"}, headers=auth("ambulance")
        )
    docs = [orjson.loads(line) for line in access_lines(caplog)]
    assert [(d["route"], d["audience"]) for d in docs] == [
        (f"{BASE}/Patient/{{id}}/$everything", "none"),  # no verified token
        ("unmatched", "clinician"),  # no route: no path in the log
        (f"{BASE}/{{type}}", "ambulance"),
    ]
    assert docs[0]["status"] == 401
    assert all(re.fullmatch(r"[A-Za-z0-9._:-]{1,64}", d["request_id"]) for d in docs)
    assert len({d["request_id"] for d in docs}) == 3
    for line, d in zip(access_lines(caplog), docs, strict=True):
        assert_patient_free(line.replace(d["request_id"], "<id>"))  # (a random hex id may hold 12 digits)


async def test_with_every_backend_failing_each_fault_is_logged(
    facade: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: with all three backends failing nothing was logged, even with -v."""
    caplog.set_level(logging.WARNING)
    async with facade(breaker_failures=1, breaker_open_s=60) as f:
        for name in ("cosmic", "viva", "npo"):
            await f.faults(name, error_status=502)
        assert (await f.client.get(EVERYTHING)).status == 200
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for name in ("cosmic", "viva", "npo"):
        assert any(name in m and "http-error" in m and "HTTP 502" in m for m in warnings), warnings
        assert any(name in m and "breaker" in m and "open" in m for m in warnings), warnings
    assert_patient_free("\n".join(warnings))


def test_log_format_json_writes_every_line_as_json_and_text_keeps_the_access_line_json(
    tmp_path: Any,
) -> None:
    """``metrics.log_format: json`` — one log shipper, one parser: a fault line is a JSON object like
    the access line. The default (text) keeps operators' text lines, the access line still JSON."""
    import yaml

    from proxy.cli import configure_logging
    from proxy.settings import DEFAULT_CONFIG, ConfigError, load_settings

    def settings_with(value: Any) -> Any:
        doc = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
        doc["metrics"]["log_format"] = value
        doc["mappings_dir"] = str(DEFAULT_CONFIG.parent.parent / "mappings")
        path = tmp_path / "facade.yaml"
        path.write_text(yaml.safe_dump(doc), encoding="utf-8")
        return load_settings(path)

    fault = logging.LogRecord(
        "fhir_facade.backends", logging.WARNING, __file__, 1, "backend %s failed", ("npo",), None
    )
    access = logging.LogRecord(ACCESS_LOGGER, logging.INFO, __file__, 1, "request", (), None)
    access.fields = {"status": 200}
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        configure_logging(False, settings_with("json"))
        (handler,) = root.handlers
        as_json = orjson.loads(handler.format(fault))
        assert as_json["logger"] == "fhir_facade.backends" and as_json["message"] == "backend npo failed"
        assert orjson.loads(handler.format(access))["status"] == 200
        configure_logging(False, settings_with("text"))
        (handler,) = root.handlers
        assert handler.format(fault).endswith("WARNING fhir_facade.backends: backend npo failed")
        assert orjson.loads(handler.format(access))["status"] == 200
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    with pytest.raises(ConfigError, match=r"metrics\.log_format"):
        settings_with("xml")
