"""The command line: mappings check, and the refusals that protect a real deployment."""

from __future__ import annotations

import base64

import pytest

from proxy.cli import main
from proxy.settings import DEMO_PATIENT_ID_KEY


def test_mappings_check_validates_every_mapping(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mappings", "check"]) == 0
    out = capsys.readouterr().out
    assert "invalid: OK" in out or " 0 invalid: OK" in out
    for name in ("cosmic/threats", "viva/vardplaner", "npo/diagnoses"):
        assert name in out


def test_serve_refuses_without_a_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("FHIR_FACADE_PATIENT_ID_KEY", raising=False)
    assert main(["serve"]) == 2
    assert "FHIR_FACADE_PATIENT_ID_KEY is not set" in capsys.readouterr().err


def test_serve_refuses_the_demo_key(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FHIR_FACADE_PATIENT_ID_KEY", base64.b64encode(DEMO_PATIENT_ID_KEY).decode())
    assert main(["serve"]) == 2
    assert "demo key" in capsys.readouterr().err


def test_bad_config_file_is_a_clear_error(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:  # type: ignore[no-untyped-def]
    bad = tmp_path / "x.yaml"
    bad.write_text("backends: [", encoding="utf-8")
    assert main(["--config", str(bad), "mappings", "check"]) == 2
    assert "x.yaml: not valid YAML" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["serve", "--config"], ["mappings", "check", "--config"], ["--config"]])
def test_config_is_taken_before_or_after_the_command(
    argv: list[str], tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    """`fhir-facade serve --config FILE`, as the README writes it, reads FILE (as `--config FILE serve`
    always did), rather than stopping at "unrecognized arguments"."""
    bad = tmp_path / "given.yaml"
    bad.write_text("backends: [", encoding="utf-8")
    full = [*argv, str(bad)] if argv != ["--config"] else ["--config", str(bad), "serve"]
    assert main(full) == 2
    assert "given.yaml: not valid YAML" in capsys.readouterr().err


def test_a_config_after_the_command_wins_over_one_before_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from pathlib import Path

    from proxy.cli import build_parser

    args = build_parser().parse_args(["--config", "first.yaml", "serve", "--config", "second.yaml"])
    assert args.config == Path("second.yaml")
    assert build_parser().parse_args(["--config", "first.yaml", "serve"]).config == Path("first.yaml")
    assert build_parser().parse_args(["serve"]).config is None


def test_serve_with_workers_shares_one_port(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import os
    import re
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from tests.fhir.test_public_base_url import config_with_public_base

    env = {**os.environ, "FHIR_FACADE_PATIENT_ID_KEY": base64.b64encode(b"w" * 32).decode()}
    config = config_with_public_base(tmp_path, f"http://127.0.0.1:{port}/fhir")
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "proxy.cli",
                "--config",
                str(config),
                "serve",
                "--workers",
                "2",
                "--port",
                str(port),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        pids: set[str] = set()
        deadline = time.monotonic() + 30
        while len(pids) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            pids = set(re.findall(r"\(pid (\d+), event loop uvloop\)", log.read_text()))
        assert len(pids) == 2, log.read_text()
        for _ in range(4):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/fhir/metadata", timeout=5) as resp:
                assert resp.status == 200
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) is not None
    time.sleep(0.5)
    for pid in pids:  # the workers went with the parent
        assert not os.path.exists(f"/proc/{pid}")


def test_long_running_commands_run_on_uvloop_where_it_is_installed() -> None:
    import asyncio

    from proxy import loop

    async def running() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert loop.run(running()).startswith("uvloop")  # a dependency on Linux


def test_settle_heap_hides_what_start_up_built_from_the_collector() -> None:
    import gc

    from proxy.cli import settle_heap

    assert gc.get_freeze_count() == 0
    thresholds = gc.get_threshold()
    try:
        settle_heap()
        assert gc.get_freeze_count() > 10_000  # the libraries, models and compiled mappings
        assert gc.get_threshold()[0] == 10_000
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_mappings_check_reports_records_without_a_care_provider(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:  # type: ignore[no-untyped-def]
    """A mapping that names care_provider but reads it from a field the data lacks passes start-up;
    the check runs it over the sample data and fails, naming the mapping (never record content)."""
    import shutil

    import yaml

    from proxy.settings import DEFAULT_CONFIG, REPO_ROOT

    mappings = tmp_path / "mappings"
    shutil.copytree(REPO_ROOT / "mappings", mappings)
    diagnoses = mappings / "cosmic" / "diagnoses.yaml"
    doc = yaml.safe_load(diagnoses.read_text(encoding="utf-8"))
    doc["care_provider"] = "{careUnit.noSuchField}"
    diagnoses.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")
    config = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    config["mappings_dir"] = str(mappings)
    (tmp_path / "facade.yaml").write_text(yaml.safe_dump(config, allow_unicode=True), encoding="utf-8")
    assert main(["--config", str(tmp_path / "facade.yaml"), "mappings", "check"]) == 1
    out = capsys.readouterr().out
    assert "NO OWNER cosmic/diagnoses:" in out and "FAILED" in out


def test_simulate_and_demo_take_the_long_history_knobs() -> None:
    from proxy.cli import build_parser, with_history
    from proxy.settings import ConfigError, load_settings

    args = build_parser().parse_args(
        [
            "simulate",
            "npo",
            "--patients",
            "100000",
            "--records",
            "50-5000",
            "--years",
            "12",
            "--cached-records",
            "9",
            "--render-cache-mb",
            "64",
        ]
    )
    assert (args.records, args.years, args.cached_records, args.render_cache_mb) == ("50-5000", 12, 9, 64)
    sims = with_history(load_settings(), args.records, args.years).simulators
    assert (sims.records, sims.years) == ((50, 5000), 12)
    assert with_history(load_settings(), "500", None).simulators.records == (500, 500)
    assert with_history(load_settings(), None, None).simulators == load_settings().simulators
    demo = build_parser().parse_args(["demo", "--records", "2000"])
    assert demo.records == "2000"
    for bad in ("5000-50", "0-10", "lots", "1-2-3"):
        with pytest.raises(ConfigError, match="--records"):
            with_history(load_settings(), bad, None)
    with pytest.raises(ConfigError, match="--years"):
        with_history(load_settings(), None, 0)


def test_the_demo_population_has_the_long_history_and_mappings_check_does_not() -> None:
    from proxy.settings import load_settings
    from proxy.simulators.harness import people_for
    from proxy.simulators.population import DEMO_PEOPLE, INGEGERD, generated_people

    settings = load_settings()
    people = people_for(settings, patients=3)
    assert people == [*DEMO_PEOPLE, INGEGERD, *generated_people(3)]
    assert INGEGERD not in people_for(settings, patients=3, long_histories=False)
