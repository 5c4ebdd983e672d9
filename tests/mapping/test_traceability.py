"""Traceability over the three simulators' real data, through the real pipeline stages (fan-out,
decode, map, merge — what ``fhir-facade mappings check`` runs): every resource names the record it
was made from, every HSA-id is written in HL7 Sweden's system, the responsible care unit is on the
author / performer / recorder, and no reference names an Organization where R4 does not allow one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.app import compile_mappings
from proxy.fanout.client import BackendClient
from proxy.fhir.ids import PatientIds, ResourceIds
from proxy.hsa import HSA_SYSTEM, RIVTA_HSA_SYSTEM, is_hsa_id
from proxy.merge.facts import merge
from proxy.pipeline.facade import Facade
from proxy.pipeline.fetch import fetch_and_map
from proxy.redact.policy import compile_policy
from proxy.settings import DEMO_PATIENT_ID_KEY, load_settings
from proxy.simulators import npo
from proxy.simulators import population as pop
from proxy.simulators.harness import running_simulators
from proxy.types import MappedResource
from tests.conftest import BASE, auth, pid

MAPPINGS_DIR = Path(__file__).resolve().parents[2] / "mappings"
# (and the long history: thousands of generated records must trace as the hand-written ones do)
PEOPLE = [*pop.DEMO_PEOPLE, *pop.LONG_HISTORY_PEOPLE, *pop.generated_people(6)]
ON_BEHALF_OF = "urn:fhir-facade:on-behalf-of"

# The names the simulators give their HSA-ids (care units, the NPÖ lab, people): who is who.
DIRECTORY: dict[str, str] = {
    **{hsa: name for hsa, name in pop.UNITS.values()},
    **{hsa: name for hsa, name in npo._OTHER_DOCTORS.values()},
    **{hsa: name for hsa, name in npo._COSMIC_DOCTORS.values()},
}
ORGANISATIONS = {hsa for hsa, _ in pop.UNITS.values()} | {
    pop.REGION_PROVIDER,
    pop.OTHER_REGION_PROVIDER,
    pop.MUNICIPALITY_PROVIDER,
}

# Who made / performed / recorded / holds a record, per resource type, and what R4 (4.0.1) allows
# that reference to point at. ``path`` is a dotted path; lists are walked.
_PEOPLE = {"Practitioner", "PractitionerRole", "Patient", "RelatedPerson"}
PARTIES: dict[str, dict[str, set[str]]] = {
    "Flag": {"author": {"Device", "Organization", "Patient", "Practitioner", "PractitionerRole"}},
    "Condition": {"recorder": _PEOPLE, "asserter": _PEOPLE},
    "AllergyIntolerance": {"recorder": _PEOPLE, "asserter": _PEOPLE},
    "Observation": {"performer": _PEOPLE | {"Organization", "CareTeam"}},
    "Immunization": {"performer.actor": {"Practitioner", "PractitionerRole", "Organization"}},
    "MedicationStatement": {"informationSource": _PEOPLE | {"Organization"}},
    "MedicationAdministration": {"performer.actor": _PEOPLE | {"Device"}},
    "DocumentReference": {
        "author": _PEOPLE | {"Organization", "Device"},
        "authenticator": {"Practitioner", "PractitionerRole", "Organization"},
        "custodian": {"Organization"},
    },
    "Encounter": {
        "serviceProvider": {"Organization"},
        "participant.individual": {"Practitioner", "PractitionerRole", "RelatedPerson"},
    },
    "CarePlan": {
        "author": _PEOPLE | {"Organization", "Device", "CareTeam"},
        "contributor": _PEOPLE | {"Organization", "Device", "CareTeam"},
    },
    "Procedure": {
        "recorder": _PEOPLE,
        "asserter": _PEOPLE,
        "performer.actor": _PEOPLE | {"Organization", "Device"},
    },
}


async def _map_everyone() -> dict[str, list[MappedResource]]:
    settings = load_settings()
    mappings = compile_mappings(settings, ResourceIds(DEMO_PATIENT_ID_KEY))
    ids = PatientIds(DEMO_PATIENT_ID_KEY)
    out: dict[str, list[MappedResource]] = {}
    async with running_simulators(settings, PEOPLE, faults={}) as urls:
        live = settings.with_backend_urls(urls)
        clients = {b.name: BackendClient.open(b, live.facade.max_body_bytes) for b in live.backends}
        facade = Facade(
            settings=live, mappings=mappings, clients=clients, ids=ids, policy=compile_policy(settings.policy)
        )
        try:
            for person in PEOPLE:
                mapped, outcomes = await fetch_and_map(
                    facade, ids.patient(person.pnr), mappings.resource_types
                )
                assert not [o for o in outcomes if o.status.degraded], outcomes
                out[person.pnr] = mapped
        finally:
            for c in clients.values():
                await c.close()
    return out


@pytest.fixture(scope="module")
def mapped() -> dict[str, list[MappedResource]]:
    return asyncio.run(_map_everyone())


def records(mapped: dict[str, list[MappedResource]]) -> Iterator[MappedResource]:
    for resources in mapped.values():
        yield from (m for m in resources if m.resource["resourceType"] != "Patient")


def record_systems(resource: dict[str, Any], source: str) -> list[dict[str, Any]]:
    prefix = f"urn:fhir-facade:{source}:record:"
    return [i for i in resource.get("identifier", []) if str(i.get("system", "")).startswith(prefix)]


IDENTIFIER_KEYS = {"system", "value", "use", "type", "assigner", "period", "extension"}


def identifiers(node: Any) -> Iterator[dict[str, Any]]:
    """Every object with a ``value`` and a ``system``-or-no-system that looks like an Identifier."""
    if isinstance(node, dict):
        if "value" in node and isinstance(node["value"], str) and set(node) <= IDENTIFIER_KEYS:
            yield node
        for v in node.values():
            yield from identifiers(v)
    elif isinstance(node, list):
        for v in node:
            yield from identifiers(v)


def at(node: Any, path: str) -> list[dict[str, Any]]:
    """The references at a dotted path (lists walked)."""
    found: list[Any] = [node]
    for key in path.split("."):
        nxt: list[Any] = []
        for n in found:
            v = n.get(key) if isinstance(n, dict) else None
            nxt.extend(v if isinstance(v, list) else [v] if v is not None else [])
        found = nxt
    return [r for r in found if isinstance(r, dict)]


def with_behalf(ref: dict[str, Any]) -> list[dict[str, Any]]:
    """A reference and the care units it names as acting on behalf of."""
    extra = [e["valueReference"] for e in ref.get("extension", []) if e.get("url") == ON_BEHALF_OF]
    return [ref, *extra]


# ---- (b) the source record id --------------------------------------------------------------------


def test_every_resource_names_its_source_record_once(mapped: dict[str, list[MappedResource]]) -> None:
    seen: dict[tuple[str, str, str], str] = {}
    per_source: dict[str, int] = {}
    for m in records(mapped):
        ours = record_systems(m.resource, m.source)
        assert len(ours) == 1, (m.mapping, m.resource.get("identifier"))
        stem = m.mapping.split("/", 1)[1]
        assert ours[0]["system"] == f"urn:fhir-facade:{m.source}:record:{stem}", ours
        value = ours[0]["value"]
        # the record id the mapping's `id` reads: the last part of the dedupe origin
        assert value and m.origin_key.endswith(f"|{value}"), (m.origin_key, value)
        # one record, one identifier: no two resources of a patient share it
        key = (
            m.resource["subject" if "subject" in m.resource else "patient"]["reference"],
            ours[0]["system"],
            value,
        )
        assert seen.setdefault(key, m.resource["id"]) == m.resource["id"], key
        # and no other source's record system on a resource before merge
        others = [
            i
            for i in m.resource.get("identifier", [])
            if str(i.get("system", "")).startswith("urn:fhir-facade:")
            and ":record:" in str(i.get("system"))
            and i not in ours
        ]
        assert not others, others
        per_source[m.source] = per_source.get(m.source, 0) + 1
    assert set(per_source) == {"cosmic", "viva", "npo"}, per_source


def test_tolvans_source_ids_are_the_records_ids(mapped: dict[str, list[MappedResource]]) -> None:
    tolvan = mapped[pop.TOLVAN.pnr]
    values = {(m.mapping, i["value"]) for m in tolvan for i in record_systems(m.resource, m.source)}
    assert ("cosmic/diagnoses", "D-100001") in values  # Cosmic's diagnosisId
    assert ("cosmic/threats", "T-800001") in values
    assert ("viva/vardplaner", "VP-100000-1") in values  # Viva's planId
    # NPÖ's copy of the hypertension: the producing system's HSA-id and its record id
    assert ("npo/diagnoses", f"{pop.COSMIC_SYSTEM}|D-100001") in values


def test_merge_dedupes_by_origin_and_keeps_both_copies_record_ids(
    mapped: dict[str, list[MappedResource]],
) -> None:
    for pnr, resources in mapped.items():
        kept = merge(resources)
        # identifiers change nothing in dedupe: one resource per origin
        assert len(kept) == len({m.origin_key for m in resources}), pnr
        by_origin: dict[str, list[MappedResource]] = {}
        for m in resources:
            by_origin.setdefault(m.origin_key, []).append(m)
        for k in kept:
            copies = by_origin[k.origin_key]
            if k.resource["resourceType"] == "Patient":
                continue
            # the kept copy names every copy's source record
            for copy in copies:
                ours = record_systems(copy.resource, copy.source)
                assert ours[0] in k.resource["identifier"], (k.origin_key, copy.source)
            assert record_systems(k.resource, k.source) == record_systems(
                next(c for c in copies if c.source == k.source).resource, k.source
            )
    tolvan = merge(mapped[pop.TOLVAN.pnr])
    hypertension = [
        k.resource
        for k in tolvan
        if k.resource["resourceType"] == "Condition" and k.resource["code"]["coding"][0]["code"] == "I10"
    ]
    assert len(hypertension) == 1
    systems = {i.get("system"): i["value"] for i in hypertension[0]["identifier"]}
    assert systems["urn:fhir-facade:cosmic:record:diagnoses"] == "D-100001"
    assert systems["urn:fhir-facade:npo:record:diagnoses"] == f"{pop.COSMIC_SYSTEM}|D-100001"


# ---- (a) HSA-ids in HL7 Sweden's system ------------------------------------------------------------


def test_every_hsa_id_is_in_hl7_swedens_system(mapped: dict[str, list[MappedResource]]) -> None:
    count = 0
    for resources in mapped.values():
        for m in merge(resources):
            text = orjson.dumps(m.resource).decode()
            assert RIVTA_HSA_SYSTEM not in text, m.mapping
            assert "1.2.752.129.2.1.4.1" not in text, m.mapping
            for ident in identifiers(m.resource):
                if is_hsa_id(ident["value"]):
                    assert ident.get("system") == HSA_SYSTEM, (m.mapping, ident)
                    count += 1
                if ident.get("system") == HSA_SYSTEM:
                    assert is_hsa_id(ident["value"]), (m.mapping, ident)
    assert count > 100


def test_no_mapping_writes_the_rivta_oid() -> None:
    for path in sorted(MAPPINGS_DIR.rglob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        assert "1.2.752.129.2.1.4.1" not in text, path.name
        assert "1.2.752.29.4.19" not in text, f"{path.name}: write {{@hsa_system}}, not the OID"


# ---- (b) the responsible care unit, and R4's reference targets ------------------------------------


def test_the_care_unit_is_on_the_author_or_performer(mapped: dict[str, list[MappedResource]]) -> None:
    checked: dict[str, int] = {}
    for m in records(mapped):
        rtype = m.resource["resourceType"]
        assert rtype in PARTIES, rtype
        assert m.care_unit, m.mapping
        named = [
            r
            for path in PARTIES[rtype]
            for ref in at(m.resource, path)
            for r in with_behalf(ref)
            if r.get("identifier") == {"system": HSA_SYSTEM, "value": m.care_unit}
        ]
        assert named, (m.mapping, {p: at(m.resource, p) for p in PARTIES[rtype]})
        for r in named:
            assert r.get("type") == "Organization", (m.mapping, r)
            # the unit's name where the source gives one (Cosmic and Viva do; NPÖ's header and
            # Cosmic's threat register, which names the ambulance service by its var only, do not)
            if m.source != "npo" and m.mapping != "cosmic/threats":
                assert r.get("display") == DIRECTORY.get(m.care_unit, r.get("display")), (m.mapping, r)
                assert r.get("display"), (m.mapping, r)
        checked[m.mapping] = checked.get(m.mapping, 0) + 1
    assert len(checked) >= 20, sorted(checked)


def test_references_point_only_where_r4_allows(mapped: dict[str, list[MappedResource]]) -> None:
    for m in records(mapped):
        rtype = m.resource["resourceType"]
        for path, allowed in PARTIES[rtype].items():
            for ref in at(m.resource, path):
                target = ref.get("type") or (ref["reference"].split("/")[0] if "reference" in ref else None)
                ident = ref.get("identifier", {}).get("value")
                if ident is not None or target is not None:
                    assert target in allowed, (m.mapping, path, ref)
                # an organisation (a care unit, a provider, the lab) is never named where R4 does
                # not allow one — not by its HSA-id, not by its name in a display
                if "Organization" not in allowed:
                    assert ident not in ORGANISATIONS, (m.mapping, path, ref)
                    names = {DIRECTORY[o] for o in ORGANISATIONS if o in DIRECTORY}
                    assert ref.get("display") not in names, (m.mapping, path, ref)
                if ident is not None:
                    kind = "Organization" if ident in ORGANISATIONS else "Practitioner"
                    assert target == kind, (m.mapping, path, ref)
                for unit in with_behalf(ref)[1:]:
                    assert unit.get("type") == "Organization", (m.mapping, unit)
                    assert unit["identifier"]["value"] in ORGANISATIONS, (m.mapping, unit)


def test_a_name_beside_an_hsa_id_is_that_ids_name(mapped: dict[str, list[MappedResource]]) -> None:
    """An identifier and a display on one reference name the same entity (NPÖ's lab performer
    named the lab but carried the ordering care unit's HSA-id)."""
    labs = 0
    for m in records(mapped):
        for ref in _references(m.resource):
            ident = ref.get("identifier", {})
            if ident.get("system") == HSA_SYSTEM and "display" in ref and ident["value"] in DIRECTORY:
                assert ref["display"] == DIRECTORY[ident["value"]], (m.mapping, ref)
        if m.mapping == "npo/laboratory-outcomes":
            labs += 1
            # the accountable professional NPÖ names (the simulator's lab) is who performed it, by
            # HSA-id and name alike; the responsible care unit beside it
            lab = npo._OTHER_DOCTORS["labb"]
            who = {
                "type": "Practitioner",
                "identifier": {"system": HSA_SYSTEM, "value": lab[0]},
                "display": lab[1],
            }
            unit = {"type": "Organization", "identifier": {"system": HSA_SYSTEM, "value": m.care_unit}}
            assert m.resource["performer"] == [who, unit], m.resource["performer"]
    assert labs >= 40


def _references(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        if (
            "identifier" in node
            and isinstance(node["identifier"], dict)
            and ("display" in node or "type" in node)
        ):
            yield node
        for v in node.values():
            yield from _references(v)
    elif isinstance(node, list):
        for v in node:
            yield from _references(v)


# ---- the same through HTTP: what each audience receives ---------------------------------------------


async def test_every_answer_names_each_resources_source_records(facade: Any) -> None:
    """Through redaction, per audience: every resource keeps its source record id (and a merged one
    each source's), and no HSA-id leaves in the RIVTA OID."""
    counted = 0
    async with facade() as f:
        for person in pop.DEMO_PEOPLE:
            askers = {a: auth(a) for a in ("clinician", "ambulance", "homecare")}
            askers["patient"] = auth("patient", pnr=person.pnr)
            for audience, headers in askers.items():
                status, bundle = await f.get(
                    f"{BASE}/Patient/{pid(person.pnr)}/$everything", params={"_count": "500"}, headers=headers
                )
                if status == 404:  # (nobody knows the unknown test person)
                    continue
                assert status == 200, (audience, bundle)
                assert RIVTA_HSA_SYSTEM not in orjson.dumps(bundle).decode()
                for entry in bundle["entry"]:
                    r = entry["resource"]
                    if entry["search"]["mode"] != "match" or r["resourceType"] == "Patient":
                        continue
                    if "source" not in r.get("meta", {}):  # (made by the facade, not from a source)
                        continue
                    source = r["meta"]["source"].rsplit(":", 1)[-1]
                    also = [
                        t["code"] for t in r["meta"].get("tag", []) if t["system"].endswith("also-in-source")
                    ]
                    for s in (source, *also):
                        assert len(record_systems(r, s)) == 1, (audience, s, r.get("identifier"))
                    counted += 1
    assert counted > 300


def test_no_gap_in_vivas_ids_where_a_never_shared_record_was(
    mapped: dict[str, list[MappedResource]],
) -> None:
    """Source record ids are shown: a social-care (SoL) note or home-help visit, which never leaves
    the municipality, must not show as a gap in the shared records' numbering (Viva keeps its SoL
    documentation in a series of its own, apart from the health-care records)."""
    for pnr, resources in mapped.items():
        series: dict[tuple[str, str], list[int]] = {}
        for m in resources:
            if m.source != "viva" or m.mapping not in ("viva/anteckningar", "viva/hembesok"):
                continue
            (ident,) = record_systems(m.resource, "viva")
            prefix, _, number = ident["value"].rpartition("-")
            series.setdefault((m.mapping, prefix), []).append(int(number))
        for key, numbers in series.items():
            assert sorted(numbers) == list(range(1, len(numbers) + 1)), (pnr, key, sorted(numbers))
