"""The facade process killed mid-delivery and started again: each target holds the visit once.

For real, as a deployment would meet it: the three simulators and ``fhir-facade serve`` are
processes (SQLite store in a file). Cosmic answers slowly, so the facade is killed (SIGKILL — no
clean-up of any kind) while it is sending Cosmic its part, some of the ten requests sent and
acknowledged, none of it recorded. Started again on the same store, the new process waits for the
dead one's lease to run out, sends the part again with the same Idempotency-Keys, and the Task
completes; Cosmic and Viva each hold every written record exactly once (counted in the simulators'
own answers, by the identifier the facade minted).
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import orjson
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from proxy.auth.demo import make_token
from proxy.fhir.ids import PatientIds
from proxy.pnr import dashed
from proxy.settings import DEFAULT_CONFIG
from proxy.simulators.population import TOLVAN
from tests.scaleout.test_nginx import _started
from tests.services import free_port
from tests.writes.visit import EXAMPLE_PATIENT

ISSUER = "https://idp.crash.test/"
KEY = os.urandom(32)
FHIR_JSON = {"Content-Type": "application/json"}
LEASE_S = 3.0  # (longer than any backend's total_s: the configuration insists)
TOTAL_S = 2.0  # every backend's (Cosmic answers each request in 0.3 s here)


def _http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Any:
    """(status, decoded JSON body, headers) of one request (the standard library's client)."""
    request = urllib.request.Request(url, data=body, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, orjson.loads(resp.read() or b"null"), resp.headers
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read() or b"null"), exc.headers


def _homecare_token(key: rsa.RSAPrivateKey) -> str:
    claims = jwt.decode(make_token("homecare"), options={"verify_signature": False})
    return jwt.encode({**claims, "iss": ISSUER}, key, algorithm="RS256")


def _config(tmp: Path, sims: dict[str, str], pem: Path, base: str) -> Path:
    doc = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    doc["facade"]["public_base_url"] = base
    doc["mappings_dir"] = str((DEFAULT_CONFIG.parent / doc["mappings_dir"]).resolve())
    for name, url in sims.items():
        doc["backends"][name]["base_url"] = url
        doc["backends"][name]["timeout"]["total_s"] = TOTAL_S
    doc["store"] = {"kind": "sqlite", "sqlite_path": str(tmp / "facade.sqlite")}
    doc["auth"] = {"issuers": [{"issuer": ISSUER, "pem_file": str(pem), "algorithms": ["RS256"]}]}
    doc["outbox"] = {**doc["outbox"], "lease_s": LEASE_S, "wait_s": 0.0, "poll_s": 0.1}
    path = tmp / "facade.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


class Processes:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.procs: list[subprocess.Popen[bytes]] = []
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FHIR_FACADE_")},
            "FHIR_FACADE_PATIENT_ID_KEY": base64.b64encode(KEY).decode(),
        }

    def spawn(self, name: str, *argv: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = self.tmp / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "proxy.cli", *argv], stdout=out, stderr=subprocess.STDOUT, env=self.env
            )
        self.procs.append(proc)
        return proc, log

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.stop()


def _written_ids(sims: dict[str, str]) -> dict[str, Counter[str]]:
    """Per simulator, how many of its records carry each facade-minted identifier."""
    pnr, person = dashed(TOLVAN.pnr), TOLVAN.pnr
    lists = {
        "cosmic": [
            f"/cosmic/api/v1/patients/{pnr}/{k}"
            for k in ("carecontacts", "notes", "vitalsigns", "administrations")
        ],
        "viva": [
            f"/viva/api/v2/{k}?personnummer={person}"
            for k in ("hembesok", "anteckningar", "matvarden", "administreringar")
        ],
    }
    out: dict[str, Counter[str]] = {}
    for name, paths in lists.items():
        seen: Counter[str] = Counter()
        for path in paths:
            status, answer, _ = _http("GET", sims[name] + path)
            assert status == 200, (path, status)
            _count(answer, seen)
        out[name] = seen
    return out


def _count(node: Any, seen: Counter[str]) -> None:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("externtId", "externalId") and isinstance(value, str):
                seen[value] += 1
            else:
                _count(value, seen)
    elif isinstance(node, list):
        for item in node:
            _count(item, seen)


def test_a_facade_killed_mid_delivery_and_restarted_leaves_each_target_with_the_visit_once(
    processes: Processes, tmp_path: Path
) -> None:
    sims: dict[str, str] = {}
    for name in ("cosmic", "viva", "npo"):
        proc, log = processes.spawn(name, "simulate", name, "--port", "0")
        sims[name] = _started(proc, log, rf"{name} simulator at (http://\S+?) ")[1]
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp_path / "issuer.pem"
    pem.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    port = free_port()
    base = f"http://127.0.0.1:{port}/fhir"
    config = _config(tmp_path, sims, pem, base)
    headers = {"Authorization": f"Bearer {_homecare_token(key)}", "Content-Type": "application/fhir+json"}
    # Cosmic slow: its ten requests take seconds, the facade dies among them
    status, _, _ = _http("PUT", f"{sims['cosmic']}/_sim/faults", b'{"latency_ms": 300}', FHIR_JSON)
    assert status == 200

    first, log = processes.spawn("serve-1", "--config", str(config), "serve", "--port", str(port))
    _started(first, log, r"FHIR base URL: ")
    patient = PatientIds(KEY).encode(TOLVAN.pnr)
    body = (
        (Path(__file__).resolve().parents[2] / "examples" / "home-visit.json")
        .read_text(encoding="utf-8")
        .replace(EXAMPLE_PATIENT, f"Patient/{patient}")
    )
    status, answer, answered = _http("POST", base, body.encode(), headers)
    assert status == 200, answer
    minted = [e["response"]["location"].rsplit("|", 1)[1] for e in answer["entry"]]
    task = "/fhir/" + answered["Location"].split("/fhir/", 1)[1]
    visits = f"{sims['cosmic']}/cosmic/api/v1/patients/{dashed(TOLVAN.pnr)}/carecontacts"
    for _ in range(200):  # until Cosmic holds the visit, the first of its ten (300 ms each)
        seen: Counter[str] = Counter()
        _count(_http("GET", visits)[1], seen)
        if seen:
            break
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    before = _written_ids(sims)
    assert 0 < sum(before["cosmic"].values()) < len(minted), before  # killed mid-delivery

    second, log = processes.spawn("serve-2", "--config", str(config), "serve", "--port", str(port))
    _started(second, log, r"FHIR base URL: ")
    deadline = time.monotonic() + LEASE_S + 30
    state, got = None, None
    while time.monotonic() < deadline:
        _, got, _ = _http("GET", f"http://127.0.0.1:{port}{task}", headers=headers)
        state = got.get("status")
        if state in ("completed", "failed"):
            break
        time.sleep(0.2)
    assert state == "completed", orjson.dumps(got).decode()
    after = _written_ids(sims)
    for target in ("cosmic", "viva"):
        assert after[target] == Counter(dict.fromkeys(minted, 1)), (target, after[target])
