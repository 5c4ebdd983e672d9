"""Every answer the facade gives, checked by an R4 validator nobody here wrote (tests/r4.py: HL7's
official R4 JSON schema, SMART's fhirclient R4 models and the specification's invariants): every
demo patient's $everything for every audience, every page of it, searches, reads, the
CapabilityStatement and an error. 0 errors, and never a vacuous pass: each answer must carry data.
Patient/{id}/$summary is checked the same way (``Checked.check`` on each document Bundle): tests/r4.py
holds the document rules too (bdl-9..bdl-11, cmp-1, cmp-2, narratives txt-1/txt-2)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from yarl import URL

from proxy.pnr import system_of
from proxy.simulators.population import DEMO_PEOPLE, REGION_PROVIDER, UNKNOWN_PNR, Person
from tests import ips
from tests.conftest import BASE, auth, consent_body, pid
from tests.r4 import resources_in, validate

AUDIENCES = ("clinician", "ambulance", "homecare", "patient")  # care staff, MobiMed, 1177, home care


def headers(audience: str, person: Person) -> dict[str, str]:
    return auth("patient", pnr=person.pnr) if audience == "patient" else auth(audience)


def data(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if e.get("search", {}).get("mode") == "match"]


class Checked:
    """The answers validated so far: their errors, and how many resources of each type."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.answers = 0
        self.types: Counter[str] = Counter()

    def check(self, what: str, resource: dict[str, Any]) -> None:
        self.answers += 1
        self.errors += [f"{what}: {e}" for e in validate(resource)]
        self.types.update(r["resourceType"] for _, r in resources_in(resource))

    def report(self) -> str:
        """The errors by rule, then the first of them: readable when the assertion fails."""
        rules = Counter(e.rsplit("[", 1)[-1].rstrip("]") for e in self.errors)
        return f"{len(self.errors)} errors by rule {dict(rules)}; first: " + "\n".join(self.errors[:20])


async def pages(f: Any, path: str, params: dict[str, str], hdrs: dict[str, str]) -> list[dict[str, Any]]:
    """A search's every page, following its next links."""
    out = []
    url: str | None = path
    query: dict[str, str] | None = params
    while url is not None:
        status, bundle = await f.get(url, params=query, headers=hdrs)
        assert status == 200, (url, bundle)
        out.append(bundle)
        nxt = next((lk["url"] for lk in bundle.get("link", []) if lk["relation"] == "next"), None)
        url, query = (URL(nxt).path_qs, None) if nxt else (None, None)
        assert len(out) <= 50, "paging does not end"
    return out


async def test_everything_is_valid_r4_for_every_demo_patient_and_audience(facade: Any) -> None:
    checked = Checked()
    async with facade() as f:
        for person in DEMO_PEOPLE:
            for audience in AUDIENCES:
                path = f"{BASE}/Patient/{pid(person.pnr)}/$everything"
                hdrs = headers(audience, person)
                (whole,) = await pages(f, path, {"_count": "500"}, hdrs)
                found = data(whole)
                assert found, (person.given, audience)  # no vacuous pass
                assert any(r["resourceType"] != "Patient" for r in found), (person.given, audience)
                checked.check(f"{person.given}/{audience}/$everything", whole)
                # the same answer in pages of 7: every page a valid Bundle, nothing lost
                paged = await pages(f, path, {"_count": "7"}, hdrs)
                assert len(paged) > 1 or len(found) <= 7
                for i, page in enumerate(paged):
                    checked.check(f"{person.given}/{audience}/$everything page {i + 1}", page)
                assert sorted(r["id"] for p in paged for r in data(p)) == sorted(r["id"] for r in found)
    assert not checked.errors, checked.report()
    # every demo patient and audience answered; the Bundles held the types the demo data has
    assert checked.types["Bundle"] == checked.answers >= len(DEMO_PEOPLE) * len(AUDIENCES) * 2
    for rtype in ("Patient", "Condition", "Observation", "MedicationStatement", "MedicationAdministration"):
        assert checked.types[rtype] > 0, rtype
    assert sum(checked.types.values()) > 1000


async def test_summary_is_valid_r4_for_every_demo_patient_and_audience(facade: Any) -> None:
    """Patient/{id}/$summary: the IPS document of every demo patient for every audience, by the same
    independent validator, and by the IPS document rules (tests/ips.py): 0 errors."""
    checked = Checked()
    async with facade() as f:
        for person in DEMO_PEOPLE:
            for audience in AUDIENCES:
                patient_id = pid(person.pnr)
                hdrs = headers(audience, person)
                status, document = await f.get(f"{BASE}/Patient/{patient_id}/$summary", headers=hdrs)
                assert status == 200, (person.given, audience, document)
                assert document["type"] == "document"
                ips.check_document(document, str(f.client.make_url(BASE)), patient_id)
                # no vacuous pass: the Composition and more than the Patient it is about
                assert len(document["entry"]) > 2, (person.given, audience)
                checked.check(f"{person.given}/{audience}/$summary", document)
    assert not checked.errors, checked.report()
    assert checked.types["Bundle"] == checked.answers == len(DEMO_PEOPLE) * len(AUDIENCES)
    assert checked.types["Composition"] == checked.answers
    for rtype in ("Patient", "Condition", "AllergyIntolerance", "MedicationStatement", "Observation", "Flag"):
        assert checked.types[rtype] > 0, rtype


