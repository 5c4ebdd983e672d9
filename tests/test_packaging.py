"""A wheel built from the repository runs on its own: the default config and the mappings ship inside
it as package data, so ``fhir-facade demo`` runs where no checkout is (the case a new user has after
``pip install fhir_facade-*.whl``), and ``fhir-facade serve --config FILE`` reads the user's file.

The wheel is built as a user would (``pip wheel``) from a copy of the repository's files, installed
with ``pip`` into a fresh virtual environment in a temporary directory, and run from there with the
repository nowhere on its path; the facade's dependencies come from the test environment (a
``.pth`` file) so nothing is downloaded but the build's own setuptools.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.request
import venv
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.settings import DEFAULT_CONFIG, REPO_ROOT

SHIPPED = ("pyproject.toml", "README.md", "proxy", "config", "mappings")  # what a checkout has
STRAYS = ("config/issuer-key.pem", "config/local.yaml", "mappings/cosmic/.notes.yaml", "mappings/todo.txt")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with the wheel (built from a copy of the repository) installed: its root."""
    root = tmp_path_factory.mktemp("wheel")
    src, dist, env = root / "src", root / "dist", root / "venv"
    src.mkdir()
    for name in SHIPPED:
        copy = shutil.copytree if (REPO_ROOT / name).is_dir() else shutil.copy2
        copy(REPO_ROOT / name, src / name)
    shutil.rmtree(src / "proxy" / "_data", ignore_errors=True)  # (a stale copy must not hide a gap)
    for stray in STRAYS:  # what someone may keep in a checkout and must not ship
        (src / stray).write_text("not for the wheel\n", encoding="utf-8")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    run([*pip, "wheel", "--no-deps", "--wheel-dir", str(dist), str(src)], cwd=root)
    (wheel,) = dist.glob("fhir_facade-*.whl")
    venv.EnvBuilder(with_pip=False).create(env)
    python = env / "bin" / "python"
    run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", str(wheel)], cwd=root)
    # the dependencies: the test environment's (a path entry only: its .pth files are not run, so
    # the repository's editable `proxy` stays out of sight)
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]))
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    (site / "zz-test-dependencies.pth").write_text("\n".join(sorted(deps)) + "\n", encoding="utf-8")
    return env


