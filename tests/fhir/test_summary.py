"""``Patient/{id}/$summary``: an International Patient Summary (HL7 IPS, FHIR R4) for the asker.

Built from the same merged, PDL-filtered and redacted answer as ``$everything``; every demo patient
and audience gets a document Bundle that holds to the IPS structure (tests/ips.py); the ambulance
reads the threat flag first; a section is empty for a stated reason — a failed source is never
"nil known" — and says which source; the scopes narrow it as they narrow ``$everything``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from typing import Any

import pytest

from proxy.edge.http import STORE_KEY
from proxy.fhir.summary import TYPES, SourceView, build_summary, narrative
from proxy.simulators.population import DEMO_PEOPLE, GRETA, LENNART, TOLVAN, UNKNOWN_PNR
from proxy.types import SourceOutcome, SourceStatus
from tests import ips
from tests.conftest import BASE, auth, pid, validate

AUDIENCES = ["ambulance", "clinician", "homecare", "patient"]
SNOMED = "http://snomed.info/sct"


def headers(audience: str, pnr: str) -> dict[str, str]:
    return auth("patient", pnr=pnr) if audience == "patient" else auth(audience)


def summary_url(pnr: str) -> str:
    return f"{BASE}/Patient/{pid(pnr)}/$summary"


async def summary(f: Any, pnr: str, audience: str = "clinician", **kw: Any) -> dict[str, Any]:
    status, bundle = await f.get(summary_url(pnr), headers=kw.pop("h", None) or headers(audience, pnr), **kw)
    assert status == 200, bundle
    ips.check_document(bundle, str(f.client.make_url(BASE)), pid(pnr))
    return bundle  # type: ignore[no-any-return]


async def everything(f: Any, pnr: str, h: dict[str, str]) -> dict[str, dict[str, Any]]:
    status, bundle = await f.get(
        f"{BASE}/Patient/{pid(pnr)}/$everything", params={"_count": "500"}, headers=h
    )
    assert status == 200
    return {
        f"{r['resourceType']}/{r['id']}": r
        for e in bundle["entry"]
        if e["search"]["mode"] == "match"
        for r in [e["resource"]]
    }


@pytest.mark.parametrize("audience", AUDIENCES)
async def test_every_demo_patient_gets_an_ips_document_built_from_what_everything_shows(
    facade: Any, audience: str
) -> None:
    async with facade() as f:
        for person in DEMO_PEOPLE:
            h = headers(audience, person.pnr)
            bundle = await summary(f, person.pnr, audience)
            validate(bundle)  # (fhir.resources R4B models; the independent R4 validator is part 6)
            shown = await everything(f, person.pnr, h)
            included = {
                f"{e['resource']['resourceType']}/{e['resource']['id']}": e["resource"]
                for e in bundle["entry"]
                if not e["fullUrl"].startswith("urn:uuid:")
            }
            # nothing the asker's $everything does not show, and each exactly as it shows it
            assert included.keys() <= shown.keys()
            for key, resource in included.items():
                assert resource == shown[key], key
            # and every record of a summary type that it shows is in a section
            listed = {
                f"{r['resourceType']}/{r['id']}"
                for code in ips.ALL_SECTIONS
                for r in ips.entries(bundle, code)
            }
            for key, r in shown.items():
                if r["resourceType"] in {t for ts in ips.ENTRY_TYPES.values() for t in ts}:
                    assert key in listed, f"{key} shown by $everything is in no section"
            assert all(s == "answered" for s in _statuses(bundle).values())
        status, body = await f.get(summary_url(UNKNOWN_PNR), headers=headers(audience, TOLVAN.pnr))
        assert status == 404 and body["resourceType"] == "OperationOutcome"


def _statuses(bundle: dict[str, Any]) -> dict[str, str]:
    out = {}
    for o in ips.source_outcomes(bundle):
        codes = {c["system"]: c["code"] for i in o["issue"] for c in i["details"].get("coding", [])}
        if "urn:fhir-facade:source" in codes:
            out[codes["urn:fhir-facade:source"]] = codes["urn:fhir-facade:source-status"]
    return out


async def test_the_ambulance_reads_the_threat_flag_first(facade: Any) -> None:
    async with facade() as f:
        amb = await summary(f, TOLVAN.pnr, "ambulance")
        clin = await summary(f, TOLVAN.pnr, "clinician")
    codes = [s["code"]["coding"][0]["code"] for s in ips.composition(amb)["section"]]
    assert codes[0] == ips.ALERTS  # the first section, and in it the threat first
    first = ips.entries(amb, ips.ALERTS)[0]
    assert first["category"][0]["coding"][0]["code"] == "safety"
    assert "Hotfullt beteende" in ips.narrative_text(ips.sections(amb)[ips.ALERTS]).split(".")[0]
    assert all(r["category"][0]["coding"][0]["code"] != "safety" for r in ips.entries(clin, ips.ALERTS))
    # Ej HLR is an advance directive (with its SNOMED CT code), for every audience
    for bundle in (amb, clin):
        (limit,) = ips.entries(bundle, ips.ADVANCE_DIRECTIVES)
        assert {c["code"] for c in limit["code"]["coding"] if c["system"] == SNOMED} == {"304253006"}


async def test_sections_sort_what_the_record_holds(facade: Any) -> None:
    async with facade() as f:
        lennart = await summary(f, LENNART.pnr)
        greta = await summary(f, GRETA.pnr, "homecare")
        tolvan = await summary(f, TOLVAN.pnr)
    # care limitations from both sources are advance directives; the CRT-D warning is an alert
    directives = ips.entries(lennart, ips.ADVANCE_DIRECTIVES)
    assert len(directives) == 2
    assert {c["code"] for r in directives for c in r["code"]["coding"] if c["system"] == SNOMED} == {
        "304253006",
        "182964004",
    }
    # the CRT-D warning, and the MRSA alert of a kind the mapping does not know (its own kind as category)
    alerts = ips.entries(lennart, ips.ALERTS)
    assert sorted(r["category"][0]["coding"][0]["code"] for r in alerts) == ["INFECTION", "clinical"]
    assert len(ips.entries(lennart, ips.ALLERGIES)) == 6
    assert len(ips.entries(lennart, ips.RESULTS)) == 40
    assert {r["code"]["coding"][0]["system"] for r in ips.entries(lennart, ips.FUNCTIONAL)} == {
        "http://hl7.org/fhir/sid/icf"
    }
    # resolved and inactive problems are past illness; the active ones problems
    assert {r["clinicalStatus"]["coding"][0]["code"] for r in ips.entries(tolvan, ips.PAST_ILLNESS)} == {
        "resolved",
        "inactive",
    }
    assert [r["code"]["coding"][0]["code"] for r in ips.entries(tolvan, ips.PROBLEMS)] == ["I10"]
    assert len(ips.entries(greta, ips.MEDICATIONS)) == 4 and len(ips.entries(greta, ips.PLAN_OF_CARE)) == 3
    # Greta has no allergy anywhere, and every source that holds allergies answered: nil known
    section = ips.sections(greta)[ips.ALLERGIES]
    assert ips.empty_reason(section) == "nilknown"
    assert "cosmic" in ips.narrative_text(section) and "npo" in ips.narrative_text(section)
    # the narrative lists what the entries say
    text = ips.narrative_text(ips.sections(tolvan)[ips.ALLERGIES])
    assert "Fenoximetylpenicillin" in text and "severe" in text and "confirmed" in text


async def test_a_section_empty_because_a_source_failed_is_unavailable_not_nil_known(facade: Any) -> None:
    async with facade() as f:
        await f.faults("npo", error_status=503)
        greta = await summary(f, GRETA.pnr, "homecare")
        lennart = await summary(f, LENNART.pnr)
    assert _statuses(greta)["npo"] == "failed"
    allergies = ips.sections(greta)[ips.ALLERGIES]
    assert ips.empty_reason(allergies) == "unavailable"
    text = ips.narrative_text(allergies)
    assert "npo" in text and "failed" in text and "nil" not in text.lower()
    # a section fed only by a source that answered (immunizations: Cosmic) is still known to be empty
    assert ips.empty_reason(ips.sections(greta)[ips.IMMUNIZATIONS]) == "nilknown"
    # a section with entries from the sources that answered says it may lack the failed one's
    allergies = ips.sections(lennart)[ips.ALLERGIES]
    assert allergies["entry"] and "npo" in ips.narrative_text(allergies)
    assert "incomplete" in ips.narrative_text(allergies).lower()


async def test_records_withheld_under_pdl_make_a_section_withheld_like_a_truly_empty_one(facade: Any) -> None:
    """Lennart's diagnoses are all the other region's (NPÖ); without his consent the clinician's
    problem list is empty for the same stated reason as his immunizations, of which there are
    none at all — and the PDL hint travels with the document. Emergency access lifts it."""
    async with facade(consent=False) as f:
        withheld = await summary(f, LENNART.pnr)
        emergency = await summary(f, LENNART.pnr, h={**auth("clinician"), "X-Emergency-Access": "no-time"})
        own = await summary(f, LENNART.pnr, "patient")
    problems = ips.sections(withheld)[ips.PROBLEMS]
    immunizations = ips.sections(withheld)[ips.IMMUNIZATIONS]
    assert ips.empty_reason(problems) == ips.empty_reason(immunizations) == "withheld"
    assert _without_name(problems) == _without_name(immunizations)
    hint = [o for o in ips.source_outcomes(withheld) if o["issue"][0]["code"] == "suppressed"]
    assert len(hint) == 1 and "consent" in ips.narrative_text(ips.sections(withheld)["sources"])
    assert len(ips.entries(emergency, ips.PROBLEMS)) + len(ips.entries(emergency, ips.PAST_ILLNESS)) == 3
    assert not [o for o in ips.source_outcomes(emergency) if o["issue"][0]["code"] == "suppressed"]
    # the patient is never told that anything is withheld
    assert not [o for o in ips.source_outcomes(own) if o["issue"][0]["code"] == "suppressed"]
    assert all(ips.empty_reason(s) != "withheld" for s in ips.sections(own).values())


def _without_name(section: dict[str, Any]) -> dict[str, Any]:
    text = section["text"]["div"].replace(section["title"], "T").replace(section["title"].lower(), "t")
    return {k: v for k, v in section.items() if k not in ("title", "code", "text")} | {"div": text}


async def test_the_scopes_narrow_the_summary_as_they_narrow_everything(facade: Any) -> None:
    narrow = auth("clinician", scopes="user/Patient.rs user/Condition.rs user/AllergyIntolerance.r")
    async with facade() as f:
        bundle = await summary(f, TOLVAN.pnr, h=narrow)
        status, refused = await f.get(
            summary_url(TOLVAN.pnr), headers=auth("clinician", scopes="user/Flag.r")
        )
    assert ips.entries(bundle, ips.PROBLEMS)
    types = {e["resource"]["resourceType"] for e in bundle["entry"]}
    assert types == {"Composition", "Device", "Patient", "Condition", "OperationOutcome"}
    # a type the scopes leave out is not "nil known": the section says why it is empty
    for code in (ips.ALLERGIES, ips.MEDICATIONS, ips.ALERTS):
        section = ips.sections(bundle)[code]
        assert ips.empty_reason(section) == "withheld"
        assert "scope" in ips.narrative_text(section)
    assert status == 403 and "user/<type>.s" in refused["issue"][0]["diagnostics"]


async def test_the_summary_is_audited_like_everything(facade: Any) -> None:
    async with facade() as f:
        bundle = await summary(f, TOLVAN.pnr, "ambulance")
        (event,) = await f.client.server.app[STORE_KEY].all_audit_events()
    assert event["subtype"][0]["code"] == "summary" and event["action"] == "E" and event["outcome"] == "0"
    assert event["entity"][0]["what"]["reference"] == f"Patient/{pid(TOLVAN.pnr)}"
    details = {d["type"]: int(d["valueString"]) for d in event["entity"][1]["detail"]}
    included = [e["resource"] for e in bundle["entry"] if not e["fullUrl"].startswith("urn:uuid:")]
    assert sum(details.values()) == len(included)  # what left, per source
    assert "Hotfullt" not in str(event)


async def test_a_malformed_summary_request_is_refused_and_logged_against_its_patient(facade: Any) -> None:
    async with facade() as f:
        strict = {**auth("clinician"), "Prefer": "handling=strict"}
        status, body = await f.get(summary_url(TOLVAN.pnr), params={"profile": "x"}, headers=strict)
        lenient, _ = await f.get(summary_url(TOLVAN.pnr), params={"profile": "x"})
        (refused, _ok) = sorted(
            await f.client.server.app[STORE_KEY].all_audit_events(), key=lambda e: e["outcome"], reverse=True
        )
    assert status == 400 and "profile" in body["issue"][0]["diagnostics"] and lenient == 200
    assert refused["subtype"][0]["code"] == "summary" and refused["outcome"] == "8"
    assert refused["entity"][0]["what"]["reference"] == f"Patient/{pid(TOLVAN.pnr)}"


async def test_the_capability_statement_names_the_operation(facade: Any) -> None:
    async with facade() as f:
        _, cs = await f.get(f"{BASE}/metadata")
    (patient,) = [r for r in cs["rest"][0]["resource"] if r["type"] == "Patient"]
    ops = {o["name"]: o["definition"] for o in patient["operation"]}
    assert ops["summary"] == "http://hl7.org/fhir/uv/ips/OperationDefinition/summary"


def test_the_narrative_escapes_what_the_sources_wrote() -> None:
    hostile = {
        "resourceType": "Condition",
        "id": "x",
        "code": {"text": '<script>alert("x")</script> & <b onclick="y">'},
        "clinicalStatus": {"coding": [{"code": "active\x00\x07"}]},
    }
    div = narrative("Problems", [hostile], notes=[])
    section = {"text": {"div": div}}
    text = ips.narrative_text(section)  # well-formed XHTML
    assert '<script>alert("x")</script> & <b onclick="y">' in text
    assert "<script" not in div and "<b " not in div
    tags = {el.tag.split("}")[-1] for el in ET.fromstring(div).iter()}
    assert tags == {"div", "table", "caption", "thead", "tbody", "tr", "th", "td"}


async def test_with_every_source_down_the_summary_says_so_in_every_section(facade: Any) -> None:
    """Nothing arrived and nobody can say whether the patient exists: as ``$everything`` (200, the
    sources failed), the document stands a Patient of only its id in and every section is
    "unavailable" naming the sources that failed — never "nil known"."""
    async with facade() as f:
        for backend in ("cosmic", "viva", "npo"):
            await f.faults(backend, error_status=503)
        status, ev = await f.get(f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything", headers=auth("ambulance"))
        bundle = await summary(f, TOLVAN.pnr, "ambulance")
    assert status == 200 and not [e for e in ev["entry"] if e["search"]["mode"] == "match"]
    assert set(_statuses(bundle).values()) == {"failed"}
    (patient,) = [e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"]
    assert patient == {"resourceType": "Patient", "id": pid(TOLVAN.pnr)}
    for code, section in ips.sections(bundle).items():
        if code == "sources":
            continue
        assert ips.empty_reason(section) == "unavailable", code
        assert "failed" in ips.narrative_text(section) or "No source" in ips.narrative_text(section)


def test_a_source_answering_from_an_old_copy_is_named_and_never_nil_known() -> None:
    """(Without a clock to wind past the cache's TTL: the document from a stale source status.)"""
    allergy = {
        "resourceType": "AllergyIntolerance",
        "id": "p-cosmic-1",
        "meta": {"source": "urn:x:cosmic"},
        "code": {"text": "Amoxicillin"},
        "patient": {"reference": "Patient/p"},
    }
    view = SourceView(
        holders={
            "AllergyIntolerance": ("cosmic", "npo"),
            "Condition": ("cosmic", "npo"),
            "Flag": ("cosmic",),
        },
        outcomes=[
            SourceOutcome("cosmic", SourceStatus.OK, "answered"),
            SourceOutcome("npo", SourceStatus.STALE, "answered HTTP 503; showing its answer from 90 s ago"),
        ],
        outcome_resources=[{"resourceType": "OperationOutcome", "issue": []}],
        withheld_text=None,
    )
    for resources in ([], [allergy]):
        bundle = build_summary(
            resources, patient_id="p", base_url="https://f/fhir", permitted=TYPES, sources=view
        )
        ips.check_document(bundle, "https://f/fhir", "p")
        allergies = ips.sections(bundle)[ips.ALLERGIES]
        text = ips.narrative_text(allergies)
        assert "'npo'" in text and "earlier answer stands in" in text
        if resources:
            assert text.startswith("This section may be incomplete") and "Amoxicillin" in text
        else:
            assert ips.empty_reason(allergies) == "unavailable"
        # a section only Cosmic holds is known to be empty; one nobody holds is unavailable
        assert ips.empty_reason(ips.sections(bundle)[ips.ALERTS]) == "nilknown"
        assert ips.empty_reason(ips.sections(bundle)[ips.IMMUNIZATIONS]) == "unavailable"


async def test_a_possible_duplicate_is_said_in_the_narrative_for_those_who_see_both(facade: Any) -> None:
    """Tolvan's ramipril is on Cosmic's list and on Viva's (two producers, not merged, marked as
    possible duplicates): the clinician reading the summary is told so in the medication table, on
    both rows; the patient, who sees both too, likewise. A row without a mark says nothing of it."""
    async with facade() as f:
        for audience in ("clinician", "patient"):
            tolvan = await summary(f, TOLVAN.pnr, audience)
            section = ips.sections(tolvan)[ips.MEDICATIONS]
            marked = [r for r in ips.entries(tolvan, ips.MEDICATIONS) if _marked(r)]
            assert len(marked) == 2, audience
            rows = ET.fromstring(section["text"]["div"]).iter(f"{{{ips.XHTML}}}tr")
            said = [
                " ".join(row.itertext()) for row in rows if "possible duplicate" in " ".join(row.itertext())
            ]
            assert len(said) == 2, (audience, said)
            assert any("viva" in row for row in said) and any("cosmic" in row for row in said)


def _marked(r: dict[str, Any]) -> bool:
    return any(
        t.get("system") == "urn:fhir-facade:possible-duplicate" for t in r.get("meta", {}).get("tag", [])
    )
