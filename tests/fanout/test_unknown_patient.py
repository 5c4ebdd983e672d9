"""A 404 is not "nothing": only a backend's patient lookup, with its declared status and body marker,
may say "this patient is unknown here" — and the run's other requests may echo it only then."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from proxy.app import compile_mappings
from proxy.fanout.client import BackendClient
from proxy.mapping.compiler import compile_mapping
from proxy.mapping.registry import REQUEST_CONTEXT, MappingSet
from proxy.mapping.requests import RequestSpec, UnknownPatient
from proxy.mapping.validate import MappingError
from proxy.settings import ConfigError, load_settings
from proxy.simulators.harness import serving
from proxy.types import SourceStatus
from tests.conftest import RESOURCE_IDS

MARKER = UnknownPatient(404, ("errorCode",), "PATIENT_NOT_FOUND")
NOT_FOUND = {"errorCode": "PATIENT_NOT_FOUND", "message": "No patient with that identity number"}


def spec(path: str, *, lookup: bool = False) -> RequestSpec:
    return RequestSpec(
        method="GET",
        path=path,
        query=(),
        body=None,
        headers=(),
        format="json",
        unknown_patient=MARKER if lookup else None,
    )


ANSWERS: dict[str, tuple[int, Any]] = {
    "/unknown": (404, NOT_FOUND),
    "/known": (200, {"patientId": "x"}),
    "/list": (200, {"items": []}),
    "/moved": (404, {"errorCode": "RESOURCE_NOT_FOUND"}),
    "/bare": (404, None),
    "/gone": (410, NOT_FOUND),
    "/broken": (404, "PATIENT_NOT_FOUND"),  # the marker's text, not in the declared place
}


async def ask(*specs: RequestSpec) -> tuple[Any, list[tuple[str, bytes | None]]]:
    async def answer(request: web.Request) -> web.Response:
        status, body = ANSWERS[request.path]
        if body is None:
            return web.Response(status=status)
        return web.json_response(body, status=status)

    app = web.Application()
    for path in ANSWERS:
        app.router.add_get(path, answer)
    seen: list[tuple[str, bytes | None]] = []
    async with serving(app) as base:
        client = BackendClient.open(replace(load_settings().backend("cosmic"), base_url=base), 1 << 20)
        try:
            result = await client.fetch(list(specs), {}, lambda _, s, body: seen.append((s.path, body)))
        finally:
            await client.close()
    return result, sorted(seen, key=str)


async def test_the_lookups_unknown_patient_answer_and_its_echo_mean_nothing_here() -> None:
    result, seen = await ask(spec("/unknown", lookup=True), spec("/unknown"))
    assert result.status is SourceStatus.OK and result.unknown_patient
    assert seen == [("/unknown", None), ("/unknown", None)]


@pytest.mark.parametrize(
    ("lookup", "other"),
    [
        ("/known", "/unknown"),  # the lookup knows the patient: the other's 404 is a failure
        ("/unknown", "/moved"),  # the lookup does not, but the other 404 says something else
        ("/unknown", "/bare"),  # ... or nothing at all
        ("/unknown", "/gone"),  # ... or another status with the same body
        ("/bare", "/list"),  # a bare 404 from the lookup itself
        ("/moved", "/list"),
        ("/broken", "/list"),
    ],
)
async def test_anything_else_is_a_failed_source(lookup: str, other: str) -> None:
    result, seen = await ask(spec(lookup, lookup=True), spec(other))
    assert result.status is SourceStatus.ERROR and not result.unknown_patient
    assert other not in [path for path, body in seen if body is None]  # never handed on as "nothing"


async def test_without_the_lookup_in_the_run_the_marker_is_a_failure() -> None:
    result, seen = await ask(spec("/list"), spec("/unknown"))
    assert result.status is SourceStatus.ERROR
    assert result.detail == "answered HTTP 404"
    assert seen == [("/list", b'{"items": []}')]


async def test_records_beside_the_lookups_unknown_do_not_teach_nothing_here() -> None:
    result, _ = await ask(spec("/unknown", lookup=True), spec("/list"))
    assert result.status is SourceStatus.OK and not result.unknown_patient


def test_the_marker_is_declared_on_cosmics_lookup_only() -> None:
    mappings = compile_mappings(load_settings(), RESOURCE_IDS)
    assert set(mappings.lookups) == {"cosmic"}
    assert mappings.lookups["cosmic"].unknown_patient == MARKER
    declared = [m.name for m in mappings.all() if m.request.unknown_patient is not None]
    assert declared == ["cosmic/patient"]


def _mapping(unknown: Any, path: str = "/p/{@pnr}", name: str = "patient") -> Any:
    doc = {
        "resource": "Patient",
        "request": {"path": path, "unknown_patient": unknown},
        "select": "$",
        "fields": {"gender": "unknown"},
    }
    return compile_mapping(
        doc,
        file=f"mappings/x/{name}.yaml",
        backend="x",
        name=name,
        code_maps={},
        resolve_ref=lambda _: None,
        context_names=REQUEST_CONTEXT,
        ids=RESOURCE_IDS,
    )


@pytest.mark.parametrize(
    ("unknown", "key"),
    [
        ({"status": 404}, "request.unknown_patient"),  # a status alone is not a statement
        ({"status": 404, "body": {"path": "errorCode"}}, "request.unknown_patient.body"),
        ({"status": 500, "body": {"path": "e", "equals": "X"}}, "request.unknown_patient.status"),
        ({"status": 404, "body": {"path": "a..b", "equals": "X"}}, "request.unknown_patient.body.path"),
        ({"status": 404, "body": {"path": "e", "equals": ""}}, "request.unknown_patient.body.equals"),
    ],
)
def test_a_bad_declaration_is_refused_with_file_and_key(unknown: Any, key: str) -> None:
    with pytest.raises(MappingError, match=rf"mappings/x/patient.yaml.*{key}"):
        _mapping(unknown)


def test_two_lookups_for_one_backend_are_refused() -> None:
    marker = {"status": 404, "body": {"path": "e", "equals": "X"}}
    with pytest.raises(MappingError, match="unknown_patient"):
        MappingSet(by_backend={"x": (_mapping(marker), _mapping(marker, "/q/{@pnr}", "other"))})


def test_the_old_backend_wide_empty_statuses_is_refused_at_start_up(tmp_path: Path) -> None:
    source = Path(load_settings().config_dir / "facade.yaml").read_text(encoding="utf-8")
    config = tmp_path / "facade.yaml"
    config.write_text(
        source.replace(
            "    source_uri: urn:fhir-facade:source:cosmic\n",
            "    source_uri: urn:fhir-facade:source:cosmic\n    empty_statuses: [404]\n",
        ),
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r"facade.yaml: backends.cosmic.empty_statuses: .*unknown_patient"):
        load_settings(config)
