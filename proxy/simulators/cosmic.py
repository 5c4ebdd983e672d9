"""Cambio Cosmic stand-in: the region's EHR, proprietary JSON over REST.

Dialect (deliberately unlike FHIR):

* per-patient resources under ``/cosmic/api/v1/patients/{yyyymmdd-nnnn}/...``: ``diagnoses``,
  ``medications``, ``alerts`` (care limitations, alerts *and* hypersensitivity in one list),
  ``labresults``, ``carecontacts``, ``notes``, ``vaccinations``, ``procedures``; the patient itself at
  the bare path (a samordningsnummer is written like a personnummer, ``yyyymmdd-nnnn`` with day + 60);
* the MobiMed ambulance module's threat register at ``/cosmic/api/v1/ambulance/patients/{pnr}/threats``;
* lists are ``{"patientId", "items": [...], "totalCount"}``; an unknown patient is ``404`` with
  ``{"errorCode": "PATIENT_NOT_FOUND"}``;
* timestamps ``yyyy-MM-dd HH:mm`` local time, dates ``yyyy-MM-dd``; decimals with a comma;
* status codes of its own: ``ACT``/``INACT``/``RES`` (diagnoses), ``ACTIVE``/``ENDED`` (medication),
  ``FINAL``/``PRELIMINARY`` (lab), ``SIGNED``/``UNSIGNED`` (notes);
* alerts: ``alertKind`` ``CARE_LIMITATION`` (``alertCode`` ``EJHLR`` no CPR, ``VILSAD`` end-of-life
  care), ``ALERT`` or ``HYPERSENSITIVITY`` — and kinds the facade does not know (Lennart's
  ``INFECTION``); a hypersensitivity carries the reaction's ``severity``
  ``MILD``/``MODERATE``/``SEVERE`` and its ``certainty`` ``SUSPECTED``/``CONFIRMED``/``REFUTED``
  (either may be missing: not recorded);
* procedures (åtgärder) carry a KVÅ code (``kvaCode``, Klassifikation av vårdåtgärder) and its text,
  ``state`` ``PERFORMED``/``ONGOING``/``CANCELLED``, ``performedAt`` (and ``endAt`` for one that
  lasted), the care contact and reason diagnosis, and ``shownToPatient``: whether the region lets the
  patient read it in 1177 yet (a missing flag means no). The KVÅ codes and texts are illustrative:
  chosen in KVÅ's format (three letters and two digits for surgical, two letters and three digits for
  other procedures) to look real, not checked against an edition of KVÅ;
* every list endpoint takes an optional date range, ``?fromDate=2024-01-01&toDate=2024-12-31``
  (``yyyy-MM-dd`` or ``yyyy-MM-dd HH:mm``, both inclusive, either may be left out; a malformed one is
  ``400`` ``INVALID_PARAMETER``): the items dated in it, by ``DATE_FIELDS`` — one date for a record
  made at one moment, a period (start, end) for one that lasts, admitted when it overlaps the range
  (``proxy/simulators/window.py``); ``totalCount`` counts what is returned;
* writes (issue 22): ``POST`` to the patient's ``carecontacts``, ``vitalsigns``, ``notes`` and
  ``administrations``, checked whole (``400``/``404``/``422`` with ``errorCode``; nothing kept),
  ``Idempotency-Key`` honoured; the record is listed by the kind's GET with the writer's
  ``careUnit`` and ``externalId`` (see "writes" below, ``writes.py``).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from aiohttp import web

from proxy.simulators import faults as fault_mod
from proxy.simulators import stats
from proxy.simulators import writes as w
from proxy.simulators.history import History, Plan, plan
from proxy.simulators.lazy import DEFAULT_CACHED_RECORDS, Patients
from proxy.simulators.population import (
    COSMIC_SYSTEM,
    GRETA,
    REGION_PROVIDER,
    UNITS,
    Person,
    at,
    pnr_dash,
)
from proxy.simulators.records import hand_written
from proxy.simulators.window import Window
from proxy.simulators.writes import Codes, Refused, Written

BASE = "/cosmic/api/v1"
KINDS = (
    "diagnoses",
    "medications",
    "alerts",
    "labresults",
    "carecontacts",
    "notes",
    "vaccinations",
    "procedures",
)


# What a date range filters each list by: (field, None) for a record made at one moment, (start,
# end) for one that lasts (overlapping the range; no end: still going). The threat register too.
DATE_FIELDS: dict[str, tuple[str, str | None]] = {
    "diagnoses": ("diagnosedAt", None),
    "medications": ("startDate", "endDate"),
    "alerts": ("validFrom", "validTo"),
    "labresults": ("sampledAt", None),
    "carecontacts": ("startAt", "endAt"),
    "notes": ("signedAt", None),
    "vaccinations": ("administeredAt", None),
    "procedures": ("performedAt", "endAt"),
    "threats": ("registeredAt", None),
}
# the kinds only written records fill (issue 22: see "writes" below), and what a range filters them by
WRITTEN_ONLY: dict[str, tuple[str, str | None]] = {
    "vitalsigns": ("measuredAt", None),
    "administrations": ("administeredAt", None),
}


def ts(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%d %H:%M")


def day(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%d")


def unit(key: str) -> dict[str, str]:
    hsa, name = UNITS[key]
    return {"hsaId": hsa, "name": name, "providerHsaId": REGION_PROVIDER}


def procedure(
    pid: str,
    kva: str,
    text: str,
    performed: datetime,
    unit_key: str,
    *,
    end: datetime | None = None,
    contact: str | None = None,
    reason: str | None = None,
    state: str = "PERFORMED",
    shown: bool = True,
    comment: str | None = None,
) -> dict[str, Any]:
    """A procedure (åtgärd) with its KVÅ code; ``shown``: approved for the patient (1177)."""
    rec: dict[str, Any] = {
        "procedureId": pid,
        "kvaCode": kva,
        "procedureText": text,
        "state": state,
        "performedAt": ts(performed),
        "endAt": ts(end) if end else None,
        "contactId": contact,
        "reasonDiagnosisId": reason,
        "comment": comment,
        "shownToPatient": shown,
        "changedAt": ts(end or performed),
        "careUnit": unit(unit_key),
    }
    return {k: v for k, v in rec.items() if v is not None}


def _lab(
    rid: str, npu: str, name: str, value: str, unit_: str, low: str, high: str, days: int, unit_key: str
) -> dict[str, Any]:
    return _lab_at(rid, npu, name, value, unit_, low, high, at(days, 8, 5), at(days, 14, 30), unit_key)


def _lab_at(
    rid: str,
    npu: str,
    name: str,
    value: str,
    unit_: str,
    low: str,
    high: str,
    sampled: datetime,
    resulted: datetime,
    unit_key: str,
) -> dict[str, Any]:
    def num(s: str) -> float:
        return float(s.replace(",", "."))

    return {
        "resultId": rid,
        "npuCode": npu,
        "analysisName": name,
        "resultValue": value,
        "unit": unit_,
        "referenceLow": low,
        "referenceHigh": high,
        "abnormal": not num(low) <= num(value) <= num(high),
        "sampledAt": ts(sampled),
        "resultAt": ts(resulted),
        "state": "FINAL",
        "careUnit": unit(unit_key),
    }


# ---- generated patients -------------------------------------------------------------------------

_DIAGNOSES = [
    ("I10", "Essentiell hypertoni"),
    ("E11.9", "Typ 2-diabetes utan komplikationer"),
    ("J44.9", "Kroniskt obstruktiv lungsjukdom, ospecificerad"),
    ("I48.9", "Förmaksflimmer, ospecificerat"),
    ("M17.1", "Primär gonartros, ensidig"),
    ("F32.9", "Depressiv episod, ospecificerad"),
]
_MEDS = [
    ("C09AA05", "Ramipril 5 mg tablett"),
    ("A10BA02", "Metformin 500 mg tablett"),
    ("B01AF01", "Rivaroxaban 20 mg tablett"),
    ("N02BE01", "Paracetamol 500 mg tablett"),
    ("C07AB02", "Metoprolol 50 mg depottablett"),
]
_PROCEDURES = [  # illustrative KVÅ codes (see the module docstring)
    ("DT016", "Inläggning av perifer venkateter"),
    ("UJD02", "Gastroskopi"),
    ("UJF32", "Koloskopi"),
    ("AF021", "Arbetsprov"),
]
_LABS = [
    ("NPU02319", "B-Hemoglobin", 120, 170, "g/L", "134", "170"),
    ("NPU03429", "P-Kalium", 3.2, 5.0, "mmol/L", "3,5", "4,4"),
    ("NPU04998", "P-Kreatinin", 50, 140, "µmol/L", "60", "105"),
    ("NPU27300", "B-HbA1c", 30, 80, "mmol/mol", "27", "42"),
]


def _generated(person: Person) -> dict[str, list[dict[str, Any]]]:
    rng = random.Random(f"{person.rng_seed}:cosmic")
    n = person.pnr[-6:]
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in (*KINDS, "threats")}
    for i, (code, text) in enumerate(rng.sample(_DIAGNOSES, rng.randint(1, 4))):
        days = rng.randint(30, 4000)
        out["diagnoses"].append(
            {
                "diagnosisId": f"D-{n}-{i}",
                "icd10Code": code,
                "diagnosisText": text,
                "state": rng.choice(["ACT", "ACT", "INACT"]),
                "diagnosisType": "MAIN" if i == 0 else "SECONDARY",
                "diagnosedAt": ts(at(days, 10, 0)),
                "changedAt": ts(at(days, 10, 0)),
                "careUnit": unit("vc-norr"),
                "sharedWithNpo": rng.random() < 0.5,
            }
        )
    for i, (atc, name) in enumerate(rng.sample(_MEDS, rng.randint(1, 5))):
        days = rng.randint(30, 3000)
        ended = rng.random() < 0.3
        out["medications"].append(
            {
                "medicationId": f"M-{n}-{i}",
                "atcCode": atc,
                "productName": name,
                "dosageText": "1 tablett dagligen",
                "startDate": at(days).strftime("%Y-%m-%d"),
                "endDate": at(days // 2).strftime("%Y-%m-%d") if ended else None,
                "state": "ENDED" if ended else "ACTIVE",
                "changedAt": ts(at(days, 9, 0)),
                "careUnit": unit("vc-norr"),
            }
        )
    for i in range(rng.randint(3, 12)):
        npu, name, lo, hi, u, rlo, rhi = rng.choice(_LABS)
        value = f"{rng.uniform(lo, hi):.1f}".replace(".", ",")
        out["labresults"].append(
            _lab(f"L-{n}-{i}", npu, name, value, u, rlo, rhi, rng.randint(1, 2000), "vc-norr")
        )
    for i in range(rng.randint(1, 3)):
        days = rng.randint(1, 2000)
        reason = out["diagnoses"][0]["diagnosisId"]
        out["carecontacts"].append(
            {
                "contactId": f"C-{n}-{i}",
                "contactType": rng.choice(["OPEN", "EMERGENCY", "INPATIENT"]),
                "startAt": ts(at(days, 9, 0)),
                "endAt": ts(at(days, 10, 0)),
                "reasonDiagnosisId": reason,
                "state": "FINISHED",
                "careUnit": unit(rng.choice(["vc-norr", "akuten", "med"])),
            }
        )
        out["notes"].append(
            {
                "noteId": f"N-{n}-{i}",
                "noteType": "DAILY",
                "title": "Mottagningsbesök",
                "text": "Patienten kommer för uppföljning. Mår efter omständigheterna bra.",
                "signedAt": ts(at(days, 10, 30)),
                "signedBy": {"hsaId": "SE2321000016-L2VC", "name": "Bertil Distriktsläkare"},
                "state": "SIGNED",
                "careUnit": unit("vc-norr"),
            }
        )
    if rng.random() < 0.3:
        out["alerts"].append(
            {
                "alertId": f"A-{n}-0",
                "alertKind": "HYPERSENSITIVITY",
                "alertCode": "LAKEMEDEL",
                "alertText": "Överkänslighet mot sulfonamider.",
                "substanceAtc": "J01EC02",
                "substanceName": "Sulfadiazin",
                "severity": "MILD",  # no certainty: Cosmic left it unrecorded
                "reactionText": "Hudutslag",
                "validFrom": ts(at(2000, 10, 0)),
                "validTo": None,
                "state": "ACTIVE",
                "changedAt": ts(at(2000, 10, 0)),
                "careUnit": unit("vc-norr"),
            }
        )
    if rng.random() < 0.5:
        out["vaccinations"].append(
            {
                "vaccinationId": f"V-{n}-0",
                "atcCode": "J07BB02",
                "vaccineName": "Influensavaccin, inaktiverat",
                "administeredAt": ts(at(rng.randint(10, 400), 13, 0)),
                "doseNumber": 1,
                "batchNumber": f"FLU-{rng.randint(100, 999)}",
                "careUnit": unit("vc-norr"),
            }
        )
    # (an rng of its own, so that adding procedures left every other generated record as it was)
    prng = random.Random(f"{person.rng_seed}:cosmic:procedures")
    for i in range(prng.choice([0, 0, 1, 2])):
        kva, text = prng.choice(_PROCEDURES)
        contact = prng.choice(out["carecontacts"])
        started = datetime.strptime(contact["startAt"], "%Y-%m-%d %H:%M")
        out["procedures"].append(
            procedure(
                f"P-{n}-{i}",
                kva,
                text,
                started.replace(minute=20),
                next(k for k, (hsa, _) in UNITS.items() if hsa == contact["careUnit"]["hsaId"]),
                contact=contact["contactId"],
                state=prng.choice(["PERFORMED", "PERFORMED", "PERFORMED", "CANCELLED"]),
                shown=prng.random() < 0.9,
            )
        )
    if rng.random() < 0.05:
        out["threats"].append(
            {
                "threatId": f"T-{n}-0",
                "category": "HOT",
                "registeredAt": ts(at(rng.randint(10, 900), 21, 0)),
                "description": "Aggressivt beteende vid tidigare larm.",
                "registeredBy": {"name": "Ambulans 2-3020", "unitHsaId": UNITS["ambulans-syd"][0]},
            }
        )
    return out


# ---- long histories (history.py) ----------------------------------------------------------------

_LONG_DIAGNOSES = [  # (code, text, chronic)
    ("E11.9", "Typ 2-diabetes utan komplikationer", True),
    ("I50.9", "Hjärtsvikt, ospecificerad", True),
    ("N18.3", "Kronisk njursjukdom, stadium 3", True),
    ("I10", "Essentiell hypertoni", True),
    ("I48.9", "Förmaksflimmer, ospecificerat", True),
    ("E78.0", "Ren hyperkolesterolemi", True),
    ("J18.9", "Pneumoni, ospecificerad", False),
    ("N39.0", "Urinvägsinfektion utan angiven lokalisation", False),
    ("S52.5", "Fraktur på nedre delen av strålbenet", False),
    ("L03.1", "Cellulit i andra delar av extremitet", False),
]
_LONG_MEDS = [  # (atc, product, dosage)
    ("A10BA02", "Metformin 500 mg tablett", "1 tablett morgon och kväll"),
    ("C09AA05", "Ramipril 5 mg tablett", "1 tablett dagligen"),
    ("C07AB02", "Metoprolol 50 mg depottablett", "1 tablett morgon"),
    ("C03CA01", "Furosemid 40 mg tablett", "1 tablett morgon"),
    ("B01AF01", "Rivaroxaban 20 mg tablett", "1 tablett kväll"),
    ("C10AA01", "Simvastatin 20 mg tablett", "1 tablett kväll"),
    ("A10AE04", "Insulin glargin 100 E/ml injektionsvätska", "20 E subkutant till kvällen"),
    ("N02BE01", "Paracetamol 500 mg tablett", "2 tabletter vid behov, högst 4 gånger per dygn"),
    ("J01CE02", "Fenoximetylpenicillin 1 g tablett", "1 tablett 3 gånger dagligen i 10 dagar"),
]
_LONG_LABS = [  # npu, name, low and high of the values drawn, unit, reference low, high, decimals
    ("NPU02319", "B-Hemoglobin", 105, 160, "g/L", "117", "153", 0),
    ("NPU03429", "P-Kalium", 3.2, 5.4, "mmol/L", "3,5", "4,4", 1),
    ("NPU03230", "P-Natrium", 131, 146, "mmol/L", "137", "145", 0),
    ("NPU04998", "P-Kreatinin", 70, 190, "µmol/L", "45", "90", 0),
    ("NPU27300", "B-HbA1c", 42, 78, "mmol/mol", "27", "42", 0),
    ("NPU19748", "P-CRP", 1, 60, "mg/L", "0", "5", 0),
    ("NPU21571", "P-NT-proBNP", 150, 4500, "ng/L", "0", "300", 0),
]
_LONG_NOTES = [  # (noteType, title, text)
    ("DAILY", "Mottagningsbesök", "Uppföljning av diabetes och hjärtsvikt. Stabil. Fortsatt behandling."),
    ("DAILY", "Telefonkontakt", "Ringer angående provsvar. Informerad, ny kontroll om tre månader."),
    ("DAILY", "Daganteckning", "Inneliggande. Mår bättre, äter och dricker. Fortsatt diuretika."),
    ("ADMISSION", "Inskrivningsanteckning", "Inkommer med ökande andfåddhet och bensvullnad sedan en vecka."),
    ("DISCHARGE", "Epikris", "Vårdad för dekompenserad hjärtsvikt. Diuretika justerat. Återbesök planeras."),
]
_LONG_PROCEDURES = [*_PROCEDURES, ("DG017", "Elektrokonvertering av hjärtrytm"), ("TJD10", "Cystoskopi")]
_LONG_VACCINES = [
    ("J07BB02", "Influensavaccin, inaktiverat", "FLU"),
    ("J07AL02", "Pneumokockvaccin, konjugerat", "PNE"),
    ("J07BN01", "Covid-19-vaccin, mRNA", "COV"),
]
_SUBSTANCES = [  # (atc, name, reaction)
    ("J01EC02", "Sulfadiazin", "Hudutslag"),
    ("J01CE02", "Fenoximetylpenicillin", "Urtikaria"),
    ("N02BA01", "Acetylsalicylsyra", "Astmaanfall"),
    ("C09AA05", "Ramipril", "Torrhosta"),
]
_ALERTS = [
    "Behandlas med antikoagulantia (rivaroxaban): ökad blödningsrisk.",
    "Insulinbehandlad diabetes: risk för hypoglykemi.",
    "Pacemaker: ej MR utan kontroll.",
]
_DOCTORS = {
    "vc-norr": {"hsaId": "SE2321000016-L2VC", "name": "Bertil Distriktsläkare"},
    "akuten": {"hsaId": "SE2321000016-L1AK", "name": "Anna Akutläkare"},
    "med": {"hsaId": "SE2321000016-L5MED", "name": "Maria Medicinläkare"},
}


def _decimal(value: float, decimals: int) -> str:
    return f"{value:.{decimals}f}".replace(".", ",")


def _long(person: Person, history: Plan) -> dict[str, list[dict[str, Any]]]:
    """A long history in Cosmic: ``history.counts["cosmic"]`` records of each kind, seeded by the patient."""
    counts = history.counts.get("cosmic", {})
    rng = history.rng("cosmic")
    n = person.pnr[-6:]
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in (*KINDS, "threats")}
    for i in range(counts.get("diagnoses", 0)):
        code, text, chronic = _LONG_DIAGNOSES[i % len(_LONG_DIAGNOSES)]
        when = history.moment(rng)
        out["diagnoses"].append(
            {
                "diagnosisId": f"D-{n}H-{i + 1}",
                "icd10Code": code,
                "diagnosisText": text,
                "state": "ACT" if chronic and i < len(_LONG_DIAGNOSES) else "INACT",
                "diagnosisType": "MAIN" if i == 0 else "SECONDARY",
                "diagnosedAt": ts(when),
                "changedAt": ts(when),
                "careUnit": unit("vc-norr" if chronic else "akuten"),
                "sharedWithNpo": False,  # (no copies in NPÖ: each record one resource)
            }
        )
    for i in range(counts.get("carecontacts", 0)):
        where = rng.choice(["vc-norr", "vc-norr", "vc-norr", "akuten", "med"])
        kind = {"vc-norr": "OPEN", "akuten": "EMERGENCY", "med": "INPATIENT"}[where]
        stay = rng.randint(2, 9) if kind == "INPATIENT" else 0
        start = at(history.days_ago(rng, newest=stay + 1), rng.randint(8, 16), rng.choice((0, 15, 30, 45)))
        end = start + (
            timedelta(days=stay, hours=2) if stay else timedelta(minutes=rng.choice((30, 45, 180)))
        )
        contact: dict[str, Any] = {
            "contactId": f"C-{n}H-{i + 1}",
            "contactType": kind,
            "startAt": ts(start),
            "endAt": ts(end),
            "state": "FINISHED",
            "careUnit": unit(where),
        }
        if out["diagnoses"]:
            contact["reasonDiagnosisId"] = rng.choice(out["diagnoses"])["diagnosisId"]
        out["carecontacts"].append(contact)
    for i in range(counts.get("notes", 0)):
        note_type, title, text = rng.choice(_LONG_NOTES)
        where = {"ADMISSION": "med", "DISCHARGE": "med"}.get(note_type, rng.choice(["vc-norr", "med"]))
        out["notes"].append(
            {
                "noteId": f"N-{n}H-{i + 1}",
                "noteType": note_type,
                "title": title,
                "text": text,
                "signedAt": ts(history.moment(rng, 9, 17)),
                "signedBy": dict(_DOCTORS[where]),
                "state": "SIGNED" if rng.random() < 0.97 else "UNSIGNED",
                "careUnit": unit(where),
            }
        )
    labs = counts.get("labresults", 0)
    i = 0
    while i < labs:  # a sample taken at one visit, answered the same day: several analyses
        sampled = at(history.days_ago(rng), rng.randint(7, 11), rng.choice((0, 5, 10, 20, 35, 50)))
        resulted = sampled + timedelta(hours=rng.randint(2, 6))
        where = rng.choice(["vc-norr", "vc-norr", "med"])
        for npu, name, lo, hi, u, rlo, rhi, decimals in rng.sample(
            _LONG_LABS, min(labs - i, rng.randint(1, 5))
        ):
            value = _decimal(rng.uniform(lo, hi), decimals)
            out["labresults"].append(
                _lab_at(f"L-{n}H-{i + 1}", npu, name, value, u, rlo, rhi, sampled, resulted, where)
            )
            i += 1
    for i in range(counts.get("medications", 0)):
        atc, name, dosage = _LONG_MEDS[i % len(_LONG_MEDS)] if i < len(_LONG_MEDS) else rng.choice(_LONG_MEDS)
        days = history.days_ago(rng, newest=30)
        ended = i >= 4 and rng.random() < 0.6
        out["medications"].append(
            {
                "medicationId": f"M-{n}H-{i + 1}",
                "atcCode": atc,
                "productName": name,
                "dosageText": dosage,
                "startDate": day(at(days)),
                "endDate": day(at(rng.randint(1, days - 1))) if ended else None,
                "state": "ENDED" if ended else "ACTIVE",
                "changedAt": ts(at(days, 9, 0)),
                "careUnit": unit("vc-norr"),
            }
        )
    for i in range(counts.get("procedures", 0)):
        kva, text = rng.choice(_LONG_PROCEDURES)
        linked = rng.choice(out["carecontacts"]) if out["carecontacts"] else None
        when = (
            datetime.strptime(linked["startAt"], "%Y-%m-%d %H:%M") + timedelta(minutes=20)
            if linked
            else history.moment(rng)
        )
        where = (
            next(k for k, (hsa, _) in UNITS.items() if hsa == linked["careUnit"]["hsaId"])
            if linked
            else "med"
        )
        out["procedures"].append(
            procedure(
                f"P-{n}H-{i + 1}",
                kva,
                text,
                when,
                where,
                contact=linked["contactId"] if linked else None,
                state="PERFORMED" if rng.random() < 0.95 else "CANCELLED",
                shown=rng.random() < 0.9,
            )
        )
    for i in range(counts.get("vaccinations", 0)):
        atc, name, batch = rng.choice(_LONG_VACCINES)
        out["vaccinations"].append(
            {
                "vaccinationId": f"V-{n}H-{i + 1}",
                "atcCode": atc,
                "vaccineName": name,
                "administeredAt": ts(history.moment(rng, 9, 15)),
                "doseNumber": 1,
                "batchNumber": f"{batch}-{rng.randint(100, 999)}",
                "careUnit": unit("vc-norr"),
            }
        )
    for i in range(counts.get("alerts", 0)):
        when = history.moment(rng)
        if i % 3 == 2:  # an alert of another kind: a treatment to know of (a Flag)
            ended = rng.random() < 0.5
            out["alerts"].append(
                {
                    "alertId": f"A-{n}H-{i + 1}",
                    "alertKind": "ALERT",
                    "alertCode": "BEHANDLING",
                    "alertText": rng.choice(_ALERTS),
                    "validFrom": ts(when),
                    "validTo": ts(when + timedelta(days=rng.randint(30, 300))) if ended else None,
                    "state": "ENDED" if ended else "ACTIVE",
                    "changedAt": ts(when),
                    "careUnit": unit("med"),
                }
            )
            continue
        atc, substance, reaction = rng.choice(_SUBSTANCES)
        alert: dict[str, Any] = {
            "alertId": f"A-{n}H-{i + 1}",
            "alertKind": "HYPERSENSITIVITY",
            "alertCode": "LAKEMEDEL",
            "alertText": f"Överkänslighet mot {substance.lower()}.",
            "substanceAtc": atc,
            "substanceName": substance,
            "severity": rng.choice(["MILD", "MODERATE", "SEVERE"]),
            "certainty": rng.choice(["SUSPECTED", "CONFIRMED", None]),
            "reactionText": reaction,
            "validFrom": ts(when),
            "validTo": None,
            "state": "ACTIVE",
            "changedAt": ts(when),
            "careUnit": unit("vc-norr"),
        }
        out["alerts"].append({k: v for k, v in alert.items() if v is not None or k == "validTo"})
    for kind, (field, _) in DATE_FIELDS.items():  # newest first, as Cosmic lists them
        out[kind].sort(key=lambda r: str(r.get(field) or ""), reverse=True)
    return out


def patient_record(person: Person, seq: int) -> dict[str, Any]:
    street, zip_, city = person.address
    return {
        "patientId": f"CP-{100000 + seq}",
        "personalIdentityNumber": pnr_dash(person.pnr),
        "firstName": person.given,
        "lastName": person.family,
        "sex": "M" if person.gender == "male" else "F",
        "dateOfBirth": person.birth_date.isoformat(),
        "address": {"street": street, "zip": zip_, "city": city},
        "protectedIdentity": person.protected,
        "deceased": False,
        "lastChanged": ts(at(60, 8, 0)),
    }


Hand = dict[str, dict[str, list[Any]]]


def hand_records() -> Hand:
    """The named demo patients' records, ``data/cosmic/<name>.yaml`` (``proxy/simulators/records.py``)."""
    return hand_written("cosmic", ts, day)


