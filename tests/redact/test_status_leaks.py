"""Source statuses never depend on records the asker cannot see.

Probes as an attacker would run them: two patients who differ ONLY in records hidden from the asker
— a note not approved for the patient (NOPAT), another care provider's record without consent — are
asked the same sequence of questions (the searches, ``$everything``, ``_summary=count``, the same
again from the cache, a type the engagement index may skip) by every audience; the per-source status
blocks must be byte-identical, latency values and cache ages normalised.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from proxy.app import create_app
from proxy.auth.demo import demo_issuer
from proxy.settings import DEMO_PATIENT_ID_KEY, load_settings
from proxy.simulators import npo
from proxy.simulators.harness import running_simulators
from proxy.simulators.population import OTHER_REGION_PROVIDER, at, generated_people
from tests.conftest import BASE, FacadeTestServer, auth, pid
from tests.source_status import status_block, statuses

SETTINGS = load_settings()
# two people NPÖ knows, unknown to Cosmic and Viva: HIDDEN's only NPÖ record is a note from another
# region's provider that is not approved for the patient; EMPTY has none
HIDDEN, EMPTY = (
    replace(p, in_cosmic=False, in_viva=False, in_npo=True, generated=False)
    for p in generated_people(2, SETTINGS.simulators.seed)
)
SECRET = "Dold anteckning, ej delgiven patienten"


def _npo_data(people: list[Any]) -> dict[str, dict[str, list[Any]]]:
    records: dict[str, list[Any]] = npo._empty()
    records["careDocumentation"] = [
        npo.note(
            HIDDEN.pnr,
            "LEAK-N-1",
            at(30),
            "utr",
            "Utredning",
            SECRET,
            approved=False,
            provider=OTHER_REGION_PROVIDER,
        )
    ]
    return {
        HIDDEN.pnr: {k: [npo._drop_none(r) for r in v] for k, v in records.items()},
        EMPTY.pnr: npo._empty(),
    }


@contextlib.asynccontextmanager
async def facade(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TestClient]:
    """The deployment's own settings — cache and engagement index on — and no consents at all."""
    monkeypatch.setattr(npo, "build_data", _npo_data)
    async with running_simulators(SETTINGS, [HIDDEN, EMPTY]) as urls:
        live = SETTINGS.with_backend_urls(urls)
        live = replace(
            live,
            cache=replace(live.cache, enabled=True, store="memory"),
            engagement=replace(live.engagement, enabled=True),
            store=replace(live.store, kind="sqlite", sqlite_path=tmp / f"{uuid.uuid4().hex}.sqlite"),
        )
        app = create_app(live, patient_id_key=DEMO_PATIENT_ID_KEY, extra_issuer=demo_issuer())
        async with TestClient(FacadeTestServer(app)) as client:
            yield client


def probes(patient_id: str) -> list[tuple[str, dict[str, str]]]:
    search = {"patient": patient_id}
    return [
        (f"{BASE}/Patient/{patient_id}/$everything", {}),  # every contract at once, then from the cache
        (f"{BASE}/DocumentReference", search),
        (f"{BASE}/DocumentReference", {**search, "_summary": "count"}),
        (f"{BASE}/Condition", search),  # no safety-critical type: the index may skip
        (f"{BASE}/DocumentReference", search),  # again: from the cache
        (f"{BASE}/Patient/{patient_id}/$everything", {}),
        (f"{BASE}/Condition", search),
        (f"{BASE}/Flag", search),
    ]


PDL = "urn:fhir-facade:pdl"


def _pdl_hint(bundle: dict[str, Any]) -> bool:
    return any(
        c.get("system") == PDL
        for e in bundle.get("entry", [])
        if e["search"]["mode"] == "outcome"
        for i in e["resource"]["issue"]
        for c in i.get("details", {}).get("coding", [])
    )


async def _statuses_seen(client: TestClient, audience: str, pnr: str) -> list[tuple[int, str, bool]]:
    """Per probe: (HTTP status, the status block or the error body, whether the PDL hint is there)."""
    headers = auth("patient", pnr=pnr) if audience == "patient" else auth(audience)
    seen = []
    for path, params in probes(pid(pnr)):
        resp = await client.get(path, params=params, headers=headers)
        text = await resp.text()
        assert SECRET not in text
        if resp.status != 200:  # ($everything of a patient with nothing at all: 404)
            seen.append((resp.status, text, False))
            continue
        bundle = json.loads(text)
        assert statuses(bundle), path  # every answer names its sources
        block = json.dumps(status_block(bundle), sort_keys=True, ensure_ascii=False)
        seen.append((200, block, _pdl_hint(bundle)))
    return seen


@pytest.mark.parametrize("audience", ["ambulance", "clinician", "homecare", "patient"])
async def test_hidden_records_leave_no_trace_in_the_source_statuses(
    audience: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with facade(tmp_path, monkeypatch) as client:
        hidden = await _statuses_seen(client, audience, HIDDEN.pnr)
        empty = await _statuses_seen(client, audience, EMPTY.pnr)
    for (path, _), h, e in zip(probes(""), hidden, empty, strict=True):
        if h[0] == e[0]:
            assert h[:2] == e[:2], path  # byte for byte, step by step
            continue
        # The one designed difference: care staff are told, by the PDL hint, that a record is
        # withheld (never where or what), so $everything of a patient whose only record is
        # withheld is that hint (200), not "no such patient" (404) like a patient with nothing.
        assert audience != "patient" and path.endswith("$everything"), path
        assert h[0] == 200 and h[2] and e[0] == 404


async def test_the_probe_sees_the_hidden_record_where_it_is_not_hidden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(The probe is sound: with emergency access the clinician reads the note — it is there.)"""
    async with facade(tmp_path, monkeypatch) as client:
        resp = await client.get(
            f"{BASE}/DocumentReference",
            params={"patient": pid(HIDDEN.pnr)},
            headers={**auth("clinician"), "X-Emergency-Access": "no-time"},
        )
        assert resp.status == 200
        bundle = await resp.json(content_type=None)
    assert bundle["total"] == 1 and statuses(bundle)["npo"] == "answered"
