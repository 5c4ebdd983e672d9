"""CORS for the configured origins only: a preflight answered without a token, the actual answers
(errors too) readable by an allowed origin, nothing for any other origin, nothing when unset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.access.pdl import EMERGENCY_HEADER
from proxy.settings import ConfigError, load_settings
from tests.conftest import BASE, auth, pid

TOLVAN = "191212121212"
WEB = "https://web.1177.example"
OTHER = "https://evil.example"
CORS = {"cors_allow_origins": (WEB,)}


def preflight(origin: str, method: str = "GET", headers: str = "authorization") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": headers,
    }


async def test_a_preflight_from_an_allowed_origin_is_answered_without_a_token(edge: Any) -> None:
    asked = f"authorization, content-type, prefer, x-request-id, traceparent, {EMERGENCY_HEADER.lower()}"
    async with edge(http=CORS) as f:
        resp = await f.client.options(
            f"{BASE}/Patient/{pid(TOLVAN)}/$everything", headers=preflight(WEB, headers=asked)
        )
        post = await f.client.options(f"{BASE}/Consent", headers=preflight(WEB, "POST", "content-type"))
    assert resp.status == 204 and post.status == 204
    h = resp.headers
    assert h["Access-Control-Allow-Origin"] == WEB
    assert "Origin" in h.getall("Vary", []) or "Origin" in h.get("Vary", "")
    assert {m.strip() for m in h["Access-Control-Allow-Methods"].split(",")} >= {"GET", "POST", "PUT"}
    allowed = {x.strip().lower() for x in h["Access-Control-Allow-Headers"].split(",")}
    assert allowed >= {x.strip() for x in asked.split(",")}
    assert int(h["Access-Control-Max-Age"]) > 0
    assert "Access-Control-Allow-Credentials" not in h  # bearer tokens, never cookies
    assert "WWW-Authenticate" not in h


@pytest.mark.parametrize(
    "asked",
    [
        preflight(OTHER),
        preflight("null"),
        preflight(WEB + ".evil.example"),
        preflight(WEB, method="DELETE"),
        preflight(WEB, headers="authorization, x-secret-header"),
    ],
)
async def test_a_preflight_that_is_not_allowed_gets_no_cors_headers(edge: Any, asked: dict[str, str]) -> None:
    async with edge(http=CORS) as f:
        resp = await f.client.options(f"{BASE}/Patient/{pid(TOLVAN)}/$everything", headers=asked)
    assert resp.status == 403
    assert not [h for h in resp.headers if h.lower().startswith("access-control-")]


async def test_answers_to_an_allowed_origin_are_readable_errors_too(edge: Any) -> None:
    async with edge(http=CORS) as f:
        ok = await f.client.get(
            f"{BASE}/Patient/{pid(TOLVAN)}/$everything", headers={"Origin": WEB, **auth("clinician")}
        )
        refused = await f.client.get(f"{BASE}/Patient/{pid(TOLVAN)}", headers={"Origin": WEB})
        other = await f.client.get(
            f"{BASE}/Patient/{pid(TOLVAN)}/$everything", headers={"Origin": OTHER, **auth("clinician")}
        )
        same_site = await f.client.get(f"{BASE}/metadata")  # no Origin: not a CORS request
    for resp in (ok, refused):
        assert resp.headers["Access-Control-Allow-Origin"] == WEB
        exposed = {x.strip() for x in resp.headers["Access-Control-Expose-Headers"].split(",")}
        assert exposed >= {"Location", "ETag", "X-Request-ID", "Content-Location"}
        assert "Origin" in resp.headers.get("Vary", "")
    assert (ok.status, refused.status, other.status) == (200, 401, 200)
    for resp in (other, same_site):
        assert not [h for h in resp.headers if h.lower().startswith("access-control-")]
        assert "Origin" in resp.headers.get("Vary", "")  # (a cache must not hand it to the allowed one)


async def test_without_configured_origins_there_is_no_cors_at_all(edge: Any) -> None:
    async with edge() as f:
        pre = await f.client.options(f"{BASE}/Patient/{pid(TOLVAN)}/$everything", headers=preflight(WEB))
        got = await f.client.get(f"{BASE}/metadata", headers={"Origin": WEB})
    assert pre.status == 401  # (as before: no CORS, so a preflight is a request like any other)
    for resp in (pre, got):
        assert not [h for h in resp.headers if h.lower().startswith("access-control-")]


def write_config(tmp_path: Path, http: dict[str, Any]) -> Path:
    """config/facade.yaml with its ``http`` section replaced (relative paths: from the original)."""
    config = Path(__file__).resolve().parents[2] / "config" / "facade.yaml"
    doc = yaml.safe_load(config.read_text(encoding="utf-8"))
    doc["mappings_dir"] = str(config.parent.parent / "mappings")
    doc["http"] = http
    path = tmp_path / "facade.yaml"
    path.write_text(yaml.safe_dump(doc), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "origins",
    [
        ["*"],
        ["null"],
        ["https://web.example/app"],
        ["web.example"],
        ["https://web.example/"],
        "https://a.example",
        [1],
    ],
)
def test_an_origin_that_is_not_a_plain_origin_fails_at_start_up(tmp_path: Path, origins: Any) -> None:
    path = write_config(tmp_path, {"cors": {"allow_origins": origins}})
    with pytest.raises(ConfigError, match=r"^facade\.yaml: http\.cors\.allow_origins"):
        load_settings(path)


def test_the_http_settings_are_read(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        {
            "cors": {
                "allow_origins": ["https://Web.1177.example", "http://localhost:3000"],
                "max_age_s": 120,
            },
            "compression": {"gzip": False, "min_bytes": 2048},
        },
    )
    s = load_settings(path).http
    assert s.cors_allow_origins == ("https://web.1177.example", "http://localhost:3000")
    assert s.cors_max_age_s == 120 and s.gzip is False and s.gzip_min_bytes == 2048
    with pytest.raises(ConfigError, match=r"^facade\.yaml: http\.compression\.min_bytes"):
        load_settings(write_config(tmp_path, {"compression": {"min_bytes": -1}}))
    with pytest.raises(ConfigError, match=r"^facade\.yaml: http: unknown key"):
        load_settings(write_config(tmp_path, {"gzip": True}))
    assert load_settings().http.cors_allow_origins == ()  # the default: no CORS
