"""Links, ``fullUrl`` and ``Location`` never come from the request's Host header (or
X-Forwarded-Host, Forwarded): in ``serve`` they use the configured ``facade.public_base_url``, which
``serve`` refuses to start without; ``demo`` sets its own loopback address; the tests' server (no
public base configured) uses the address the connection arrived at.

A link built from the Host header points wherever the client — or whoever crafted the link the
client followed, or a cache keyed without the Host header — wants: a next-page link or a Consent's
Location sending the next request, with its bearer token, to another server.
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.settings import DEFAULT_CONFIG
from proxy.simulators.population import REGION_PROVIDER, TOLVAN
from tests.conftest import BASE, auth, consent_body, pid

EVIL = "evil.example"
FORGED = {
    "Host": f"{EVIL}:8443",
    "X-Forwarded-Host": EVIL,
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Port": "8443",
    "Forwarded": f"for=1.2.3.4;host={EVIL};proto=https",
}
PUBLIC = "https://fhir.region.example/fhir"


async def every_url(f: Any) -> tuple[list[str], str]:
    """What a client is sent to follow, asked with forged Host headers: every link and fullUrl of a
    search (and of its next page), the capability statement's url, and a new Consent's Location."""
    urls: list[str] = []
    resp = await f.client.get(
        f"{BASE}/Condition", params={"patient": pid(TOLVAN.pnr), "_count": "1"}, headers=FORGED
    )
    bundle = await resp.json(content_type=None)
    urls += [lk["url"] for lk in bundle["link"]] + [e["fullUrl"] for e in bundle["entry"] if "fullUrl" in e]
    assert any(lk["relation"] == "next" for lk in bundle["link"])
    resp = await f.client.get(f"{BASE}/metadata", headers=FORGED)
    cs = await resp.json(content_type=None)
    urls.append(cs["implementation"]["url"])
    resp = await f.client.get(f"{BASE}/.well-known/smart-configuration", headers=FORGED)
    urls += [v for v in (await resp.json(content_type=None)).values() if isinstance(v, str) and "://" in v]
    resp = await f.client.post(
        f"{BASE}/Consent",
        json=consent_body(pid(TOLVAN.pnr), recipient=REGION_PROVIDER),
        headers={**FORGED, **auth("clinician"), "Content-Type": "application/fhir+json"},
    )
    assert resp.status == 201, await resp.text()
    location = resp.headers["Location"]
    return urls, location


async def test_configured_public_base_is_used_whatever_the_host_header(facade: Any) -> None:
    async with facade(facade_overrides={"public_base_url": PUBLIC}) as f:
        urls, location = await every_url(f)
    for url in [*urls, location]:
        assert url.startswith(PUBLIC) and EVIL not in url, url
    assert re.fullmatch(rf"{re.escape(PUBLIC)}/Consent/[0-9a-f]{{32}}/_history/1", location)


async def test_without_a_configured_base_links_name_the_servers_own_address(facade: Any) -> None:
    async with facade() as f:
        own = f"http://{f.client.server.host}:{f.client.server.port}{BASE}"
        urls, location = await every_url(f)
    for url in [*urls, location]:
        assert EVIL not in url and "8443" not in url and "https" not in url, url
        assert url.startswith(own), url


def cli(*args: str, env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_serve_refuses_to_start_without_a_public_base_url(tmp_path: Path) -> None:
    """(Without the refusal it would serve, and this would time out.)"""
    env = {**os.environ, "FHIR_FACADE_PATIENT_ID_KEY": base64.b64encode(b"s" * 32).decode()}
    done = cli("serve", "--port", "0", env=env, timeout=30)
    assert done.returncode == 2
    assert "facade.yaml: facade.public_base_url:" in done.stderr and "Host" in done.stderr


def config_with_public_base(tmp_path: Path, public: str) -> Path:
    """config/facade.yaml as a deployment would copy it, with ``facade.public_base_url`` set."""
    doc = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    doc["mappings_dir"] = str((DEFAULT_CONFIG.parent / doc["mappings_dir"]).resolve())
    doc["facade"]["public_base_url"] = public
    doc["store"] = {"kind": "sqlite", "sqlite_path": str(tmp_path / "facade.sqlite")}
    path = tmp_path / "facade.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


@pytest.mark.parametrize("command", ["serve", "demo"])
def test_serve_and_demo_answer_with_their_base_and_outcomes(tmp_path: Path, command: str) -> None:
    """The commands as an operator runs them: links name the configured base (``serve``) or the
    demo's own address (``demo``) whatever Host is sent, and a malformed request is answered with
    an OperationOutcome (their runner is the facade's)."""
    import json
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "FHIR_FACADE_PATIENT_ID_KEY": base64.b64encode(b"d" * 32).decode()}
    config = config_with_public_base(tmp_path, PUBLIC)
    log = tmp_path / f"{command}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy.cli", "--config", str(config), command, "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        deadline = time.monotonic() + 30
        while "FHIR base URL" not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        printed = re.search(r"FHIR base URL: (\S+)", log.read_text())
        assert printed, log.read_text()
        expected = PUBLIC if command == "serve" else f"http://127.0.0.1:{port}/fhir"
        if command == "demo":
            assert printed.group(1) == expected
        request = urllib.request.Request(f"http://127.0.0.1:{port}/fhir/metadata", headers=FORGED)
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert json.loads(resp.read())["implementation"]["url"] == expected
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
            conn.sendall(b"GET /fhir/metadata HTTP/1.1\r\nHost: x\r\nX-A: \x01" + b"secret-bytes\r\n\r\n")
            answer = b""
            while chunk := conn.recv(65536):
                answer += chunk
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.") and b" 400 " in head.split(b"\r\n")[0]
        assert b"application/fhir+json" in head and b"secret-bytes" not in answer
        assert json.loads(body)["resourceType"] == "OperationOutcome"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
