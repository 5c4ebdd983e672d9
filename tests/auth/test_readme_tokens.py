"""Every curl example in the README works with the demo's default tokens: each carries the scopes
its examples need (reads, searches, $everything, Consent writes) — and every example sends one."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from proxy.access import NEEDS
from proxy.auth.demo import demo_issuer, make_token
from proxy.auth.verify import Authenticator
from proxy.fhir.ids import PatientIds
from proxy.settings import DEMO_PATIENT_ID_KEY
from proxy.simulators.population import TOLVAN
from proxy.types import Permission

README = Path(__file__).parents[2] / "README.md"
IDS = PatientIds(DEMO_PATIENT_ID_KEY)
_TOKEN = re.compile(r'Authorization: Bearer \$([A-Z]+)"')
_MINTED = {"BOUND"}
_URL = re.compile(r"""['"]?(http://127\.0\.0\.1:8080/fhir/[^'"\s]+)""")


def examples() -> list[tuple[str, str, str]]:
    """(audience variable, method, path after /fhir/) of each curl command aimed at the facade."""
    text = README.read_text(encoding="utf-8").replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        if not line.lstrip().startswith("curl") or "/fhir/" not in line:
            continue
        url = _URL.search(line)
        assert url, line
        token = _TOKEN.search(line)
        method = re.search(r"-X (\w+)", line)
        path = urlsplit(url.group(1)).path.removeprefix("/fhir/")
        variable = token.group(1) if token else ""
        if variable in _MINTED:
            continue  # a token minted in the example itself (fhir-facade token), not the demo's
        found.append((variable, method.group(1) if method else "GET", path))
    return found


def needs(method: str, path: str) -> tuple[Permission, str]:
    parts = path.split("/")
    if method == "POST":
        return "c", parts[0]
    if method == "PUT":
        return "u", parts[0]
    if parts[-1] == "$everything":
        return NEEDS["everything"], "Condition"
    return (NEEDS["read"] if len(parts) == 2 else NEEDS["search-type"]), parts[0]


def test_the_readme_has_examples() -> None:
    audiences = {a for a, _, _ in examples()}
    assert {"CLINICIAN", "AMBULANCE", "HOMECARE", "PATIENT"} <= audiences
    assert {m for _, m, _ in examples()} >= {"GET", "POST"}


@pytest.mark.parametrize(("variable", "method", "path"), examples())
def test_the_demo_tokens_carry_what_each_example_needs(
    tmp_path: Path, variable: str, method: str, path: str
) -> None:
    if path in ("metadata", ".well-known/smart-configuration"):
        return
    assert variable, f"{method} {path}: the example sends no token"
    audience = variable.lower()
    auth = Authenticator({}, tmp_path, extra_issuer=demo_issuer(), patient_ids=IDS)
    pnr = TOLVAN.pnr if audience == "patient" else None
    principal = auth.authenticate(f"Bearer {make_token(audience, pnr=pnr)}")
    permission, rtype = needs(method, path)
    assert principal.may(permission, rtype, TOLVAN.pnr), (variable, method, path)
