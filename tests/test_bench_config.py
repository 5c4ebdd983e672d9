"""The benchmarks' configurations start a facade: each scenario's ``bench/run.py`` ``write_config`` is
one the settings accept (a rule added to the settings — e.g. the outbox's lease outlasting every
backend's total_s — once broke the long-history scenarios without a test noticing)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from proxy.settings import LEASE_USE, load_settings

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _run() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_run", BENCH / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # (its dataclasses look their module up there)
    spec.loader.exec_module(module)
    return module


SIMS = {name: f"http://127.0.0.1:{port}" for name, port in (("cosmic", 1), ("viva", 2), ("npo", 3))}


@pytest.mark.parametrize(
    ("cache", "backend_total_s", "facade"),
    [
        ({"enabled": False}, None, None),  # bench/run.py, compare.py, profile.py
        ({"enabled": True}, None, None),
        ({"enabled": False}, 120.0, {"max_count": 100_000}),  # records.py, headofline.py: long histories
    ],
)
def test_each_scenarios_configuration_is_accepted(
    tmp_path: Path, cache: dict[str, bool], backend_total_s: float | None, facade: dict[str, int] | None
) -> None:
    run = _run()
    _, pem = run.make_issuer(tmp_path)
    config = run.write_config(
        tmp_path, "facade", SIMS, pem, cache, facade=facade, backend_total_s=backend_total_s
    )
    settings = load_settings(config)
    if backend_total_s is not None:
        assert {b.total_timeout_s for b in settings.backends} == {backend_total_s}
        assert settings.outbox.lease_s * LEASE_USE >= backend_total_s
