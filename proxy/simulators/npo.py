"""NPÖ (Nationell patientöversikt) stand-in: RIVTA service contracts, SOAP 1.1/XML over HTTP POST.

Dialect (after the NTjP contracts of the clinicalprocess domains, not byte-exact):

* one endpoint per contract, ``POST /vp/<service domain path>/<Contract>/<major>/rivtabp21`` (see
  ``CONTRACTS``); the request is a SOAP envelope with ``<LogicalAddress>`` in the header and
  ``<Get…><patientId><id>191212121212</id><type>1.2.752.129.2.1.3.1</type></patientId></Get…>``
  in the body (any namespace prefixes);
* the answer is ``<Get…Response>`` in the contract's responder namespace with one element per
  record and a ``<result><resultCode>OK</resultCode>…</result>``; a patient NPÖ does not know is a
  normal, empty answer, never an error;
* each record is ``<xHeader>`` (documentId, sourceSystemHSAId, documentTitle, documentTime,
  patientId, accountableHealthcareProfessional, legalAuthenticator, **approvedForPatient**,
  **nullified**, nullifiedReason) plus ``<xBody>`` in the contract's own shape;
* timestamps ``YYYYMMDDhhmmss`` and dates ``YYYYMMDD``, Swedish local time, no zone; decimals with a
  comma; booleans ``true``/``false``;
* a request that is not XML, lacks the logical address or carries no valid patient id, or is sent
  to the wrong contract's endpoint is a SOAP Fault (HTTP 500, ``soap:Client``).

Data: NPÖ holds records produced by *another region* (``OTHER_REGION_*``) and copies of the Cosmic
diagnoses the region publishes (``cosmic.shared_with_npo``): a copy keeps Cosmic's record id as
``documentId`` and Cosmic's system HSA-id as ``sourceSystemHSAId``, which is how the facade
recognises it as the same fact. The code-system OIDs of the national value lists used for alert,
note, care-contact and hypersensitivity types are illustrative. A care limitation's
``restrictionOfCare`` carries, beside the contract's comment, an illustrative coded kind
(``restrictionOfCareCode``: EJHLR, VILSAD) that the contract does not have.

A request may carry the contracts' ``<timePeriod><start>…</start><end>…</end></timePeriod>`` —
GetFunctionalStatus 2 calls it ``datePeriod`` (``Contract.period``) — (dates ``YYYYMMDD`` or times
``YYYYMMDDhhmmss``, inclusive, either may be left out; a malformed one is a ``soap:Client`` fault):
the answer holds the records dated in it, by ``DATE_PATHS`` — the document time (a functional status
assessment's is the time of the assessment, as the contract's own filter goes), the sampling time,
the diagnosis time, or for one that lasts (a medication, an alert's validity, a care contact) its
period overlapping the range (``proxy/simulators/window.py``).
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from proxy.mapping.xml import parse_xml
from proxy.simulators import cosmic, stats, xmlwrite
from proxy.simulators import faults as fault_mod
from proxy.simulators.history import History, Plan, plan
from proxy.simulators.lazy import DEFAULT_CACHED_RECORDS, Patients
from proxy.simulators.population import (
    COSMIC_SYSTEM,
    LENNART,
    OTHER_REGION_PROVIDER,
    OTHER_REGION_SYSTEM,
    REGION_PROVIDER,
    UNITS,
    Person,
    at,
    is_valid_pnr,
)
from proxy.simulators.records import hand_written
from proxy.simulators.window import Window

SOAP_NS = "http://schemas.xmlsoap.org/soap/envelope/"
PNR_OID = "1.2.752.129.2.1.3.1"
SAMORDNING_OID = "1.2.752.129.2.1.3.3"
ICD10SE_OID = "1.2.752.116.1.1.1.1.3"
ATC_OID = "1.2.752.129.2.2.3.1.1"
NPU_OID = "1.2.752.108.1"
NPL_OID = "1.2.752.129.2.1.5.1"
ICF_OID = "1.2.752.116.1.1.3"
# Illustrative OIDs for the national value lists (KV) the contracts code with.
KV_ALERT_TYPE_OID = "1.2.752.129.2.2.2.3"
KV_HYPERSENSITIVITY_TYPE_OID = "1.2.752.129.2.2.2.4"
KV_SEVERITY_OID = "1.2.752.129.2.2.2.5"
KV_CERTAINTY_OID = "1.2.752.129.2.2.3.11"  # KV Visshetsgrad, as the contract names it
# Not in the contract: its restrictionOfCare carries a free-text comment only. The simulator adds an
# illustrative coded kind of care limitation so that a producer that codes it can be shown.
KV_RESTRICTION_OID = "1.2.752.129.2.2.2.7"
KV_CONTACT_TYPE_OID = "1.2.752.129.2.2.2.6"

_OTHER_UNIT = UNITS["annan-region"]
_OTHER_DOCTORS = {
    "kardiolog": ("SE2321000081-L7KA", "Karin Kardiolog"),
    "onkolog": ("SE2321000081-L3ON", "Olle Onkolog"),
    "sjukskoterska": ("SE2321000081-S4SJ", "Siv Sjuksköterska"),
    "arbetsterapeut": ("SE2321000081-A2AT", "Åsa Arbetsterapeut"),
    "labb": ("SE2321000081-K1LAB", "Klinisk kemi Universitetssjukhuset Öst"),
}
_COSMIC_DOCTORS = {  # who signs the region's diagnoses that Cosmic publishes, per care unit
    UNITS["vc-norr"][0]: ("SE2321000016-L2VC", "Bertil Distriktsläkare"),
    UNITS["akuten"][0]: ("SE2321000016-L1AK", "Anna Akutläkare"),
    UNITS["med"][0]: ("SE2321000016-L5MED", "Maria Medicinläkare"),
}


@dataclass(frozen=True)
class Contract:
    """One RIVTA service contract: its endpoint, namespaces and record element."""

    operation: str  # "GetDiagnosis"
    domain: str  # "clinicalprocess:healthcond:description"
    version: int
    record: str  # "diagnosis": the repeated element in the response (with <record>Header/<record>Body)
    period: str = "timePeriod"  # the request's date range element (GetFunctionalStatus 2: datePeriod)

    @property
    def path(self) -> str:
        return f"/vp/{self.domain.replace(':', '/')}/{self.operation}/{self.version}/rivtabp21"

    @property
    def responder_ns(self) -> str:
        return f"urn:riv:{self.domain}:{self.operation}Responder:{self.version}"

    @property
    def core_ns(self) -> str:
        return f"urn:riv:{self.domain}:{self.version}"

    @property
    def soap_action(self) -> str:
        return f"{self.responder_ns}:{self.operation}"


CONTRACTS: tuple[Contract, ...] = (
    Contract("GetCareDocumentation", "clinicalprocess:healthcond:description", 2, "careDocumentation"),
    Contract("GetDiagnosis", "clinicalprocess:healthcond:description", 2, "diagnosis"),
    Contract("GetAlertInformation", "clinicalprocess:healthcond:description", 2, "alertInformation"),
    Contract(
        "GetMedicationHistory",
        "clinicalprocess:activityprescription:actoutcome",
        2,
        "medicationMedicalRecord",
    ),
    Contract(
        "GetFunctionalStatus",
        "clinicalprocess:healthcond:description",
        2,
        "functionalStatusAssessment",
        period="datePeriod",
    ),
    Contract(
        "GetLaboratoryOrderOutcome", "clinicalprocess:healthcond:actoutcome", 4, "laboratoryOrderOutcome"
    ),
    Contract("GetCareContacts", "clinicalprocess:logistics:logistics", 3, "careContact"),
)
RECORD_KINDS = tuple(c.record for c in CONTRACTS)

# What a timePeriod filters each contract's records by, below ``<record>``: one path for a record
# made at one moment (a lab result by its sampling time, ``analysisTime`` start, else end), (start,
# end) for one that lasts — admitted when its period overlaps the range; no end: still going.
DATE_PATHS: dict[str, tuple[tuple[str, ...], tuple[str, ...] | None]] = {
    "careDocumentation": (("careDocumentationHeader", "documentTime"), None),
    "diagnosis": (("diagnosisBody", "diagnosisTime"), None),
    "alertInformation": (
        ("alertInformationBody", "validityTimePeriod", "start"),
        ("alertInformationBody", "validityTimePeriod", "end"),
    ),
    "medicationMedicalRecord": (
        ("medicationMedicalRecordBody", "medicationPrescription", "startOfTreatment"),
        ("medicationMedicalRecordBody", "medicationPrescription", "endOfTreatment"),
    ),
    "functionalStatusAssessment": (("functionalStatusAssessmentHeader", "documentTime"), None),
    "laboratoryOrderOutcome": (("laboratoryOrderOutcomeBody", "analysis", "analysisTime"), None),
    "careContact": (
        ("careContactBody", "careContactTimePeriod", "start"),
        ("careContactBody", "careContactTimePeriod", "end"),
    ),
}

Record = dict[str, Any]


def ts(dt: datetime) -> str:
    return dt.strftime("%Y%m%d%H%M%S")


def day(dt: datetime) -> str:
    return dt.strftime("%Y%m%d")


def _drop_none(value: Any) -> Any:
    """Leave absent optional elements out of the XML rather than writing them empty."""
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def _cv(code: str, system: str, display: str) -> dict[str, str]:
    return {"code": code, "codeSystem": system, "displayName": display}


def header(
    pnr: str,
    doc_id: str,
    time: datetime,
    *,
    title: str | None = None,
    author: tuple[str, str] = _OTHER_DOCTORS["kardiolog"],
    unit_hsa: str = _OTHER_UNIT[0],
    provider: str = OTHER_REGION_PROVIDER,
    system: str = OTHER_REGION_SYSTEM,
    signed: bool = True,
    approved: bool = True,
    nullified_reason: str | None = None,
    recorded: datetime | None = None,
) -> Record:
    """The RIVTA record header (``<kind>Header``) every contract shares: ``time`` is its
    ``documentTime``; ``recorded`` (default: the same) when it was registered and signed."""
    return {
        "documentId": doc_id,
        "sourceSystemHSAId": system,
        "documentTitle": title,
        "documentTime": ts(time),
        "patientId": {"id": pnr, "type": SAMORDNING_OID if int(pnr[6:8]) > 60 else PNR_OID},
        "accountableHealthcareProfessional": {
            "authorTime": ts(recorded or time),
            "healthcareProfessionalHSAId": author[0],
            "healthcareProfessionalName": author[1],
            "healthcareProfessionalCareUnitHSAId": unit_hsa,
            "healthcareProfessionalCareGiverHSAId": provider,
        },
        "legalAuthenticator": {
            "signatureTime": ts(recorded or time),
            "legalAuthenticatorHSAId": author[0],
            "legalAuthenticatorName": author[1],
        }
        if signed
        else None,
        "approvedForPatient": "true" if approved else "false",
        "nullified": "true" if nullified_reason else "false",
        "nullifiedReason": nullified_reason,
    }


# ---- record builders, one per contract ---------------------------------------------------------


def note(pnr: str, doc_id: str, time: datetime, code: str, title: str, text: str, **kw: Any) -> Record:
    return {
        "careDocumentationHeader": header(pnr, doc_id, time, title=title, **kw),
        "careDocumentationBody": {
            "clinicalDocumentNote": {
                "clinicalDocumentNoteCode": code,
                "clinicalDocumentNoteTitle": title,
                "clinicalDocumentNoteText": text,
            }
        },
    }


def diagnosis(
    pnr: str,
    doc_id: str,
    time: datetime,
    code: str,
    text: str,
    *,
    main: bool,
    chronic: bool,
    diagnosed: datetime | None = None,
    **kw: Any,
) -> Record:
    return {
        "diagnosisHeader": header(pnr, doc_id, time, title="Diagnos", **kw),
        "diagnosisBody": {
            "typeOfDiagnosis": "Huvuddiagnos" if main else "Bidiagnos",
            "chronicDiagnosis": "true" if chronic else "false",
            "diagnosisTime": ts(diagnosed or time),
            "diagnosisCode": _cv(code, ICD10SE_OID, text),
        },
    }


def alert(
    pnr: str,
    doc_id: str,
    time: datetime,
    type_code: str,
    comment: str,
    *,
    hypersensitivity: Record | None = None,
    restriction: str | None = None,
    end: datetime | None = None,
    **kw: Any,
) -> Record:
    return {
        "alertInformationHeader": header(pnr, doc_id, time, title="Uppmärksamhetsinformation", **kw),
        "alertInformationBody": {
            "typeOfAlertInformation": _cv(type_code, KV_ALERT_TYPE_OID, _ALERT_TYPES[type_code]),
            "ascertainedDate": ts(time),
            "verifiedTime": ts(time),
            "validityTimePeriod": {"start": ts(time), "end": ts(end) if end else None},
            "alertInformationComment": comment,
            "hypersensitivity": hypersensitivity,
            "restrictionOfCare": {
                "restrictionOfCareComment": comment,
                "restrictionOfCareCode": _cv(restriction, KV_RESTRICTION_OID, _RESTRICTIONS[restriction]),
            }
            if restriction
            else None,
        },
    }


_ALERT_TYPES = {
    "OVE": "Överkänslighet",
    "ALL": "Allvarlig sjukdom",
    "BEH": "Behandling",
    "SMI": "Smitta",
    "VBG": "Vårdbegränsning",
    "OST": "Ostrukturerad uppmärksamhetsinformation",
}


_RESTRICTIONS = {"EJHLR": "Ej hjärt-lungräddning", "VILSAD": "Vård i livets slutskede"}
_SEVERITIES = {"ALLV": "Allvarlig", "MAT": "Måttlig", "LIN": "Lindrig"}
_CERTAINTIES = {"KON": "Konstaterad", "MIS": "Misstänkt"}


def drug_hypersensitivity(
    atc: str, substance: str, severity: str | None, certainty: str | None = "KON"
) -> Record:
    """A drug hypersensitivity; ``None`` leaves severity or certainty out (both are 0..1)."""
    return {
        "typeOfHypersensitivity": _cv("LAK", KV_HYPERSENSITIVITY_TYPE_OID, "Läkemedelsöverkänslighet"),
        "degreeOfSeverity": _cv(severity, KV_SEVERITY_OID, _SEVERITIES[severity]) if severity else None,
        "degreeOfCertainty": _cv(certainty, KV_CERTAINTY_OID, _CERTAINTIES[certainty]) if certainty else None,
        "pharmaceuticalHypersensitivity": {"atcSubstance": _cv(atc, ATC_OID, substance)},
    }


def medication(
    pnr: str,
    doc_id: str,
    time: datetime,
    atc: str,
    atc_name: str,
    product: str,
    dosage: str,
    *,
    npl: str | None = None,
    end: datetime | None = None,
    **kw: Any,
) -> Record:
    return {
        "medicationMedicalRecordHeader": header(pnr, doc_id, time, title="Läkemedel", **kw),
        "medicationMedicalRecordBody": {
            "medicationPrescription": {
                "prescriptionId": f"{doc_id}-P",
                "typeOfPrescription": "I",  # insättning
                "prescriptionStatus": "Inactive" if end else "Active",
                "startOfTreatment": day(time),
                "endOfTreatment": day(end) if end else None,
                "drug": {
                    "atcCode": _cv(atc, ATC_OID, atc_name),
                    "nplProductId": _cv(npl, NPL_OID, product) if npl else None,
                    "productName": product,
                },
                "dosageInstruction": dosage,
            }
        },
    }


def lab(
    pnr: str,
    doc_id: str,
    sampled: datetime,
    npu: str,
    name: str,
    value: float,
    unit: str,
    low: str | None,
    high: str | None,
    *,
    decimals: int = 0,
    registered: datetime | None = None,
    **kw: Any,
) -> Record:
    """One analysis: sampled at ``sampled``, the result registered at ``registered`` (default: the
    lab's 14:30 run the same day), which is always later — a result is never issued before its
    sample was taken."""
    text = f"{value:.{decimals}f}".replace(".", ",")

    def num(s: str | None) -> float | None:
        return None if s is None else float(s.replace(",", "."))

    lo, hi = num(low), num(high)
    abnormal = (lo is not None and value < lo) or (hi is not None and value > hi)
    interval = f"{low or ''}-{high or ''}" if low else f"<{high}"
    registered = registered or sampled.replace(hour=14, minute=30)
    if registered <= sampled:
        raise ValueError(f"{doc_id}: a result registered at or before its sample was taken")
    kw.setdefault("author", _OTHER_DOCTORS["labb"])
    return {
        "laboratoryOrderOutcomeHeader": header(pnr, doc_id, registered, title="Provsvar", **kw),
        "laboratoryOrderOutcomeBody": {
            "resultType": "DEF",
            "registrationTime": ts(registered),
            "discipline": "Klinisk kemi",
            "accessionNumber": f"{doc_id}-R",
            "analysis": {
                "analysisId": f"{doc_id}-A",
                "analysisCode": _cv(npu, NPU_OID, name),
                # the contract's TimePeriodType ("here the time of sampling is given"); a sample
                # is taken at one moment, so only its start
                "analysisTime": {"start": ts(sampled)},
                "analysisStatus": "Slutsvar",
                "analysisOutcome": {
                    "outcomeValue": text,
                    "outcomeUnit": unit,
                    "pathologicalFlag": "true" if abnormal else "false",
                    "referenceInterval": interval,
                    "referenceIntervalLow": low,
                    "referenceIntervalHigh": high,
                },
            },
        },
    }


_CONTACT_CODES = {"1": "Besök", "2": "Vårdtillfälle", "3": "Hemsjukvårdsbesök", "4": "Distanskontakt"}


def contact(
    pnr: str, doc_id: str, start: datetime, end: datetime | None, code: str, reason: str, **kw: Any
) -> Record:
    unit_hsa, unit_name = kw.pop("org_unit", _OTHER_UNIT)
    return {
        "careContactHeader": header(pnr, doc_id, end or start, title="Vårdkontakt", **kw),
        "careContactBody": {
            "careContactCode": code,
            "careContactCodeDisplayName": _CONTACT_CODES[code],
            "careContactReason": reason,
            "careContactOrgUnit": {"orgUnitHSAId": unit_hsa, "orgUnitName": unit_name},
            "careContactTimePeriod": {"start": ts(start), "end": ts(end) if end else None},
            "careContactStatus": "5" if end else "3",  # 5 avslutad, 3 pågående
        },
    }


def functional_status(
    pnr: str, doc_id: str, time: datetime, code: str, display: str, assessment: str, **kw: Any
) -> Record:
    """A PADL assessment (``pad-pad``) of one ICF activity, made at ``time`` (the contract's
    ``documentTime``, "bedömningstidpunkt") and registered two mornings later (``authorTime``): more
    than the day a date filter at the source is widened by, so a mapping that dated the Observation
    by the registration would answer a narrowed search differently (tests/pushdown)."""
    kw.setdefault("recorded", (time + timedelta(days=2)).replace(hour=8, minute=0, second=0))
    return {
        "functionalStatusAssessmentHeader": header(pnr, doc_id, time, title="Funktionsstatus", **kw),
        "functionalStatusAssessmentBody": {
            "assessmentCategory": "pad-pad",
            "padl": {
                "typeOfAssessment": _cv(code, ICF_OID, display),
                "assessment": assessment,
            },
        },
    }


# ---- the hand-written demo records --------------------------------------------------------------


def _empty() -> dict[str, list[Record]]:
    return {k: [] for k in RECORD_KINDS}


_LENNART_LABS = (
    # npu, name, unit, low, high, decimals, base value, drift per visit, noise
    ("NPU21571", "P-NT-proBNP", "ng/L", None, "300", 0, 5200.0, -180.0, 700.0),
    ("NPU04998", "P-Kreatinin", "µmol/L", "60", "105", 0, 118.0, 1.5, 10.0),
    ("NPU03429", "P-Kalium", "mmol/L", "3,5", "4,4", 1, 4.2, 0.0, 0.4),
    ("NPU03230", "P-Natrium", "mmol/L", "137", "145", 0, 138.0, 0.0, 3.0),
)


def _lennart_labs() -> list[Record]:
    """Lennart's heart-failure controls at the other region: a seeded series (the rest of his NPÖ
    record is a data file, ``data/npo/lennart.yaml``)."""
    p = LENNART.pnr
    rng = random.Random("npo:lennart")
    out: list[Record] = []
    seq = 0
    for visit in range(10):  # a control every ~3 months, four analyses each: 40 results
        sampled = at(900 - visit * 88 - rng.randint(0, 6), 8, 10 + rng.randint(0, 30))
        for npu, name, unit, low, high, decimals, base, drift, noise in _LENNART_LABS:
            seq += 1
            value = max(base + drift * visit + rng.uniform(-noise, noise), 0.1)
            out.append(
                lab(
                    p,
                    f"KAR-L-309278-{seq}",
                    sampled,
                    npu,
                    name,
                    round(value, decimals),
                    unit,
                    low,
                    high,
                    decimals=decimals,
                )
            )
    return out


# ---- generated patients -------------------------------------------------------------------------

_GEN_DIAGNOSES = [("I25.1", "Aterosklerotisk hjärtsjukdom"), ("K21.9", "Gastroesofageal refluxsjukdom")]
_GEN_LABS = [
    ("NPU02319", "B-Hemoglobin", "g/L", "134", "170", 110, 165),
    ("NPU19748", "P-CRP", "mg/L", None, "5", 1, 40),
    ("NPU04998", "P-Kreatinin", "µmol/L", "60", "105", 55, 140),
]


def _generated(person: Person) -> dict[str, list[Record]]:
    rng = random.Random(f"{person.rng_seed}:npo")
    p = person.pnr
    tag = person.rng_seed.replace(":", "-")
    out = _empty()
    for i in range(rng.randint(1, 5)):
        doc_id = f"OR-{tag}-{i}"
        days = rng.randint(10, 2500)
        kind = rng.choice(["diagnosis", "careContact", "lab", "lab", "note", "medication"])
        if kind == "diagnosis":
            code, text = rng.choice(_GEN_DIAGNOSES)
            out["diagnosis"].append(diagnosis(p, doc_id, at(days, 11), code, text, main=True, chronic=True))
        elif kind == "careContact":
            out["careContact"].append(contact(p, doc_id, at(days, 9), at(days, 10), "1", "Mottagningsbesök"))
        elif kind == "lab":
            npu, name, unit, low, high, lo, hi = rng.choice(_GEN_LABS)
            out["laboratoryOrderOutcome"].append(
                lab(p, doc_id, at(days, 8), npu, name, round(rng.uniform(lo, hi)), unit, low, high)
            )
        elif kind == "note":
            out["careDocumentation"].append(
                note(
                    p,
                    doc_id,
                    at(days, 15),
                    "epi",
                    "Epikris",
                    "Vårdad på Universitetssjukhuset Öst. Återgår till hemortens vårdcentral.",
                    approved=rng.random() < 0.8,
                )
            )
        else:
            out["medicationMedicalRecord"].append(
                medication(
                    p,
                    doc_id,
                    at(days, 12),
                    "N02BE01",
                    "Paracetamol",
                    "Paracetamol 500 mg tablett",
                    "2 tabletter vid behov, högst 4 gånger per dygn",
                )
            )
    return out


# ---- long histories (history.py) ----------------------------------------------------------------

_LONG_LABS = [  # npu, name, unit, reference low, high, values drawn low, high, decimals
    ("NPU21571", "P-NT-proBNP", "ng/L", None, "300", 300, 6000, 0),
    ("NPU04998", "P-Kreatinin", "µmol/L", "45", "90", 70, 190, 0),
    ("NPU03429", "P-Kalium", "mmol/L", "3,5", "4,4", 3.2, 5.4, 1),
    ("NPU03230", "P-Natrium", "mmol/L", "137", "145", 131, 146, 0),
    ("NPU02319", "B-Hemoglobin", "g/L", "117", "153", 105, 160, 0),
    ("NPU19748", "P-CRP", "mg/L", None, "5", 1, 60, 0),
]
_LONG_DIAGNOSES = [
    ("I50.9", "Hjärtsvikt, ospecificerad", True),
    ("I48.9", "Förmaksflimmer, ospecificerat", True),
    ("I25.1", "Aterosklerotisk hjärtsjukdom", True),
    ("R07.4", "Bröstsmärtor, ospecificerade", False),
    ("I95.1", "Ortostatisk hypotoni", False),
]
_LONG_NOTES = [  # (code, title, text)
    (
        "utr",
        "Utredning",
        "Ekokardiografi: nedsatt vänsterkammarfunktion, EF 35 %. Oförändrat sedan förra året.",
    ),
    ("ins", "Inskrivningsanteckning", "Inkommer med andfåddhet och viktökning, dekompenserad hjärtsvikt."),
    ("epi", "Epikris", "Vårdad för hjärtsvikt. Diuretika justerat. Återgår till hemortens vårdcentral."),
    ("sam", "Sammanfattning", "Kardiologisk uppföljning: stabil hjärtsvikt, fortsatt behandling."),
]
_LONG_MEDS = [  # (atc, substance, product, dosage)
    ("C03CA01", "Furosemid", "Furosemid 40 mg tablett", "1 tablett morgon"),
    ("C07AB07", "Bisoprolol", "Bisoprolol 5 mg tablett", "1 tablett dagligen"),
    ("C09DX04", "Valsartan och sakubitril", "Entresto 49 mg/51 mg tablett", "1 tablett 2 gånger dagligen"),
    ("C03DA01", "Spironolakton", "Spironolakton 25 mg tablett", "1 tablett dagligen"),
]
_LONG_PADL = [
    ("d450", "Att gå", "Går med rollator inomhus, kortare sträckor utomhus."),
    ("d510", "Att tvätta sig", "Behöver hjälp med dusch."),
    ("d540", "Att klä sig", "Klarar på- och avklädning med viss hjälp."),
]


def _long(person: Person, history: Plan) -> dict[str, list[Record]]:
    """A long history in NPÖ (the other region's cardiology): ``history.counts["npo"]`` records of
    each kind, seeded by the patient; none nullified, none a copy of a Cosmic record."""
    counts = history.counts.get("npo", {})
    rng = history.rng("npo")
    p = person.pnr
    tag = f"H-{p[-6:]}"
    out = _empty()
    doctors = (_OTHER_DOCTORS["kardiolog"], _OTHER_DOCTORS["sjukskoterska"])
    labs = counts.get("laboratoryOrderOutcome", 0)
    i = 0
    while i < labs:  # one sample, several analyses, registered the same day
        sampled = at(history.days_ago(rng), rng.randint(7, 11), rng.choice((0, 10, 25, 40)))
        registered = sampled + timedelta(hours=rng.randint(1, 5))
        for npu, name, unit, low, high, lo, hi, decimals in rng.sample(
            _LONG_LABS, min(labs - i, rng.randint(1, 4))
        ):
            value = round(rng.uniform(lo, hi), decimals)
            out["laboratoryOrderOutcome"].append(
                lab(
                    p,
                    f"{tag}-L{i}",
                    sampled,
                    npu,
                    name,
                    value,
                    unit,
                    low,
                    high,
                    decimals=decimals,
                    registered=registered,
                )
            )
            i += 1
    for i in range(counts.get("careDocumentation", 0)):
        code, title, text = rng.choice(_LONG_NOTES)
        out["careDocumentation"].append(
            note(p, f"{tag}-N{i}", history.moment(rng, 9, 17), code, title, text, approved=rng.random() < 0.9)
        )
    for i in range(counts.get("careContact", 0)):
        code = rng.choice(["1", "1", "1", "2", "4"])
        stay = rng.randint(2, 7) if code == "2" else 0  # (an admission: days; ended before today)
        start = at(history.days_ago(rng, newest=stay + 1), rng.randint(8, 16), rng.choice((0, 15, 30, 45)))
        end = start + (timedelta(days=stay) if stay else timedelta(minutes=45))
        out["careContact"].append(
            contact(
                p, f"{tag}-C{i}", start, end, code, "Kardiologisk uppföljning", author=rng.choice(doctors)
            )
        )
    for i in range(counts.get("diagnosis", 0)):
        code, text, chronic = _LONG_DIAGNOSES[i % len(_LONG_DIAGNOSES)]
        when = history.moment(rng)
        out["diagnosis"].append(diagnosis(p, f"{tag}-D{i}", when, code, text, main=i == 0, chronic=chronic))
    for i in range(counts.get("medicationMedicalRecord", 0)):
        atc, substance, product, dosage = _LONG_MEDS[i % len(_LONG_MEDS)]
        days = history.days_ago(rng, newest=30)
        ended = i >= len(_LONG_MEDS) or rng.random() < 0.3
        out["medicationMedicalRecord"].append(
            medication(
                p,
                f"{tag}-M{i}",
                at(days, 11),
                atc,
                substance,
                product,
                dosage,
                end=at(rng.randint(1, days - 1)) if ended else None,
            )
        )
    for i in range(counts.get("functionalStatusAssessment", 0)):
        code, display, text = rng.choice(_LONG_PADL)
        out["functionalStatusAssessment"].append(
            functional_status(
                p,
                f"{tag}-F{i}",
                history.moment(rng, newest=3),  # (registered two days later: not after the reference day)
                code,
                display,
                text,
                author=_OTHER_DOCTORS["arbetsterapeut"],
            )
        )
    for i in range(counts.get("alertInformation", 0)):
        if i % 3 == 2:  # an alert without a hypersensitivity: a treatment to know of (a Flag)
            out["alertInformation"].append(
                alert(p, f"{tag}-U{i}", history.moment(rng), "BEH", "Behandlas med antikoagulantia.")
            )
            continue
        atc, substance, severity, certainty = rng.choice(
            [
                ("C09AA05", "Ramipril", "MAT", "KON"),
                ("N02AA01", "Morfin", "LIN", "MIS"),
                ("J01CE02", "Fenoximetylpenicillin", "ALLV", "KON"),
            ]
        )
        out["alertInformation"].append(
            alert(
                p,
                f"{tag}-U{i}",
                history.moment(rng),
                "OVE",
                f"Överkänslighet mot {substance.lower()}.",
                hypersensitivity=drug_hypersensitivity(atc, substance, severity, certainty),
            )
        )
    for kind, records in out.items():  # newest first
        records.sort(key=lambda r: str(r[f"{kind}Header"]["documentTime"]), reverse=True)
    return out


def _cosmic_copy(pnr: str, d: dict[str, Any]) -> Record:
    """NPÖ's copy of a Cosmic diagnosis: Cosmic's record id and system, the region as care giver."""
    changed = datetime.strptime(d["changedAt"], "%Y-%m-%d %H:%M")
    diagnosed = datetime.strptime(d["diagnosedAt"], "%Y-%m-%d %H:%M")
    unit_hsa = d["careUnit"]["hsaId"]
    return diagnosis(
        pnr,
        d["diagnosisId"],
        changed,
        d["icd10Code"],
        d["diagnosisText"],
        main=d["diagnosisType"] == "MAIN",
        chronic=d["state"] == "ACT",
        diagnosed=diagnosed,
        author=_COSMIC_DOCTORS.get(unit_hsa, _COSMIC_DOCTORS[UNITS["vc-norr"][0]]),
        unit_hsa=unit_hsa,
        provider=REGION_PROVIDER,
        system=COSMIC_SYSTEM,
    )


Hand = dict[str, dict[str, list[Record]]]


def hand_records() -> Hand:
    """The named demo patients' records, ``data/npo/<name>.yaml`` (``proxy/simulators/records.py``),
    and Lennart's seeded lab series."""
    hand = hand_written("npo", ts, day)
    hand[LENNART.pnr]["laboratoryOrderOutcome"] += _lennart_labs()
    return hand


def entry_of(
    person: Person, hand: Hand, cosmic_hand: cosmic.Hand, history: History | None = None
) -> dict[str, list[Record]]:
    """One patient's records in NPÖ by record element: a data file's, a long history's
    (``history.py``), the small seeded history of the generator above, or none (a named patient
    without a file) — and first the copies of the Cosmic diagnoses the region publishes."""
    long = plan(person, history)
    if person.pnr in hand:
        records = {k: list(v) for k, v in hand[person.pnr].items()}
    elif long is not None:
        records = _long(person, long)
    elif person.generated:
        records = _generated(person)
    else:
        records = _empty()
    if person.in_cosmic and long is None:  # (a long history shares nothing: history.py)
        published = cosmic.records_of(person, cosmic_hand, history)["diagnoses"]
        shared = [_cosmic_copy(person.pnr, d) for d in published if d.get("sharedWithNpo")]
        records["diagnosis"] = shared + records["diagnosis"]
    return {k: [_drop_none(r) for r in v] for k, v in records.items()}


def in_npo(people: list[Person]) -> list[Person]:
    return [p for p in people if p.in_npo]


def build_data(people: list[Person], history: History | None = None) -> dict[str, dict[str, list[Record]]]:
    """NPÖ's whole index at once: personnummer → {record element name: [records]} for everyone NPÖ
    knows (``entry_of``). The app makes each patient's entry when first asked (``create_app``);
    this is for tests and checks."""
    hand, cosmic_hand = hand_records(), cosmic.hand_records()
    return {p.pnr: entry_of(p, hand, cosmic_hand, history) for p in in_npo(people)}


def size(entry: dict[str, list[Record]]) -> int:
    """Records in an entry (what the app's cache of generated patients is bounded by)."""
    return sum(len(v) for v in entry.values())


def _at(record: Record, path: tuple[str, ...]) -> str | None:
    node: Any = record
    for step in path:
        if not isinstance(node, dict):
            return None
        node = node.get(step)
    if isinstance(node, dict):  # a TimePeriodType: its start, else its end
        node = node.get("start") or node.get("end")
    return node if isinstance(node, str) else None


def in_window(records: list[Record], kind: str, window: Window) -> list[Record]:
    if window.unbounded:
        return records
    start, end = DATE_PATHS[kind]
    return [
        r
        for r in records
        if window.admits(_at(r, start), _at(r, end) if end else None, lasting=end is not None)
    ]


# ---- SOAP ---------------------------------------------------------------------------------------


def _xml(doc: dict[str, Any], status: int = 200) -> web.Response:
    body = xmlwrite.unparse(doc).encode("utf-8")  # (xmltodict's bytes, faster: xmlwrite.py)
    return web.Response(body=body, status=status, content_type="text/xml", charset="utf-8")


def soap_fault(status: int, message: str, code: str = "Server") -> web.Response:
    """A SOAP 1.1 Fault (``soap:Client`` for a bad request, ``soap:Server`` otherwise)."""
    return _xml(
        {
            "soap:Envelope": {
                "@xmlns:soap": SOAP_NS,
                "soap:Body": {"soap:Fault": {"faultcode": f"soap:{code}", "faultstring": message}},
            }
        },
        status,
    )


def response(contract: Contract, pnr: str, records: list[Record]) -> web.Response:
    log_id = uuid.uuid5(uuid.NAMESPACE_URL, f"npo:{contract.operation}:{pnr}")
    content: dict[str, Any] = {"@xmlns:ns2": contract.responder_ns, "@xmlns": contract.core_ns}
    if records:
        content[f"ns2:{contract.record}"] = records
    content["ns2:result"] = {"resultCode": "OK", "logId": str(log_id)}
    return _xml(
        {
            "soap:Envelope": {
                "@xmlns:soap": SOAP_NS,
                "soap:Body": {f"ns2:{contract.operation}Response": content},
            }
        }
    )


def _text(node: Any) -> str | None:
    return node.strip() if isinstance(node, str) and node.strip() else None


def read_request(contract: Contract, raw: bytes) -> str:
    """The patient id of a contract request. Raises ValueError with a fault string."""
    return read_query(contract, raw)[0]


def read_query(contract: Contract, raw: bytes) -> tuple[str, Window]:
    """The patient id and the time period (unbounded when not given) of a contract request.
    Raises ValueError with a fault string."""
    try:
        doc = parse_xml(raw)
    except ValueError:
        raise ValueError("Request is not well-formed XML") from None
    envelope = doc.get("Envelope")
    if not isinstance(envelope, dict) or not isinstance(envelope.get("Body"), dict):
        raise ValueError("Request is not a SOAP envelope")
    head = envelope.get("Header")
    if not isinstance(head, dict) or _text(head.get("LogicalAddress")) is None:
        raise ValueError("VP007 LogicalAddress missing in the SOAP header")
    op = envelope["Body"].get(contract.operation, ())
    op = {} if op is None else op  # an empty <GetX/> element
    if not isinstance(op, dict):
        raise ValueError(f"Expected a {contract.operation} request at this endpoint")
    pid = op.get("patientId")
    if not isinstance(pid, dict):
        raise ValueError("patientId is required")
    pnr, kind = _text(pid.get("id")), _text(pid.get("type"))
    if kind not in (PNR_OID, SAMORDNING_OID):
        raise ValueError("patientId.type must be a personnummer or samordningsnummer OID")
    if pnr is None or not is_valid_pnr(pnr):
        raise ValueError("patientId.id is not a valid personnummer")
    period = op.get(contract.period)
    if period is None:
        return pnr, Window()
    if not isinstance(period, dict):
        raise ValueError(f"{contract.period} holds a start and/or an end")
    try:
        return pnr, Window.parse(_text(period.get("start")), _text(period.get("end")))
    except ValueError as exc:
        raise ValueError(f"{contract.period}: {exc}") from None


PATIENTS_KEY = web.AppKey("patients", Patients)


def create_app(
    people: list[Person],
    faults: fault_mod.Faults | None = None,
    *,
    history: History | None = None,
    cached_records: int = DEFAULT_CACHED_RECORDS,
) -> web.Application:
    """The NPÖ app for ``people``: each patient's records made when first asked for
    (``proxy/simulators/lazy.py``), long histories per ``history``."""
    hand, cosmic_hand = hand_records(), cosmic.hand_records()
    patients: Patients[dict[str, list[Record]]] = Patients(
        in_npo(people), lambda p, _: entry_of(p, hand, cosmic_hand, history), size, cached_records
    )

    def endpoint(contract: Contract) -> fault_mod.Handler:
        async def handle(request: web.Request) -> web.Response:
            try:
                pnr, window = read_query(contract, await request.read())
            except ValueError as exc:
                return soap_fault(500, str(exc), "Client")
            records = (patients.get(pnr) or {}).get(contract.record, [])
            return response(contract, pnr, in_window(records, contract.record, window))

        return handle

    app = web.Application()
    app[PATIENTS_KEY] = patients
    stats.install(app)
    fault_mod.install(app, faults or fault_mod.Faults(), lambda s: soap_fault(s, "Injected error"))
    for contract in CONTRACTS:
        app.router.add_post(contract.path, endpoint(contract))
    return app
