"""Resource ids cannot be predicted: the leak suite's attacker knows a patient's id and the source
record ids (sequential in the simulators, guessable in real systems), and tries to compute the
id of a record withheld from them to learn that it exists (403 "withheld") rather than not (404).

The ids are ``<patient id>-<backend>-<keyed hash>``, keyed with a key derived from the
deployment's patient-id key: stable across app instances (workers, hosts) sharing the key,
different under another.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient

from proxy.app import create_app
from proxy.auth.demo import demo_issuer
from proxy.edge.http import STORE_KEY
from proxy.fhir.ids import PatientIds
from proxy.settings import DEMO_PATIENT_ID_KEY, Settings
from proxy.simulators.harness import running_simulators
from proxy.simulators.population import TOLVAN, population
from tests.conftest import BASE, FacadeTestServer, auth, consent_to, pid

# Tolvan's home-care records in Viva (mapping, FHIR type, Viva's own record id): the municipality's,
# so withheld from the region's clinician until Tolvan consents
VIVA_RECORDS = [
    ("viva/anteckningar", "DocumentReference", "AN-100000-1"),
    ("viva/vardplaner", "CarePlan", "VP-100000-1"),
    ("viva/hembesok", "Encounter", "HB-100000-1"),
    ("viva/funktionsbedomningar", "Observation", "FB-100000-1"),
    ("viva/lakemedelslista", "MedicationStatement", "OR-100000-1"),
]


def unkeyed_id(patient_id: str, backend: str, mapping: str, record_id: str) -> str:
    """The id as the facade made it before ids were keyed: anyone could compute it."""
    digest = hashlib.blake2b(f"{mapping}\x1f{record_id}".encode(), digest_size=8).hexdigest()
    return f"{patient_id}-{backend}-{digest}"


async def answer(client: Any, path: str, rid: str, headers: dict[str, str]) -> tuple[int, str, set[str]]:
    resp = await client.get(path, headers=headers)
    text = (await resp.text()).replace(rid, "ID")
    return resp.status, text, {h for h in resp.headers if h not in ("Date", "X-Request-ID")}


async def test_a_computed_id_of_a_withheld_record_reads_like_a_random_one(facade: Any) -> None:
    tolvan = pid(TOLVAN.pnr)
    async with facade(consent=False) as f:
        # the records exist and are withheld from the clinician (the hint says so) ...
        for _, rtype, _ in VIVA_RECORDS:
            status, bundle = await f.get(f"{BASE}/{rtype}", params={"patient": tolvan})
            assert status == 200
            assert any(e["search"]["mode"] == "outcome" for e in bundle["entry"]), rtype
        # ... and Tolvan sees them, under ids nobody without the key can compute
        _, own = await f.get(
            f"{BASE}/Patient/{tolvan}/$everything",
            params={"_count": "500"},
            headers=auth("patient", pnr=TOLVAN.pnr),
        )
        matches = [e["resource"] for e in own["entry"] if e["search"]["mode"] == "match"]
        viva_ids = {r["id"] for r in matches if "-viva-" in r["id"]}
        assert len(viva_ids) >= len(VIVA_RECORDS)
        clinician = auth("clinician")
        for mapping, rtype, record_id in VIVA_RECORDS:
            guessed = unkeyed_id(tolvan, "viva", mapping, record_id)
            random = f"{tolvan}-viva-0123456789abcdef"
            probe = await answer(f.client, f"{BASE}/{rtype}/{guessed}", guessed, clinician)
            control = await answer(f.client, f"{BASE}/{rtype}/{random}", random, clinician)
            assert probe == control, f"{rtype}: a computed id answers {probe[0]}, a random one {control[0]}"
            # (records of the type are withheld from this asker: any id of it reads as the hint's 403)
            assert probe[0] == 403
            assert guessed not in viva_ids


async def test_ids_are_the_same_under_one_key_and_differ_under_another(
    settings: Settings, tmp_path: Path
) -> None:
    """Two app instances (two workers or hosts) sharing the key give a record the same id; an app
    under another key gives it another (its patient id differs too: compare the hash parts)."""
    people = population(0, settings.simulators.seed)

    async def condition_hashes(key: bytes, n: int) -> list[str]:
        live = replace(
            settings.with_backend_urls(urls),
            store=replace(settings.store, kind="sqlite", sqlite_path=tmp_path / f"s{n}.sqlite"),
            cache=replace(settings.cache, enabled=False),
        )
        app = create_app(live, patient_id_key=key, extra_issuer=demo_issuer())
        patient_id = PatientIds(key).encode(TOLVAN.pnr)
        async with TestClient(FacadeTestServer(app)) as client:
            await consent_to(client.server.app[STORE_KEY], [TOLVAN.pnr])
            resp = await client.get(
                f"{BASE}/Condition", params={"patient": patient_id}, headers=auth("clinician")
            )
            bundle = await resp.json(content_type=None)
        ids = [e["resource"]["id"] for e in bundle["entry"] if e["search"]["mode"] == "match"]
        assert ids and all(i.startswith(f"{patient_id}-") for i in ids)
        return sorted(i.removeprefix(f"{patient_id}-") for i in ids)

    async with running_simulators(settings, people) as urls:
        first = await condition_hashes(DEMO_PATIENT_ID_KEY, 1)
        second = await condition_hashes(DEMO_PATIENT_ID_KEY, 2)
        other = await condition_hashes(b"another-deployment-key-32-bytes!", 3)
    assert first == second
    assert {h.split("-")[0] for h in first} == {h.split("-")[0] for h in other}  # the same backends
    assert set(first).isdisjoint(other)
