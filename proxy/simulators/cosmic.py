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
  other procedures) to look real, not checked against an edition of KVÅ.
"""

from __future__ import annotations

import random
from datetime import datetime
from typing import Any

from aiohttp import web

from proxy.simulators import faults as fault_mod
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


def ts(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%d %H:%M")


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
        "sampledAt": ts(at(days, 8, 5)),
        "resultAt": ts(at(days, 14, 30)),
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


def build_data(people: list[Person]) -> dict[str, dict[str, Any]]:
    """Cosmic's database: personnummer → {"patient": {...}, "<kind>": [records], "threats": [...]}.

    The named demo patients' records are data files (``data/cosmic/<name>.yaml``, see
    ``proxy/simulators/records.py``); everyone else's come from the seeded generator here."""
    hand = hand_written("cosmic", ts, lambda dt: dt.strftime("%Y-%m-%d"))  # data/cosmic/*.yaml
    data: dict[str, dict[str, Any]] = {}
    for seq, person in enumerate(p for p in people if p.in_cosmic):
        assert person is not GRETA
        records = hand[person.pnr] if person.pnr in hand else _generated(person)
        entry: dict[str, Any] = {k: list(records.get(k, [])) for k in (*KINDS, "threats")}
        entry["patient"] = patient_record(person, seq)
        data[person.pnr] = entry
    return data


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


def create_app(people: list[Person], faults: fault_mod.Faults | None = None) -> web.Application:
    data = build_data(people)
    by_dash = {pnr_dash(p): p for p in data}

    def lookup(request: web.Request) -> dict[str, Any] | None:
        return data.get(by_dash.get(request.match_info["pnr"], ""), None)

    async def patient(request: web.Request) -> web.Response:
        entry = lookup(request)
        if entry is None:
            return _error(404, "PATIENT_NOT_FOUND", "No patient with that identity number")
        return web.json_response(entry["patient"])

    async def records(request: web.Request) -> web.Response:
        kind = request.match_info["kind"]
        if kind not in KINDS:
            return _error(404, "RESOURCE_NOT_FOUND", "Unknown resource")
        entry = lookup(request)
        if entry is None:
            return _error(404, "PATIENT_NOT_FOUND", "No patient with that identity number")
        items = entry[kind]
        return web.json_response(
            {"patientId": entry["patient"]["patientId"], "items": items, "totalCount": len(items)}
        )

    async def threats(request: web.Request) -> web.Response:
        entry = lookup(request)
        if entry is None:
            return _error(404, "PATIENT_NOT_FOUND", "No patient with that identity number")
        return web.json_response({"items": entry["threats"], "totalCount": len(entry["threats"])})

    app = web.Application()
    fault_mod.install(
        app, faults or fault_mod.Faults(), lambda s: _error(s, "SERVER_ERROR", "Injected error")
    )
    app.router.add_get(BASE + "/patients/{pnr}", patient)
    app.router.add_get(BASE + "/patients/{pnr}/{kind}", records)
    app.router.add_get(BASE + "/ambulance/patients/{pnr}/threats", threats)
    return app


SYSTEM_HSA_ID = COSMIC_SYSTEM
