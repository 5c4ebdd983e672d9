"""Cosmic procedures (åtgärder, KVÅ) → Procedure, over the Cosmic simulator's real answers.

Every procedure record comes out as one valid Procedure: the KVÅ code under its OID with Cosmic's
text as display, the status mapped (an unknown one shown as ``unknown``, never dropped), the time
the source gives (a point as performedDateTime, a span as performedPeriod), the unit that performed
it, the care contact it belongs to, and NOPAT unless Cosmic says the patient may see it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from proxy.hsa import HSA_SYSTEM
from proxy.mapping.engine import map_records
from proxy.simulators import cosmic
from proxy.simulators import population as pop
from tests.mapping import test_cosmic_mappings as cm

KVA = "urn:oid:1.2.752.116.1.3.2.1.4"  # Klassifikation av vårdåtgärder (Socialstyrelsen)
HSA = HSA_SYSTEM  # HL7 Sweden's system (proxy/hsa.py), never the RIVTA OID
NOPAT = ("http://terminology.hl7.org/CodeSystem/v3-ActCode", "NOPAT")
STATUS = {"PERFORMED": "completed", "ONGOING": "in-progress", "CANCELLED": "not-done"}


@pytest.fixture
def client(cosmic_client: Any) -> Any:
    return cosmic_client


def local(value: str) -> datetime:
    """A FHIR dateTime the mapping wrote, as the Swedish local time it came from."""
    return datetime.fromisoformat(value).replace(tzinfo=None)


def cosmic_time(value: str) -> datetime:
    return datetime.strptime(value, "%Y-%m-%d %H:%M")


def nopat(resource: dict[str, Any]) -> bool:
    return any((s["system"], s["code"]) == NOPAT for s in resource.get("meta", {}).get("security", []))


def by_code(mapped: cm.Mapped) -> dict[str, dict[str, Any]]:
    return {mr.resource["code"]["coding"][0]["code"]: mr.resource for mr in mapped["procedures"]}


async def test_every_cosmic_procedure_becomes_one_procedure(client: Any) -> None:
    total = 0
    for person in cm.COSMIC_PEOPLE:
        mapped = await cm.fetch_and_map(client, person)
        raw = {rec["procedureId"]: rec for rec in cm.RAW_DATA[person.pnr]["procedures"]}
        assert len(mapped["procedures"]) == len(raw), person.pnr
        encounters = {mr.origin_key.rsplit("|", 1)[1]: mr.resource["id"] for mr in mapped["carecontacts"]}
        conditions = {mr.origin_key.rsplit("|", 1)[1]: mr.resource["id"] for mr in mapped["diagnoses"]}
        for mr in mapped["procedures"]:
            rec = raw[mr.origin_key.rsplit("|", 1)[1]]
            r = mr.resource
            cm.validate(r)
            total += 1
            assert r["resourceType"] == "Procedure"
            assert r["subject"] == {"reference": f"Patient/{cm.patient_id(person)}"}
            assert r["code"]["coding"] == [
                {"system": KVA, "code": rec["kvaCode"], "display": rec["procedureText"]}
            ]
            assert r["code"]["text"] == rec["procedureText"]
            assert r["status"] == STATUS[rec["state"]]
            start = cosmic_time(rec["performedAt"])
            if rec.get("endAt"):
                assert "performedDateTime" not in r
                period = r["performedPeriod"]
                assert (local(period["start"]), local(period["end"])) == (start, cosmic_time(rec["endAt"]))
            else:
                assert "performedPeriod" not in r
                assert local(r["performedDateTime"]) == start
            unit = rec["careUnit"]
            assert r["performer"] == [
                {
                    "actor": {
                        "type": "Organization",
                        "identifier": {"system": HSA, "value": unit["hsaId"]},
                        "display": unit["name"],
                    }
                }
            ]
            assert (mr.care_provider, mr.care_unit) == (unit["providerHsaId"], unit["hsaId"])
            if rec.get("contactId"):
                assert r["encounter"] == {"reference": f"Encounter/{encounters[rec['contactId']]}"}
            else:
                assert "encounter" not in r
            if rec.get("reasonDiagnosisId"):
                assert r["reasonReference"] == [
                    {"reference": f"Condition/{conditions[rec['reasonDiagnosisId']]}"}
                ]
            assert nopat(r) == (rec.get("shownToPatient") is not True)
            assert local(r["meta"]["lastUpdated"]) == cosmic_time(rec["changedAt"])
    assert total >= 6


async def test_demo_procedures(client: Any) -> None:
    tolvan = by_code(await cm.fetch_and_map(client, pop.TOLVAN))
    # the wrist fracture reduced at the emergency department, during that contact, for that diagnosis
    assert set(tolvan) >= {"NCJ09", "DT016", "UGC12"}
    assert tolvan["NCJ09"]["performer"][0]["actor"]["display"] == "Akutmottagningen Centralsjukhuset"
    assert tolvan["NCJ09"]["performedDateTime"].startswith("2023-02-")
    # the bronchoscopy whose biopsy answer has not been given to him: not for the patient yet
    assert nopat(tolvan["UGC12"]) and not nopat(tolvan["NCJ09"]) and not nopat(tolvan["DT016"])
    assert "ej delgivet" in tolvan["UGC12"]["note"][0]["text"]
    lennart = by_code(await cm.fetch_and_map(client, pop.LENNART))
    # the end-of-life conversation (brytpunktssamtal) that led to VILSAD, an hour long: a period
    talk = lennart["XS026"]
    assert talk["performedPeriod"] == {
        "start": "2026-10-12T14:00:00+02:00",
        "end": "2026-10-12T15:00:00+02:00",
    }
    assert talk["status"] == "completed"
    lucia = by_code(await cm.fetch_and_map(client, pop.LUCIA))
    assert set(lucia) == {"QDB00"} and "encounter" in lucia["QDB00"]


def _record(**overrides: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "procedureId": "P-X-1",
        "kvaCode": "DT016",
        "procedureText": "Inläggning av perifer venkateter",
        "state": "PERFORMED",
        "performedAt": "2026-05-04 10:00",
        "changedAt": "2026-05-04 10:05",
        "shownToPatient": True,
        "careUnit": cosmic.unit("akuten"),
    }
    rec.update(overrides)
    return {k: v for k, v in rec.items() if v is not None}


def _map(*records: dict[str, Any]) -> list[dict[str, Any]]:
    body = {"patientId": "CP-1", "items": list(records), "totalCount": len(records)}
    out, skipped = map_records(
        cm.BY_NAME["procedures"], body, cm.context(pop.TOLVAN), source_uri=cm.SOURCE_URI, priority=1
    )
    assert skipped == 0
    return [mr.resource for mr in out]


def test_an_unknown_status_is_shown_as_unknown_never_dropped() -> None:
    (r,) = _map(_record(state="SOMETHING_NEW"))
    cm.validate(r)
    assert r["status"] == "unknown"
    # the source's own state is kept, marked as a code the mapping does not know
    assert r["extension"] == [
        {
            "url": "urn:fhir-facade:unmapped-code",
            "valueCoding": {"system": "urn:fhir-facade:cosmic:procedure-state", "code": "SOMETHING_NEW"},
        }
    ]
    (cancelled,) = _map(_record(state="CANCELLED"))
    assert cancelled["status"] == "not-done"
    assert "extension" not in cancelled


def test_patient_approval_fails_closed() -> None:
    shown, hidden, unsaid, text = _map(
        _record(procedureId="P-1"),
        _record(procedureId="P-2", shownToPatient=False),
        _record(procedureId="P-3", shownToPatient=None),
        _record(procedureId="P-4", shownToPatient="yes"),
    )
    assert not nopat(shown)
    assert nopat(hidden) and nopat(unsaid) and nopat(text)
