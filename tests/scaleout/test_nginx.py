"""Scale out for real: two ``fhir-facade serve`` processes on two loopback ports, as two hosts would
be, behind nginx (Debian's package, run from its binary with config/nginx.conf.example — the file
the README shows), sharing the session's PostgreSQL (``store.kind: postgres``) and Redis
(``cache.store: redis``), in front of the three simulators (``fhir-facade simulate``).

- a paging walk whose pages alternate between the two hosts works — through nginx's round-robin,
  and asking each host directly in turn: a page token made by one is honoured by the other, from
  the snapshot in the shared store, with no backend asked again;
- a consent registered through one host is in force on the other at once (PDL);
- the access log (AuditEvent rows in PostgreSQL) holds exactly one completed event per request;
- links in Bundles and a Consent's Location name nginx's address (``facade.public_base_url``),
  never a host's port.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from proxy import loop
from proxy.auth.demo import make_token
from proxy.fhir.ids import PatientIds
from proxy.settings import DEFAULT_CONFIG
from proxy.simulators.population import REGION_PROVIDER, TOLVAN
from proxy.store.base import NO_OUTCOME
from tests.conftest import consent_body, postgres_dsn, redis_url, reset_postgres
from tests.services import Nginx, find_nginx, free_port, start_nginx

EXAMPLE = DEFAULT_CONFIG.parent / "nginx.conf.example"
ISSUER = "https://idp.scaleout.test/"
KEY = os.urandom(32)
IDS = PatientIds(KEY)
SIMULATORS = ("cosmic", "viva", "npo")
FHIR_JSON = {"Content-Type": "application/fhir+json"}
SENT: list[str] = []  # the X-Request-ID of every request the tests below sent about a patient


def site(example: str, listen: int, hosts: tuple[int, int]) -> str:
    """The example as the test runs it: its two upstream servers and its listen line on loopback.
    Anything else in the file is used as written; a changed shape fails here, not silently."""
    servers = iter(hosts)
    text, n = re.subn(
        r"(?m)^(\s*server )10\.0\.0\.1[12]:8080\b", lambda m: f"{m[1]}127.0.0.1:{next(servers)}", example
    )
    assert n == 2, "config/nginx.conf.example: expected two `server 10.0.0.1x:8080` lines in its upstream"
    text, n = re.subn(r"(?m)^(\s*listen )80;", rf"\g<1>127.0.0.1:{listen};", text)
    assert n == 1, "config/nginx.conf.example: expected one `listen 80;` line"
    return text


def directives(text: str) -> list[str]:
    """nginx statements in order (``name args;``, ``name args {``, ``}``), comments and layout aside."""
    plain = re.sub(r"#[^\n]*", "", text)
    return [
        " ".join(part.split()) + end
        for part, end in re.findall(r"([^;{}]*)([;{}])", plain)
        if part.strip() or end == "}"
    ]


def test_the_readmes_nginx_configuration_is_the_example_file() -> None:
    """README "Deployment" shows config/nginx.conf.example, every directive in order, nothing else."""
    readme = (DEFAULT_CONFIG.parent.parent / "README.md").read_text(encoding="utf-8")
    shown = re.findall(r"```nginx\n(.*?)```", readme, re.S)
    assert len(shown) == 1
    example = directives(EXAMPLE.read_text(encoding="utf-8"))
    assert "proxy_buffering off;" in example and "proxy_pass http://fhir_facade;" in example
    assert directives(shown[0]) == example


@dataclass
class Cluster:
    nginx: Nginx
    public: str  # nginx's FHIR base: facade.public_base_url
    hosts: tuple[str, str]  # each serve process's own FHIR base
    host_ports: tuple[int, int]
    simulators: dict[str, str]
    token: str

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def on_host(self, url: str, i: int) -> str:
        """A link (nginx's address) sent straight to host i instead."""
        assert url.startswith(self.public), url
        return self.hosts[i] + url[len(self.public) :]

    def upstreams(self) -> dict[str, str]:
        """{request id: the host:port nginx sent it to}, from nginx's access log."""
        seen: dict[str, str] = {}
        for line in self.nginx.access_log.read_text(encoding="utf-8").splitlines():
            rid, upstream, _status = line.split(" ")
            seen[rid] = upstream
        return seen


def _clinician_token(key: rsa.RSAPrivateKey) -> str:
    """The demo clinician's claims (the region's care provider), signed by the test's own issuer:
    ``serve`` trusts only configured issuers, never the demo one."""
    claims = jwt.decode(make_token("clinician"), options={"verify_signature": False})
    return jwt.encode({**claims, "iss": ISSUER}, key, algorithm="RS256")


def _config(tmp: Path, public: str, sims: dict[str, str], pem: Path) -> Path:
    """config/facade.yaml as each host would have it: shared PostgreSQL and Redis, nginx's address."""
    doc = yaml.safe_load(DEFAULT_CONFIG.read_text(encoding="utf-8"))
    doc["mappings_dir"] = str((DEFAULT_CONFIG.parent / doc["mappings_dir"]).resolve())
    doc["facade"]["public_base_url"] = public
    for name, url in sims.items():
        doc["backends"][name]["base_url"] = url
    doc["store"] = {"kind": "postgres", "postgres_dsn": postgres_dsn()}
    doc["cache"] = {**doc["cache"], "enabled": True, "store": "redis", "redis_url": redis_url()}
    doc["auth"] = {"issuers": [{"issuer": ISSUER, "pem_file": str(pem), "algorithms": ["RS256"]}]}
    path = tmp / "facade.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def _started(proc: subprocess.Popen[bytes], log: Path, pattern: str) -> re.Match[str]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text(encoding="utf-8", errors="replace"))
        if found:
            return found
        assert proc.poll() is None, log.read_text()
        time.sleep(0.1)
    raise AssertionError(f"not started in 60 s:\n{log.read_text()}")


async def _flush_redis() -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(redis_url())
    try:
        await client.flushdb()
    finally:
        await client.aclose()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    binary = find_nginx()  # (missing: one line naming the package)
    tmp = tmp_path_factory.mktemp("scaleout")
    loop.run(reset_postgres())
    loop.run(_flush_redis())
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FHIR_FACADE_")},
        "FHIR_FACADE_PATIENT_ID_KEY": base64.b64encode(KEY).decode(),
    }
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(name: str, *argv: str) -> tuple[subprocess.Popen[bytes], Path]:
        log = tmp / f"{name}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "proxy.cli", *argv], stdout=out, stderr=subprocess.STDOUT, env=env
            )
        procs.append(proc)
        return proc, log

    nginx: Nginx | None = None
    try:
        sims: dict[str, str] = {}
        for name in SIMULATORS:
            proc, log = spawn(name, "simulate", name, "--port", "0")
            sims[name] = _started(proc, log, rf"{name} simulator at (http://\S+?) ")[1]
        host_ports = (free_port(), free_port())
        example = EXAMPLE.read_text(encoding="utf-8")
        nginx = start_nginx(binary, lambda port: site(example, port, host_ports))
        public = f"{nginx.url}/fhir"
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = tmp / "issuer.pem"
        pem.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        config = _config(tmp, public, sims, pem)
        for i, port in enumerate(host_ports):
            proc, log = spawn(f"serve-{i}", "--config", str(config), "serve", "--port", str(port))
            _started(proc, log, r"FHIR base URL: ")
        hosts = (f"http://127.0.0.1:{host_ports[0]}/fhir", f"http://127.0.0.1:{host_ports[1]}/fhir")
        yield Cluster(nginx, public, hosts, host_ports, sims, _clinician_token(key))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if nginx is not None:
            nginx.stop()


