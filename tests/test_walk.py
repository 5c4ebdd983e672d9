"""The walk: one request's stages in one documented order, one request object, and the stages
visible to a hook subscriber loaded the documented way (``FHIR_FACADE_HOOK_SUBSCRIBERS``)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path
from typing import Any

import pytest

import proxy.edge.http
from proxy.app import SUBSCRIBERS_ENV, load_subscribers
from proxy.hooks import Hooks, StageFinished
from proxy.pipeline.walk import PATIENT_READ, READING
from proxy.simulators.population import TOLVAN
from tests.conftest import BASE, pid

# The order README "The request walk" and proxy/pipeline/walk.py document. Reordering is a design
# change (e.g. the audit's begun event must be submitted before any backend is asked, the consents
# read while the backends answer, redaction before the filters, a later page read from its snapshot
# once the access is decided): change it here on purpose.
DOCUMENTED = [
    "emergency",
    "audit_begun",
    "decide",
    "from_snapshot",
    "plan",
    "consents",
    "fetch_and_map",
    "pdl",
    "merge",
    "redact",
    "lookalikes",
    "select",
    "keep_snapshot",
]

SEEN: list[StageFinished] = []


def subscribe(hooks: Hooks) -> None:
    """A subscriber named in FHIR_FACADE_HOOK_SUBSCRIBERS (``tests.test_walk:subscribe``)."""
    SEEN.clear()
    hooks.subscribe(StageFinished, SEEN.append)


def test_the_walk_is_the_documented_order() -> None:
    assert [s.__name__ for s in PATIENT_READ] == DOCUMENTED
    # collect() (no request): the same reading, without the door, the log and the page snapshots
    door = ("emergency", "audit_begun", "from_snapshot", "keep_snapshot")
    assert [s.__name__ for s in READING] == [n for n in DOCUMENTED if n not in door]


def test_the_edge_keeps_one_request_key_the_exchange() -> None:
    """State travels on the Exchange, not sideways through request keys."""
    keys = {
        name
        for name, value in vars(proxy.edge.http).items()
        if isinstance(value, proxy.edge.http.web.RequestKey)
    }
    assert keys == {"EXCHANGE_KEY"}
    source = Path(proxy.edge.http.__file__).read_text(encoding="utf-8")
    made = [
        node
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "RequestKey"
    ]
    assert len(made) == 1


def test_the_pipeline_does_not_know_http() -> None:
    """The walk runs on the Exchange alone: nothing under proxy/pipeline imports aiohttp."""
    from tests.test_house import modules

    http = {
        module: sorted(n for n in names if n == "aiohttp" or n.startswith("aiohttp."))
        for _path, module, names in modules()
        if module == "proxy.pipeline" or module.startswith("proxy.pipeline.")
    }
    assert len(http) >= 7 and all(not found for found in http.values()), http


def test_a_subscriber_that_cannot_be_loaded_stops_start_up() -> None:
    with pytest.raises(ValueError, match=r"tests\.test_walk:nothing_here"):
        load_subscribers(Hooks(), "tests.test_walk:nothing_here")
    with pytest.raises(ValueError, match="no_such_module"):
        load_subscribers(Hooks(), "no_such_module:subscribe")


async def test_a_subscriber_named_in_the_environment_sees_each_stage_of_an_everything_in_order(
    facade: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(SUBSCRIBERS_ENV, "tests.test_walk:subscribe")
    seen = importlib.import_module("tests.test_walk").SEEN  # (the module create_app imported)
    async with facade() as f:
        resp = await f.client.get(f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything")
        assert resp.status == 200
    assert [e.stage for e in seen] == DOCUMENTED
    assert all(e.duration_ms >= 0 for e in seen)
    assert TOLVAN.pnr not in repr(seen) and pid(TOLVAN.pnr) not in repr(seen)