def run(argv: list[str], cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, f"{argv[:4]} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout.strip()


def outside(installed: Path, home: Path) -> dict[str, str]:
    """An environment with no trace of the repository: no PYTHONPATH, a fresh home and state dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "FHIR_FACADE", "XDG_"))}
    home.mkdir(exist_ok=True)
    env.update(HOME=str(home), XDG_STATE_HOME=str(home / "state"), PATH=f"{installed / 'bin'}:{env['PATH']}")
    return env


@pytest.fixture
def away(tmp_path: Path) -> Path:
    """The working directory of the installed commands: nowhere near a checkout."""
    (tmp_path / "cwd").mkdir()
    return tmp_path / "cwd"


class Command:
    """An installed command running in the background, its output (stderr too) read line by line."""

    def __init__(self, argv: list[str], cwd: Path, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, prefix: str, timeout_s: float = 60) -> list[str]:
        """The lines printed up to the first starting with ``prefix`` (a failure if the command
        exits first or takes longer than ``timeout_s``)."""
        seen: list[str] = []
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            assert line is not None, "exited early:\n" + "\n".join(seen)
            seen.append(line)
            if line.startswith(prefix):
                return seen
        raise AssertionError(f"no line starting {prefix!r} in {timeout_s} s: {seen}")

    def interrupt(self) -> int:
        """Ctrl-C, and the exit status."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=30)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self.reader.join(timeout=30)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def commands() -> Iterator[list[Command]]:
    started: list[Command] = []
    yield started
    for command in started:
        command.close()


def get(url: str, token: str | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(request, timeout=30) as resp:
        return resp.status, json.loads(resp.read())


def test_the_wheel_ships_config_and_mappings_and_runs_the_demo(
    installed: Path, away: Path, commands: list[Command]
) -> None:
    env = outside(installed, away.parent / "home")
    python = str(installed / "bin" / "python")
    where = Path(run([python, "-c", "import proxy; print(proxy.__file__)"], cwd=away, env=env))
    assert installed in where.parents, where  # the wheel's copy, not the checkout's
    data = where.parent / "_data"
    assert (data / "config" / "facade.yaml").is_file()
    shipped = sorted(str(p.relative_to(data)) for p in data.rglob("*") if p.is_file())
    in_repo = [f"config/{DEFAULT_CONFIG.name}", "mappings/README.md"]
    in_repo += [str(p.relative_to(REPO_ROOT)) for p in (REPO_ROOT / "mappings").rglob("*.yaml")]
    assert shipped == sorted(in_repo)  # every mapping, and none of the strays
    # the simulators' hand-written demo records (data files, not Python), which the demo serves
    records = where.parent / "simulators" / "data"
    in_repo_records = REPO_ROOT / "proxy" / "simulators" / "data"
    assert sorted(str(p.relative_to(records)) for p in records.rglob("*") if p.is_file()) == sorted(
        str(p.relative_to(in_repo_records)) for p in in_repo_records.rglob("*.yaml")
    )

    demo = Command([str(installed / "bin" / "fhir-facade"), "demo", "--port", "0"], away, env)
    commands.append(demo)
    lines = demo.wait_for("Serving until Ctrl-C")
    base = next(line.split(": ", 1)[1] for line in lines if line.startswith("FHIR base URL: "))
    token = next(line.split("'")[1] for line in lines if "export AMBULANCE=" in line)
    patient = next(line.split("Patient/")[1].split()[0] for line in lines if "Patient/" in line)

    status, capability = get(f"{base}/metadata")
    assert status == 200 and capability["resourceType"] == "CapabilityStatement"
    status, bundle = get(f"{base}/Patient/{patient}/$everything", token)  # the shipped mappings at work
    assert status == 200 and bundle["resourceType"] == "Bundle"
    sources = {e["resource"].get("meta", {}).get("source") for e in bundle["entry"]}
    assert "urn:fhir-facade:source:cosmic" in sources
    assert {e["resource"]["resourceType"] for e in bundle["entry"]} >= {"Patient", "Condition"}

    assert demo.interrupt() == 0
    # its access log is the user's state, not a file inside site-packages
    assert (away.parent / "home" / "state" / "fhir-facade" / "facade.sqlite").is_file()
    assert not list(where.parent.rglob("*.sqlite"))


def test_the_wheel_serves_a_config_file_given_after_the_command(
    installed: Path, away: Path, commands: list[Command]
) -> None:
    """`fhir-facade serve --config FILE` as the README writes it, with a deployment's own file that
    names no mappings folder: the mappings shipped in the wheel are used."""
    env = outside(installed, away.parent / "home")
    env["FHIR_FACADE_PATIENT_ID_KEY"] = base64.b64encode(b"k" * 32).decode()
    python = str(installed / "bin" / "python")
    shipped = Path(
        run([python, "-c", "from proxy.settings import DEFAULT_CONFIG; print(DEFAULT_CONFIG)"], away, env)
    )
    doc = yaml.safe_load(shipped.read_text(encoding="utf-8"))
    del doc["mappings_dir"]
    doc["facade"]["public_base_url"] = "https://fhir.example.org/fhir"
    doc["store"]["sqlite_path"] = "facade.sqlite"  # relative to the file, as before
    (away / "etc").mkdir()
    config = away / "etc" / "facade.yaml"
    config.write_text(yaml.safe_dump(doc, allow_unicode=True), encoding="utf-8")

    serve = Command(
        [str(installed / "bin" / "fhir-facade"), "serve", "--config", str(config), "--port", "0"], away, env
    )
    commands.append(serve)
    (line,) = serve.wait_for("FHIR base URL: ")[-1:]
    base = line.split(": ", 1)[1].split(" (")[0]
    status, capability = get(f"{base}/metadata")
    assert status == 200 and capability["resourceType"] == "CapabilityStatement"
    assert serve.interrupt() == 0
    assert (away / "etc" / "facade.sqlite").is_file()