@contextlib.asynccontextmanager
async def client(c: Cluster) -> Any:
    async with aiohttp.ClientSession(headers=c.auth) as http:
        yield http


async def get(http: aiohttp.ClientSession, url: str, rid: str) -> dict[str, Any]:
    async with http.get(url, headers={"X-Request-ID": rid}) as resp:
        body = await resp.json(content_type=None)
        assert resp.status == 200, body
        return dict(body)


async def backend_calls(http: aiohttp.ClientSession, c: Cluster) -> int:
    total = 0
    for url in c.simulators.values():
        async with http.get(f"{url}/_sim/stats") as resp:
            total += int((await resp.json())["requests"])
    return total


def next_link(bundle: dict[str, Any]) -> str | None:
    return next((lk["url"] for lk in bundle.get("link", []) if lk["relation"] == "next"), None)


def sources(bundle: dict[str, Any]) -> set[str]:
    return {
        e["resource"]["meta"]["source"].rsplit(":", 1)[-1]
        for e in bundle.get("entry", [])
        if "source" in e["resource"].get("meta", {})
    }


def everything(c: Cluster, base: str, count: int) -> str:
    return f"{base}/Patient/{IDS.encode(TOLVAN.pnr)}/$everything?_count={count}"


async def walk(
    http: aiohttp.ClientSession, c: Cluster, first: str, hop: Any, tag: str
) -> tuple[list[dict[str, Any]], int]:
    """Every page from ``first``, the k-th next link sent where ``hop(link, k)`` says, each request
    with its own X-Request-ID (kept in SENT); and the backend calls made after the first page."""
    SENT.append(f"{tag}-0")
    pages = [await get(http, first, SENT[-1])]
    calls = await backend_calls(http, c)
    while (link := next_link(pages[-1])) is not None:
        SENT.append(f"{tag}-{len(pages)}")
        pages.append(await get(http, hop(link, len(pages)), SENT[-1]))
    return pages, await backend_calls(http, c) - calls