async def test_searches_reads_metadata_and_errors_are_valid_r4(facade: Any) -> None:
    checked = Checked()
    async with facade() as f:
        status, capability = await f.get(f"{BASE}/metadata")
        assert status == 200 and capability["resourceType"] == "CapabilityStatement"
        checked.check("metadata", capability)
        for person in DEMO_PEOPLE:
            for audience in ("clinician", "patient"):
                hdrs = headers(audience, person)
                patient_id = pid(person.pnr)
                status, everything = await f.get(
                    f"{BASE}/Patient/{patient_id}/$everything", params={"_count": "500"}, headers=hdrs
                )
                assert status == 200
                first_of: dict[str, dict[str, Any]] = {}
                for r in data(everything):
                    first_of.setdefault(r["resourceType"], r)
                assert len(first_of) > 1, (person.given, audience)
                (found,) = await pages(
                    f, f"{BASE}/Patient", {"identifier": f"{system_of(person.pnr)}|{person.pnr}"}, hdrs
                )
                assert [r["id"] for r in data(found)] == [patient_id]
                checked.check(f"{person.given}/{audience}/Patient?identifier", found)
                for rtype, example in sorted(first_of.items()):
                    if rtype != "Patient":
                        (search,) = await pages(f, f"{BASE}/{rtype}", {"patient": patient_id}, hdrs)
                        assert data(search), (rtype, person.given, audience)
                        checked.check(f"{person.given}/{audience}/{rtype}?patient", search)
                    status, read = await f.get(f"{BASE}/{rtype}/{example['id']}", headers=hdrs)
                    assert status == 200 and read["id"] == example["id"], (rtype, read)
                    checked.check(f"{person.given}/{audience}/{rtype}/{{id}}", read)
        status, missing = await f.get(f"{BASE}/Patient/{pid(UNKNOWN_PNR)}")
        assert status == 404 and missing["resourceType"] == "OperationOutcome"
        checked.check("404", missing)
        status, bad = await f.get(
            f"{BASE}/Condition", params={"patient": pid(DEMO_PEOPLE[0].pnr), "_count": "x"}
        )
        assert status == 400 and bad["resourceType"] == "OperationOutcome"
        checked.check("400", bad)
    assert not checked.errors, checked.report()
    assert checked.answers > 40 and checked.types["Bundle"] > 20


async def test_pdl_answers_consents_and_the_access_log_are_valid_r4(facade: Any) -> None:
    """Without consent (records withheld, with a hint), with emergency access, a refusal, the
    Consent a client registers and reads back, and the patient's own access log."""
    checked = Checked()
    json_body = {"Content-Type": "application/fhir+json"}
    async with facade(consent=False) as f:
        for person in DEMO_PEOPLE:
            patient_id = pid(person.pnr)
            path = f"{BASE}/Patient/{patient_id}/$everything"
            for audience in ("clinician", "ambulance", "homecare"):
                (own,) = await pages(f, path, {"_count": "500"}, auth(audience))
                checked.check(f"{person.given}/{audience}/no consent", own)
            emergency = {**auth("clinician"), "X-Emergency-Access": "no-time"}
            (opened,) = await pages(f, path, {"_count": "500"}, emergency)
            assert data(opened), person.given
            checked.check(f"{person.given}/emergency access", opened)
            status, refused = await f.get(path, headers={**auth("homecare"), "X-Emergency-Access": "no-time"})
            assert status == 403
            checked.check(f"{person.given}/emergency refused", refused)
            resp = await f.client.post(
                f"{BASE}/Consent", json=consent_body(patient_id, recipient=REGION_PROVIDER), headers=json_body
            )
            created = await resp.json(content_type=None)
            assert resp.status == 201, created
            checked.check(f"{person.given}/Consent created", created)
            mine = auth("patient", pnr=person.pnr)
            (consents,) = await pages(f, f"{BASE}/Consent", {"patient": patient_id}, mine)
            assert data(consents), person.given
            checked.check(f"{person.given}/Consent?patient", consents)
            (log,) = await pages(f, f"{BASE}/AuditEvent", {"patient": patient_id, "_count": "500"}, mine)
            assert any(r["resourceType"] == "AuditEvent" for r in data(log)), person.given
            checked.check(f"{person.given}/AuditEvent?patient", log)
    assert not checked.errors, checked.report()
    assert checked.types["OperationOutcome"] > 0 and checked.types["AuditEvent"] > 0
    assert checked.types["Consent"] >= 2 * len(DEMO_PEOPLE)
