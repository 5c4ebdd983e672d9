"""/metrics: Prometheus text from prometheus-client, behind its own token, patient-free."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.settings import MetricsSettings, Settings, load_settings
from proxy.simulators.population import DEMO_PEOPLE, TOLVAN
from tests.conftest import BASE, auth, pid

TOKEN = "metrics-test-token-0123456789abcdef"
EVERYTHING = f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything"
SCRAPE = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def settings() -> Settings:
    return replace(load_settings(), metrics=MetricsSettings(token=TOKEN))


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} of a scrape."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def assert_patient_free(text: str) -> None:
    """No 12-digit number in a label (the values are floats, whose digits may run long), and no demo
    patient's personnummer, id or name anywhere."""
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            for value in s.labels.values():
                assert not re.search(r"\d{12}", value), f"a 12-digit number (a personnummer?): {value}"
    for p in DEMO_PEOPLE:
        for secret in (p.pnr, pid(p.pnr), p.given, p.family):
            assert secret not in text


async def scrape(f: Any, headers: dict[str, str] | None = None) -> tuple[int, str]:
    resp = await f.client.get("/metrics", headers=headers if headers is not None else SCRAPE)
    return resp.status, await resp.text()


async def test_a_scrape_after_a_faulty_backend_request_shows_that_backends_failure(facade: Any) -> None:
    async with facade() as f:
        await f.faults("npo", error_status=503)
        resp = await f.client.get(EVERYTHING)
        assert resp.status == 200
        status, text = await scrape(f)
    assert status == 200
    got = samples(text)
    assert got[("fhir_facade_backend_calls_total", (("backend", "npo"), ("outcome", "http-error")))] == 1
    assert got[("fhir_facade_backend_calls_total", (("backend", "cosmic"), ("outcome", "answered")))] == 1
    route = f"{BASE}/Patient/{{id}}/$everything"  # the template, never the path with the patient's id
    labels = (("audience", "clinician"), ("route", route), ("status", "200"))
    assert got[("fhir_facade_requests_total", labels)] == 1
    assert (
        got[("fhir_facade_request_duration_seconds_count", (("audience", "clinician"), ("route", route)))]
        == 1
    )
    assert got[("fhir_facade_backend_call_duration_seconds_count", (("backend", "npo"),))] == 1
    assert got[("fhir_facade_breaker_state", (("backend", "npo"),))] == 0  # closed: one failure of 5
    assert got[("fhir_facade_mapped_records_total", (("backend", "cosmic"),))] > 0
    # mapping: one observation a backend that answered, per request (not one an answer)
    assert got[("fhir_facade_mapping_duration_seconds_count", (("backend", "cosmic"),))] == 1
    assert ("fhir_facade_mapping_duration_seconds_count", (("backend", "npo"),)) not in got
    assert got[("fhir_facade_audit_commits_total", (("result", "ok"),))] >= 1
    assert_patient_free(text)


async def test_breaker_state_and_cache_are_counted(facade: Any) -> None:
    async with facade(cache=True, breaker_failures=1, breaker_open_s=60) as f:
        await f.faults("viva", error_status=500)
        assert (await f.client.get(EVERYTHING)).status == 200
        assert (await f.client.get(EVERYTHING)).status == 200  # cosmic and npo now from the cache
        _, text = await scrape(f)
    got = samples(text)
    assert got[("fhir_facade_breaker_state", (("backend", "viva"),))] == 2  # open
    assert got[("fhir_facade_backend_calls_total", (("backend", "viva"), ("outcome", "breaker-open")))] == 1
    assert got[("fhir_facade_cache_lookups_total", (("backend", "cosmic"), ("result", "hit")))] >= 1
    assert got[("fhir_facade_cache_lookups_total", (("backend", "cosmic"), ("result", "miss")))] >= 1
    assert_patient_free(text)


async def test_metrics_need_their_token(facade: Any) -> None:
    async with facade() as f:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
            status, text = await scrape(f, headers)
            assert status == 401 and "fhir_facade" not in text
        # a FHIR bearer token is not a metrics token
        status, _ = await scrape(f, {"Authorization": auth("clinician")["Authorization"]})
        assert status == 401


def test_without_a_token_metrics_are_closed_unless_loopback_is_allowed() -> None:
    from proxy.metrics import may_scrape

    assert not may_scrape(MetricsSettings(), "127.0.0.1", None)  # fail closed: no token, no loopback
    assert may_scrape(MetricsSettings(allow_unauthenticated_loopback=True), "127.0.0.1", None)
    assert may_scrape(MetricsSettings(allow_unauthenticated_loopback=True), "::1", None)
    assert not may_scrape(MetricsSettings(allow_unauthenticated_loopback=True), "10.0.0.5", None)
    assert not may_scrape(MetricsSettings(allow_unauthenticated_loopback=True), None, None)
    assert may_scrape(MetricsSettings(token=TOKEN), "10.0.0.5", f"Bearer {TOKEN}")
    assert not may_scrape(MetricsSettings(token=TOKEN), "10.0.0.5", f"Bearer {TOKEN}x")
    assert not may_scrape(MetricsSettings(token=TOKEN), "127.0.0.1", None)  # a token, once set, is needed


def test_metrics_settings_are_checked_at_start_up(tmp_path: Any) -> None:
    import yaml

    from proxy.settings import DEFAULT_CONFIG, ConfigError

    doc = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    doc["mappings_dir"] = str(DEFAULT_CONFIG.parent / doc["mappings_dir"])
    doc["metrics"] = {"allow_unauthenticated_loopback": "yes"}
    path = tmp_path / "facade.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"facade.yaml: metrics.allow_unauthenticated_loopback"):
        load_settings(path, env={})
    doc["metrics"] = {}
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    with pytest.raises(ConfigError, match="FHIR_FACADE_METRICS_TOKEN"):
        load_settings(path, env={"FHIR_FACADE_METRICS_TOKEN": "short"})
    assert load_settings(path, env={"FHIR_FACADE_METRICS_TOKEN": TOKEN}).metrics.token == TOKEN
    assert TOKEN not in repr(load_settings(path, env={"FHIR_FACADE_METRICS_TOKEN": TOKEN}))


async def test_labels_stay_bounded_whatever_the_client_sends(facade: Any) -> None:
    """Paths, ids, methods and headers of the client's choosing never become label values."""
    async with facade() as f:
        templates = {r.canonical for r in f.client.server.app.router.resources()}
        for i in range(5):
            await f.client.get(f"{BASE}/Patient/{pid(DEMO_PEOPLE[i].pnr)}")
            await f.client.get(f"{BASE}/Observation", params={"patient": DEMO_PEOPLE[i].pnr})
            await f.client.get(f"/x{i}/{DEMO_PEOPLE[i].pnr}", headers={"X-Request-ID": DEMO_PEOPLE[i].pnr})
            await f.client.request(f"BREW{i}", f"{BASE}/metadata")
        _, text = await scrape(f)
    routes = {
        s.labels["route"]
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if "route" in s.labels
    }
    assert routes <= templates | {"unmatched", "/metrics"}, routes - templates
    assert_patient_free(text)
