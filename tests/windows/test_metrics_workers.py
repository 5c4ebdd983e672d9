"""`serve --workers 2`: one scrape counts every worker's requests (prometheus-client multiprocess
mode), and the metrics directory the command made is gone once it stops."""

from __future__ import annotations

import base64
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

TOKEN = "metrics-test-token-0123456789abcdef"


def test_metrics_of_two_workers_are_summed(tmp_path: Path) -> None:
    from tests.fhir.test_public_base_url import config_with_public_base

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {
        **{k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"},
        "FHIR_FACADE_PATIENT_ID_KEY": base64.b64encode(b"m" * 32).decode(),
        "FHIR_FACADE_METRICS_TOKEN": TOKEN,
        "TMPDIR": str(scratch),  # where serve makes its metrics directory
    }
    config = config_with_public_base(tmp_path, f"http://127.0.0.1:{port}/fhir")
    log = tmp_path / "serve.log"
    argv = [sys.executable, "-m", "proxy.cli", "--config", str(config), "serve", "--workers", "2"]
    with log.open("w") as out:
        proc = subprocess.Popen([*argv, "--port", str(port)], stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        pids: set[str] = set()
        deadline = time.monotonic() + 30
        while len(pids) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
            pids = set(re.findall(r"\(pid (\d+), event loop", log.read_text()))
        assert len(pids) == 2, log.read_text()
        n = 24  # one connection each: the kernel spreads them over both workers
        for _ in range(n):
            with urllib.request.urlopen(f"{base}/fhir/metadata", timeout=5) as resp:
                assert resp.status == 200
        for _ in range(4):  # whichever worker answers the scrape, it counts both workers' requests
            req = urllib.request.Request(f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}"})
            with urllib.request.urlopen(req, timeout=5) as resp:
                text = resp.read().decode()
            counted = {
                s.labels["route"]: s.value
                for family in text_string_to_metric_families(text)
                for s in family.samples
                if s.name == "fhir_facade_requests_total" and s.labels["status"] == "200"
            }
            assert counted.get("/fhir/metadata") == n, text
        made = list(scratch.iterdir())
        assert len(made) == 1 and made[0].name.startswith("fhir-facade-metrics-")
        assert len({p.name.rsplit("_", 1)[-1] for p in made[0].iterdir()}) >= 2  # files of both workers
    finally:
        proc.terminate()
        assert proc.wait(timeout=20) is not None
    assert list(scratch.iterdir()) == []  # the metrics directory went with the command