def ids_of(pages: list[dict[str, Any]]) -> list[str]:
    """The fullUrl of every match (not of an OperationOutcome about the sources: no fullUrl)."""
    return [e["fullUrl"] for p in pages for e in p.get("entry", []) if "fullUrl" in e]


# The tests run in this order (module scope, one worker): the consent first, then the walks.


async def test_a_consent_registered_through_one_host_is_in_force_on_the_other_at_once(
    cluster: Cluster,
) -> None:
    c = cluster
    SENT.extend(["pdl-before", "pdl-consent", "pdl-after"])
    async with client(c) as http:
        before = await get(http, everything(c, c.hosts[1], 500), "pdl-before")
        async with http.post(
            f"{c.hosts[0]}/Consent",
            json=consent_body(IDS.encode(TOLVAN.pnr), recipient=REGION_PROVIDER),
            headers={**FHIR_JSON, "X-Request-ID": "pdl-consent"},
        ) as resp:
            assert resp.status == 201, await resp.text()
            location = resp.headers["Location"]
        after = await get(http, everything(c, c.hosts[1], 500), "pdl-after")
    # the other provider's records (Viva: the municipality's) are withheld without the consent
    assert "viva" not in sources(before) and "viva" in sources(after)
    assert location.startswith(f"{c.public}/Consent/"), location


async def test_a_paging_walk_alternating_between_the_hosts_works_from_the_shared_snapshot(
    cluster: Cluster,
) -> None:
    c = cluster
    SENT.append("whole")
    async with client(c) as http:
        whole = await get(http, everything(c, c.public, 500), "whole")
        # asked of each host directly in turn: host 0 made the token, host 1 honours it, and so on
        direct, direct_calls = await walk(
            http, c, everything(c, c.hosts[0], 5), lambda link, k: c.on_host(link, k % 2), "direct"
        )
        # through nginx: its round-robin alternates the pages between the hosts
        proxied, proxied_calls = await walk(
            http, c, everything(c, c.public, 5), lambda link, k: link, "proxied"
        )
    assert len(direct) >= 4 and len(proxied) == len(direct)
    assert ids_of(direct) == ids_of(proxied) == ids_of([whole])  # every resource once, in order
    # the later pages came from the first page's snapshot in the shared store: no backend asked
    assert direct_calls == proxied_calls == 0
    assert all("_page_token=" in link for p in direct if (link := next_link(p)))
    upstream = c.upstreams()
    ports = [urlsplit(f"http://{upstream[rid]}").port for rid in SENT if rid.startswith("proxied-")]
    assert len(ports) == len(proxied) and set(ports) == set(c.host_ports)
    assert all(a != b for a, b in itertools.pairwise(ports)), ports  # round-robin: in turn


async def test_links_name_nginx_never_a_host(cluster: Cluster) -> None:
    c = cluster
    async with client(c) as http:
        for tag, base in (("n", c.public), ("0", c.hosts[0]), ("1", c.hosts[1])):
            SENT.append(f"links-{tag}")
            bundle = await get(http, everything(c, base, 5), SENT[-1])
            urls = [lk["url"] for lk in bundle["link"]] + [
                e["fullUrl"] for e in bundle["entry"] if "fullUrl" in e
            ]
            assert {lk["relation"] for lk in bundle["link"]} >= {"self", "next"}
            for url in urls:
                assert url.startswith(c.public + "/"), url
                assert all(f":{port}" not in url for port in c.host_ports), url


async def test_the_access_log_has_exactly_one_event_per_request(cluster: Cluster) -> None:
    """Last: every request the tests above sent about a patient is one completed AuditEvent —
    whichever host (or nginx) it went through — and there is no other."""
    import asyncpg

    conn = await asyncpg.connect(postgres_dsn())
    try:
        rows = await conn.fetch(
            "SELECT request_id, count(*) AS n, min(outcome) AS o FROM audit_event GROUP BY 1"
        )
    finally:
        await conn.close()
    assert len(SENT) > 20 and len(set(SENT)) == len(SENT)  # (the tests above ran, in this worker)
    assert {r["request_id"]: r["n"] for r in rows} == dict.fromkeys(SENT, 1)
    assert all(r["o"] != NO_OUTCOME for r in rows)  # every event completed, none left as begun