def records_of(person: Person, hand: Hand, history: History | None = None) -> dict[str, list[Any]]:
    """One patient's records by kind: a data file's, a long history's (``history.py``), or the small
    seeded history of the generator above."""
    if person.pnr in hand:
        records = hand[person.pnr]
    elif (long := plan(person, history)) is not None:
        records = _long(person, long)
    else:
        records = _generated(person)
    return {k: list(records.get(k, [])) for k in (*KINDS, "threats")}


def entry_of(person: Person, seq: int, hand: Hand, history: History | None = None) -> dict[str, Any]:
    """One patient's database entry: {"patient": {...}, "<kind>": [records], "threats": [...]}."""
    assert person is not GRETA
    entry: dict[str, Any] = records_of(person, hand, history)
    entry["patient"] = patient_record(person, seq)
    return entry


def in_cosmic(people: Iterable[Person]) -> list[Person]:
    return [p for p in people if p.in_cosmic]


def build_data(people: list[Person], history: History | None = None) -> dict[str, dict[str, Any]]:
    """Cosmic's whole database at once: personnummer → entry (``entry_of``). The app makes each
    patient's entry when first asked (``create_app``); this is for tests and checks."""
    hand = hand_records()
    return {p.pnr: entry_of(p, seq, hand, history) for seq, p in enumerate(in_cosmic(people))}


def size(entry: dict[str, Any]) -> int:
    """Records in an entry (what the app's cache of generated patients is bounded by)."""
    return sum(len(entry[k]) for k in (*KINDS, "threats"))


def shared_with_npo(data: dict[str, dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Cosmic diagnoses the region also publishes to NPÖ (NPÖ's copy keeps Cosmic's record id)."""
    return {
        pnr: [d for d in entry["diagnoses"] if d.get("sharedWithNpo")]
        for pnr, entry in data.items()
        if any(d.get("sharedWithNpo") for d in entry["diagnoses"])
    }


# ---- the HTTP app -------------------------------------------------------------------------------


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"errorCode": code, "message": message, "status": status}, status=status)


PATIENTS_KEY = web.AppKey("patients", Patients)


def in_window(items: list[dict[str, Any]], kind: str, window: Window) -> list[dict[str, Any]]:
    if window.unbounded:
        return items
    start, end = DATE_FIELDS[kind] if kind in DATE_FIELDS else WRITTEN_ONLY[kind]
    return [r for r in items if window.admits(r.get(start), r.get(end) if end else None, lasting=bool(end))]


def _window(request: web.Request) -> Window:
    return Window.parse(request.query.get("fromDate"), request.query.get("toDate"))


# ---- writes (issue 22) --------------------------------------------------------------------------
# POST to a kind's path under the patient, Cosmic's formats. Checked whole before anything is kept:
# 400 MISSING_FIELD / INVALID_FORMAT, 404 PATIENT_NOT_FOUND, 422 UNKNOWN_CODE. The written record is
# listed by the kind's GET like any other, with the writer's ``careUnit`` and the writer's own id for
# it (``externalId``); a record may name the care contact it was made in by the contact's
# ``contactExternalId`` (``contactId`` is added when Cosmic holds that contact). Vital signs and
# administrations exist only as written records.

WRITE_CODES = Codes("MISSING_FIELD", "INVALID_FORMAT", "UNKNOWN_CODE")
TS = "%Y-%m-%d %H:%M"
CONTACT_TYPES = ("OPEN", "EMERGENCY", "INPATIENT", "HOME")
CONTACT_STATES = ("PLANNED", "ONGOING", "FINISHED", "CANCELLED")
NOTE_TYPES = ("ADMISSION", "DAILY", "DISCHARGE", "AMBULANCE", "NURSING")
# vital sign term → the unit Cosmic keeps it in (None: a coded value)
VITAL_UNITS: dict[str, str | None] = {
    "BP": "mmHg",
    "PULSE": "/min",
    "RESP_RATE": "/min",
    "TEMP": "Cel",
    "SPO2": "%",
    "ACVPU": None,
}
ACVPU = ("A", "C", "V", "P", "U")
ADMINISTRATION_STATES = ("GIVEN", "NOT_GIVEN")


def _written_unit(doc: dict[str, Any]) -> dict[str, str]:
    hsa = w.hsa_id(doc, "careUnit.hsaId", WRITE_CODES)
    provider = w.hsa_id(doc, "careUnit.providerHsaId", WRITE_CODES)
    assert hsa is not None and provider is not None
    return {"hsaId": hsa, "name": w.unit_name(hsa), "providerHsaId": provider}


def _person(doc: dict[str, Any], name: str) -> dict[str, str]:
    hsa = w.hsa_id(doc, f"{name}.hsaId", WRITE_CODES)
    assert hsa is not None
    return {"hsaId": hsa, "name": w.text(doc, f"{name}.name", WRITE_CODES, required=False, limit=200) or hsa}


class _Writes:
    """Cosmic's write handlers over one app's patients and written records."""

    def __init__(self, patients: Patients[dict[str, Any]], written: Written) -> None:
        self.patients = patients
        self.written = written

    def patient(self, request: web.Request) -> str:
        dashed = request.match_info["pnr"]
        pnr = dashed[:8] + dashed[9:]
        if len(dashed) != 13 or dashed[8] != "-" or pnr not in self.patients:
            raise Refused(404, "PATIENT_NOT_FOUND", "No patient with that identity number")
        return pnr

    def contact(self, pnr: str, doc: dict[str, Any]) -> dict[str, str]:
        ext = w.text(doc, "contactExternalId", WRITE_CODES, required=False, limit=64)
        if ext is None:
            return {}
        found = self.written.find(pnr, "carecontacts", "externalId", ext)
        return {"contactExternalId": ext, **({"contactId": found["contactId"]} if found else {})}

    def keep(self, pnr: str, kind: str, record: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        record = {k: v for k, v in record.items() if v is not None}
        self.written.add(pnr, kind, record)
        return 201, record

    def carecontacts(self, request: web.Request, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        pnr = self.patient(request)
        ext = w.text(doc, "externalId", WRITE_CODES, limit=64)
        kind = w.code(doc, "contactType", CONTACT_TYPES, WRITE_CODES)
        state = w.code(doc, "state", CONTACT_STATES, WRITE_CODES)
        start = w.timestamp(doc, "startAt", TS, WRITE_CODES)
        end = w.timestamp(doc, "endAt", TS, WRITE_CODES, required=False)
        if start is not None and end is not None and end < start:
            raise Refused(400, "INVALID_FORMAT", "endAt is before startAt")
        responsible = _person(doc, "responsible")
        unit_ = _written_unit(doc)
        record = {
            "contactId": f"CC-W{self.written.next_number()}",
            "contactType": kind,
            "state": state,
            "startAt": start,
            "endAt": end,
            "responsible": responsible,
            "careUnit": unit_,
            "externalId": ext,
        }
        return self.keep(pnr, "carecontacts", record)

    def vitalsigns(self, request: web.Request, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        pnr = self.patient(request)
        ext = w.text(doc, "externalId", WRITE_CODES, limit=64)
        term = w.code(doc, "term", VITAL_UNITS, WRITE_CODES)
        assert term is not None
        measured = w.timestamp(doc, "measuredAt", TS, WRITE_CODES)
        values: dict[str, Any] = {}
        if term == "BP":
            values["systolic"] = w.decimal(doc, "systolic", WRITE_CODES, comma=True)
            values["diastolic"] = w.decimal(doc, "diastolic", WRITE_CODES, comma=True)
        elif term == "ACVPU":
            values["value"] = w.code(doc, "value", ACVPU, WRITE_CODES)
        else:
            values["value"] = w.decimal(doc, "value", WRITE_CODES, comma=True)
        unit_ = VITAL_UNITS[term]
        if unit_ is not None:
            if w.text(doc, "unit", WRITE_CODES, limit=16) != unit_:
                raise Refused(422, "UNKNOWN_CODE", "unit: not the unit of this term")
            values["unit"] = unit_
        record = {
            "vitalSignId": f"VS-W{self.written.next_number()}",
            "term": term,
            **values,
            "measuredAt": measured,
            **self.contact(pnr, doc),
            "registeredBy": _person(doc, "registeredBy"),
            "careUnit": _written_unit(doc),
            "externalId": ext,
        }
        return self.keep(pnr, "vitalsigns", record)

    def notes(self, request: web.Request, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        pnr = self.patient(request)
        ext = w.text(doc, "externalId", WRITE_CODES, limit=64)
        note_type = w.code(doc, "noteType", NOTE_TYPES, WRITE_CODES)
        state = w.code(doc, "state", ("SIGNED", "UNSIGNED"), WRITE_CODES)
        record = {
            "noteId": f"N-W{self.written.next_number()}",
            "noteType": note_type,
            "title": w.text(doc, "title", WRITE_CODES, limit=200),
            "text": w.text(doc, "text", WRITE_CODES),
            "state": state,
            "signedAt": w.timestamp(doc, "signedAt", TS, WRITE_CODES),
            "signedBy": _person(doc, "signedBy"),
            "careUnit": _written_unit(doc),
            **self.contact(pnr, doc),
            "externalId": ext,
        }
        return self.keep(pnr, "notes", record)

    def administrations(self, request: web.Request, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        pnr = self.patient(request)
        ext = w.text(doc, "externalId", WRITE_CODES, limit=64)
        state = w.code(doc, "state", ADMINISTRATION_STATES, WRITE_CODES)
        given = state == "GIVEN"
        atc = w.text(doc, "atcCode", WRITE_CODES, limit=7)
        if (
            atc is None
            or len(atc) != 7
            or not (atc[0].isalpha() and atc[1:3].isdigit() and atc[5:].isdigit())
        ):
            raise Refused(400, "INVALID_FORMAT", "atcCode must be an ATC code (substance level)")
        record = {
            "administrationId": f"MA-W{self.written.next_number()}",
            "atcCode": atc,
            "drugName": w.text(doc, "drugName", WRITE_CODES, limit=200),
            "state": state,
            "administeredAt": w.timestamp(doc, "administeredAt", TS, WRITE_CODES),
            "dose": w.decimal(doc, "dose", WRITE_CODES, comma=True, required=given),
            "doseUnit": w.text(doc, "doseUnit", WRITE_CODES, required=given, limit=32),
            "notGivenReason": w.text(doc, "notGivenReason", WRITE_CODES, required=not given, limit=2000),
            "administeredBy": _person(doc, "administeredBy"),
            "careUnit": _written_unit(doc),
            **self.contact(pnr, doc),
            "externalId": ext,
        }
        if given and record["notGivenReason"] is not None:
            raise Refused(400, "INVALID_FORMAT", "notGivenReason is for a dose not given")
        return self.keep(pnr, "administrations", record)


WRITTEN_KEY = web.AppKey("written", Written)


def create_app(
    people: list[Person],
    faults: fault_mod.Faults | None = None,
    *,
    history: History | None = None,
    cached_records: int = DEFAULT_CACHED_RECORDS,
) -> web.Application:
    """The Cosmic app for ``people``: each patient's records made when first asked for
    (``proxy/simulators/lazy.py``), long histories per ``history``."""
    hand = hand_records()
    patients: Patients[dict[str, Any]] = Patients(
        in_cosmic(people), lambda p, seq: entry_of(p, seq, hand, history), size, cached_records
    )
    written = Written()

    def lookup(request: web.Request) -> dict[str, Any] | None:
        dashed = request.match_info["pnr"]
        if len(dashed) != 13 or dashed[8] != "-":  # (Cosmic writes yyyymmdd-nnnn, nothing else)
            return None
        return patients.get(dashed[:8] + dashed[9:])

    async def patient(request: web.Request) -> web.Response:
        entry = lookup(request)
        if entry is None:
            return _error(404, "PATIENT_NOT_FOUND", "No patient with that identity number")
        return web.json_response(entry["patient"])

    async def records(request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        if kind not in KINDS and kind not in WRITTEN_ONLY:
            return _error(404, "RESOURCE_NOT_FOUND", "Unknown resource")
        try:
            window = _window(request)
        except ValueError as exc:
            return _error(400, "INVALID_PARAMETER", f"fromDate/toDate: {exc}")
        entry = lookup(request)
        if entry is None:
            return _error(404, "PATIENT_NOT_FOUND", "No patient with that identity number")
        pnr = entry["patient"]["personalIdentityNumber"].replace("-", "")
        items = in_window([*written.of(pnr, kind), *entry.get(kind, [])], kind, window)
        return web.json_response(
            {"patientId": entry["patient"]["patientId"], "items": items, "totalCount": len(items)}
        )

    async def threats(request: web.Request) -> web.Response:
        try:
            window = _window(request)
        except ValueError as exc:
            return _error(400, "INVALID_PARAMETER", f"fromDate/toDate: {exc}")
        entry = lookup(request)
        if entry is None:
            return _error(404, "PATIENT_NOT_FOUND", "No patient with that identity number")
        items = in_window(entry["threats"], "threats", window)
        return web.json_response({"items": items, "totalCount": len(items)})

    app = web.Application()
    app[PATIENTS_KEY] = patients
    app[WRITTEN_KEY] = written
    stats.install(app)
    fault_mod.install(
        app, faults or fault_mod.Faults(), lambda s: _error(s, "SERVER_ERROR", "Injected error")
    )
    app.router.add_get(BASE + "/patients/{pnr}", patient)
    app.router.add_get(BASE + "/patients/{pnr}/{kind}", records)
    app.router.add_get(BASE + "/ambulance/patients/{pnr}/threats", threats)
    writes = _Writes(patients, written)
    for kind, handle in (
        ("carecontacts", writes.carecontacts),
        ("vitalsigns", writes.vitalsigns),
        ("notes", writes.notes),
        ("administrations", writes.administrations),
    ):
        app.router.add_post(
            f"{BASE}/patients/{{pnr}}/{kind}",
            w.endpoint(written, handle, _error, "IDEMPOTENCY_KEY_REUSED", "INVALID_REQUEST"),
        )
    return app


SYSTEM_HSA_ID = COSMIC_SYSTEM
