"""Viva stand-in: the municipality's home-care record (kommunal hemsjukvård och hemtjänst).

Dialect (deliberately unlike Cosmic and unlike FHIR):

* JSON with Swedish field names; one GET endpoint per kind under ``/viva/api/v2/``, the person given
  as a query parameter: ``?personnummer=191212121212`` (12 digits, no dash);
* ``brukare`` (the person), ``vardplaner`` (care plans), ``funktionsbedomningar`` (ADL / functional
  status with ICF codes and qualifiers 0–4), ``anteckningar`` (notes, each under a law: ``HSL`` health
  care or ``SoL`` social care), ``lakemedelslista`` (medication list with administrations),
  ``hembesok`` (home visits) and ``beslut`` (social-care decisions under SoL — served, never mapped);
* answers are ``{"<kind>": [...]}`` — and for an unknown person **200** with ``{"brukare": null}`` or
  an empty list, never 404;
* a missing or malformed personnummer is ``400`` with ``{"fel": {"kod", "meddelande"}}``, as are
  injected faults;
* dates are compact ``YYYYMMDD``, timestamps ``YYYYMMDDHHMM``, local time;
* codes of its own: ``AKTIV``/``AVSLUTAD``/``UTKAST`` (care plans), ``AKTUELL``/``UTSATT``
  (medication), ``GIVEN``/``EJ_GIVEN``/``VAGRAT`` (administrations, with reasons ``EJ_HEMMA``/``SOVER``/
  ``KRAKNING`` for a dose not given), ``UTFORT``/``PLANERAT``/``INSTALLT``
  (visits), ``HEMSJUKVARD``/``HEMTJANST`` (visit type), ``man``/``kvinna``, ``J``/``N``;
* every list endpoint takes an optional date range, ``&fromDatum=20240101&tomDatum=20241231``
  ("från och med", "till och med": ``YYYYMMDD`` or ``YYYYMMDDHHMM``, inclusive, either may be left out;
  a malformed one is ``400`` ``OGILTIGT_DATUM``): the records dated in it, by ``DATE_FIELDS`` (a
  period overlapping the range for one that lasts, ``proxy/simulators/window.py``); on the
  medication list, the ordinations whose period overlaps it, each with only the administrations
  given in it;
* writes (issue 22): ``POST`` to ``hembesok``, ``matvarden`` (vital signs), ``anteckningar`` and
  ``administreringar`` (doses without an ordination), the person in the body, checked whole (``400``
  / ``422`` with ``fel``; nothing kept), ``Idempotency-Key`` honoured; the record is listed by the
  kind's GET with the writer's ``enhet`` and ``externtId`` (see "writes" below, ``writes.py``).
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from typing import Any

import orjson
from aiohttp import web

from proxy.simulators import faults as fault_mod
from proxy.simulators import stats
from proxy.simulators import writes as w
from proxy.simulators.history import History, Plan, plan
from proxy.simulators.lazy import DEFAULT_CACHED_RECORDS, Patients
from proxy.simulators.population import (
    MUNICIPALITY_PROVIDER,
    UNITS,
    VIVA_SYSTEM,
    Person,
    at,
)
from proxy.simulators.records import hand_written
from proxy.simulators.window import Window
from proxy.simulators.writes import Codes, Refused, Written

BASE = "/viva/api/v2"
# endpoint (= top-level key of its answer) → record kind in the database
KINDS = ("vardplaner", "funktionsbedomningar", "anteckningar", "lakemedelslista", "hembesok", "beslut")

SOL_LAGRUM = "SoL 4 kap. 1 §"

# What a date range filters each list by: (field, None) for a record made at one moment, (start,
# end) for one that lasts (overlapping the range; no end: still going). The medication list's
# administrations are filtered by ``tidpunkt`` inside the ordinations kept.
DATE_FIELDS: dict[str, tuple[str, str | None]] = {
    "vardplaner": ("startdatum", "slutdatum"),
    "funktionsbedomningar": ("datum", None),
    "anteckningar": ("datum", None),
    "lakemedelslista": ("startdatum", "utsattDatum"),
    "hembesok": ("start", "slut"),
    "beslut": ("beslutsdatum", None),
    "matvarden": ("tidpunkt", None),  # (written records only: see "writes" below)
    "administreringar": ("tidpunkt", None),
}


def ts(dt: datetime) -> str:
    """Viva's compact local timestamp ``YYYYMMDDHHMM``."""
    return dt.strftime("%Y%m%d%H%M")


def day(dt: datetime) -> str:
    """Viva's compact date ``YYYYMMDD``."""
    return dt.strftime("%Y%m%d")


def enhet() -> dict[str, str]:
    hsa, name = UNITS["hemsjukvard"]
    return {"hsaId": hsa, "namn": name, "vardgivareHsaId": MUNICIPALITY_PROVIDER}


# Staff of the home-care unit (invented HSA-ids in the municipality's series).
SSK = {"namn": "Sara Sjuksköterska", "hsaId": "SE2120001520-SSK1"}
SSK2 = {"namn": "Sven Sjuksköterska", "hsaId": "SE2120001520-SSK2"}
AT = {"namn": "Anna Arbetsterapeut", "hsaId": "SE2120001520-AT01"}
FT = {"namn": "Fredrik Fysioterapeut", "hsaId": "SE2120001520-FT01"}
BISTAND = {"namn": "Berit Biståndshandläggare", "hsaId": "SE2120001520-BH01"}
USK = "Ulla Undersköterska"
USK2 = "Omar Undersköterska"

ADL_AREAS = {
    "d410": "Ändra grundläggande kroppsställning",
    "d420": "Förflytta sig",
    "d450": "Gå",
    "d465": "Röra sig omkring med hjälpmedel",
    "d510": "Tvätta sig",
    "d520": "Kroppsvård",
    "d530": "Sköta toalettbehov",
    "d540": "Klä sig",
    "d550": "Äta",
    "d560": "Dricka",
}


# ---- record builders ----------------------------------------------------------------------------


def _plan(
    pid: str,
    titel: str,
    beskrivning: str,
    status: str,
    start: datetime,
    slut: datetime | None,
    insatser: list[tuple[str, str]],
    av: dict[str, str],
    changed: datetime,
) -> dict[str, Any]:
    return {
        "planId": pid,
        "titel": titel,
        "beskrivning": beskrivning,
        "status": status,
        "startdatum": day(start),
        "slutdatum": day(slut) if slut else None,
        "insatser": [
            {"insatsId": f"{pid}-I{i + 1}", "text": text, "frekvens": frekvens}
            for i, (text, frekvens) in enumerate(insatser)
        ],
        "upprattadAv": dict(av),
        "enhet": enhet(),
        "senastAndrad": ts(changed),
    }


def _adl(
    bid: str, when: datetime, omrade: str, niva: int, beskrivning: str, av: dict[str, str]
) -> dict[str, Any]:
    return {
        "bedomningId": bid,
        "datum": ts(when),
        "omrade": omrade,
        "omradesText": ADL_AREAS[omrade],
        "niva": niva,
        "beskrivning": beskrivning,
        "bedomdAv": dict(av),
        "enhet": enhet(),
        "senastAndrad": ts(when),
    }


def _note(
    aid: str, when: datetime, rubrik: str, text: str, lagrum: str, av: dict[str, str]
) -> dict[str, Any]:
    return {
        "anteckningId": aid,
        "datum": ts(when),
        "rubrik": rubrik,
        "text": text,
        "lagrum": lagrum,
        "signeradAv": dict(av),
        "enhet": enhet(),
        "senastAndrad": ts(when),
    }


Administration = tuple[datetime, str, str] | tuple[datetime, str, str, dict[str, str]]


def _med(
    oid: str,
    atc: str,
    preparat: str,
    dosering: str,
    start: datetime,
    utsatt: datetime | None,
    administreringar: Sequence[Administration],
    dos: str = "1 tablett",
) -> dict[str, Any]:
    """An ordination with its signed administrations. Each administration is a record of its own
    (``administreringId``) naming its ordination, the drug and the unit that signed it; a given one
    carries the dose given (``dos``), one not given may carry a reason code (``orsak``) and a
    comment (``kommentar``). The dose given is also given as an amount and a unit
    (``dosMangd``, ``dosEnhet``), as Viva's dose fields hold it."""
    amount, _, unit = dos.partition(" ")
    out = []
    for i, (t, who, status, *extra) in enumerate(administreringar):
        a: dict[str, Any] = {
            "administreringId": f"{oid}-A{i + 1}",
            "ordinationId": oid,
            "tidpunkt": ts(t),
            "signerad": ts(t + timedelta(minutes=2)),
            "givenAv": who,
            "status": status,
            "atc": atc,
            "preparat": preparat,
            "dos": dos if status == "GIVEN" else None,
            "dosMangd": amount if status == "GIVEN" else None,
            "dosEnhet": unit if status == "GIVEN" else None,
            "enhet": enhet(),
        }
        for more in extra:
            a.update(more)
        out.append(a)
    return {
        "ordinationId": oid,
        "atc": atc,
        "preparat": preparat,
        "dosering": dosering,
        "status": "UTSATT" if utsatt else "AKTUELL",
        "startdatum": day(start),
        "utsattDatum": day(utsatt) if utsatt else None,
        "administreringar": out,
        "enhet": enhet(),
        "senastAndrad": ts(max([start, *(a[0] for a in administreringar)])),
    }


def _visit(
    vid: str, start: datetime, minutes: int, besokstyp: str, utforare: str, status: str
) -> dict[str, Any]:
    end = start + timedelta(minutes=minutes)
    return {
        "besokId": vid,
        "start": ts(start),
        "slut": ts(end),
        "besokstyp": besokstyp,
        "utforare": utforare,
        "status": status,
        "enhet": enhet(),
    }


def _decision(bid: str, insats: str, when: datetime, text: str) -> dict[str, Any]:
    return {
        "beslutId": bid,
        "lagrum": SOL_LAGRUM,
        "insats": insats,
        "beslutsdatum": day(when),
        "text": text,
        "handlaggare": dict(BISTAND),
        "senastAndrad": ts(when),
    }


# ---- the hand-written demo records --------------------------------------------------------------


# ---- generated people ---------------------------------------------------------------------------

_PLANS = [
    (
        "Vårdplan hemsjukvård – diabetes",
        "Blodsockerkontroller och insulinadministrering.",
        [("Blodsockerkontroll", "morgon och kväll"), ("Insulinadministrering", "dagligen")],
    ),
    (
        "Vårdplan hemsjukvård – sårvård",
        "Omläggning av bensår enligt ordination.",
        [("Omläggning av bensår", "3 gånger per vecka"), ("Sårbedömning med foto", "1 gång per vecka")],
    ),
    (
        "Vårdplan hemsjukvård – läkemedel",
        "Läkemedelsadministrering från dosett.",
        [("Dosettdelning", "1 gång per vecka"), ("Läkemedelsadministrering", "dagligen")],
    ),
    (
        "Vårdplan hemsjukvård – fallprevention",
        "Balansträning och hjälpmedelsöversyn.",
        [("Balansträning", "2 gånger per vecka"), ("Översyn av hjälpmedel", "1 gång per månad")],
    ),
]
_ADL_TEXT = [
    "Klarar aktiviteten själv.",
    "Klarar aktiviteten med tillsyn.",
    "Behöver viss hjälp.",
    "Behöver mycket hjälp.",
    "Utförs helt av personal.",
]
_HSL_NOTES = [
    ("Hembesök hemsjukvård", "Kontroll utan anmärkning. Fortsatt enligt vårdplan."),
    ("Läkemedelsgenomgång", "Läkemedelslistan stämd av mot dosett. Inga avvikelser."),
    ("Sårvård", "Omläggning utförd. Såret läker, ingen rodnad."),
]
_VIVA_MEDS = [
    ("C09AA05", "Ramipril 5 mg tablett", "1 tablett morgon"),
    ("A10BA02", "Metformin 500 mg tablett", "1 tablett morgon och kväll"),
    ("N02BE01", "Paracetamol 500 mg tablett", "2 tabletter vid behov, högst 3 gånger dagligen"),
    ("C03CA01", "Furosemid 40 mg tablett", "1 tablett morgon"),
    ("B01AF01", "Rivaroxaban 20 mg tablett", "1 tablett kväll"),
]


def _generated(person: Person, seq: int) -> dict[str, list[dict[str, Any]]]:
    rng = random.Random(f"{person.rng_seed}:viva")
    n = 100000 + seq
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    titel, beskrivning, insatser = rng.choice(_PLANS)
    start = rng.randint(30, 1500)
    ended = rng.random() < 0.2
    out["vardplaner"].append(
        _plan(
            f"VP-{n}-1",
            titel,
            beskrivning,
            "AVSLUTAD" if ended else rng.choice(["AKTIV", "AKTIV", "AKTIV", "UTKAST"]),
            at(start),
            at(start // 2) if ended else None,
            insatser,
            rng.choice([SSK, SSK2]),
            at(rng.randint(1, start), rng.randint(8, 17), rng.choice([0, 15, 30, 45])),
        )
    )
    for i, omrade in enumerate(rng.sample(sorted(ADL_AREAS), rng.randint(2, 5))):
        niva = rng.randint(0, 4)
        when = at(rng.randint(1, 900), rng.randint(8, 16), rng.choice([0, 20, 40]))
        out["funktionsbedomningar"].append(
            _adl(f"FB-{n}-{i + 1}", when, omrade, niva, _ADL_TEXT[niva], rng.choice([AT, FT]))
        )
    # SoL documentation is a series of its own (SOL-, HT-): the shared records' ids have no gaps
    sol = hsl = 0
    for i in range(rng.randint(1, 3)):
        when = at(rng.randint(1, 900), rng.randint(8, 18), rng.choice([0, 10, 30, 50]))
        if rng.random() < 0.35:
            sol += 1
            out["anteckningar"].append(
                _note(
                    f"SOL-{n}-{sol}",
                    when,
                    "Biståndsbedömning",
                    "Biståndsbeslut hemtjänst SoL-anteckning: beviljas hjälp med inköp.",
                    "SoL",
                    BISTAND,
                )
            )
            out["beslut"].append(
                _decision(f"BE-{n}-{i + 1}", "Hemtjänst: inköp", when, "Beviljas hjälp med inköp.")
            )
        else:
            rubrik, text = rng.choice(_HSL_NOTES)
            hsl += 1
            out["anteckningar"].append(
                _note(f"AN-{n}-{hsl}", when, rubrik, text, "HSL", rng.choice([SSK, SSK2]))
            )
    for i, (atc, preparat, dosering) in enumerate(rng.sample(_VIVA_MEDS, rng.randint(0, 3))):
        start = rng.randint(10, 1200)
        stopped = rng.random() < 0.25
        last = start // 2 if stopped else 0
        given = [
            (
                at(d, 8, rng.choice([0, 5, 10, 20])),
                rng.choice([USK, USK2]),
                rng.choice(["GIVEN"] * 8 + ["EJ_GIVEN"]),
            )
            for d in range(last + rng.randint(0, 3), last - 1, -1)
        ]
        out["lakemedelslista"].append(
            _med(
                f"OR-{n}-{i + 1}",
                atc,
                preparat,
                dosering,
                at(start),
                at(last) if stopped else None,
                given,
                " ".join(dosering.split(" ")[:2]),  # "1 tablett", "2 tabletter": the dose given
            )
        )
    series = {"HEMSJUKVARD": "HB", "HEMTJANST": "HT"}  # home help (SoL) numbered apart
    counts = dict.fromkeys(series.values(), 0)
    for _ in range(rng.randint(1, 6)):
        days = rng.randint(-7, 700)
        when = at(days, rng.randint(7, 20), rng.choice([0, 15, 30, 45]))  # (the same draws, in order)
        minutes = rng.choice([15, 30, 45, 60])
        besokstyp = rng.choice(["HEMSJUKVARD", "HEMSJUKVARD", "HEMTJANST"])
        utforare = rng.choice(["Sara Sjuksköterska", "Sven Sjuksköterska", "Hemtjänstgrupp Norr"])
        status = "PLANERAT" if days < 0 else rng.choice(["UTFORT"] * 9 + ["INSTALLT"])
        counts[series[besokstyp]] += 1
        vid = f"{series[besokstyp]}-{n}-{counts[series[besokstyp]]}"
        out["hembesok"].append(_visit(vid, when, minutes, besokstyp, utforare, status))
    return out


# ---- long histories (history.py) ----------------------------------------------------------------

_LONG_ADL = [  # (area, level, text)
    (area, niva, _ADL_TEXT[niva]) for area in ("d450", "d510", "d540", "d550", "d420") for niva in (1, 2, 3)
]


def _long(person: Person, history: Plan) -> dict[str, list[dict[str, Any]]]:
    """A long history in Viva: ``history.counts["viva"]`` records of each kind, seeded by the patient;
    only what the mappings share (HSL notes, home health-care visits: no SoL documentation)."""
    counts = history.counts.get("viva", {})
    rng = history.rng("viva")
    n = person.pnr[-6:]
    span = history.years * 365
    out: dict[str, list[dict[str, Any]]] = {k: [] for k in KINDS}
    for i in range(counts.get("vardplaner", 0)):
        titel, beskrivning, insatser = _PLANS[i % len(_PLANS)]
        start = history.days_ago(rng, newest=10)
        ended = i >= len(_PLANS) or rng.random() < 0.3
        out["vardplaner"].append(
            _plan(
                f"VP-{n}H-{i + 1}",
                titel,
                beskrivning,
                "AVSLUTAD" if ended else "AKTIV",
                at(start),
                at(rng.randint(1, start - 1)) if ended else None,
                insatser,
                rng.choice([SSK, SSK2]),
                at(start, 10, 0),
            )
        )
    for i in range(counts.get("funktionsbedomningar", 0)):
        omrade, niva, text = rng.choice(_LONG_ADL)
        out["funktionsbedomningar"].append(
            _adl(f"FB-{n}H-{i + 1}", history.moment(rng), omrade, niva, text, rng.choice([AT, FT]))
        )
    for i in range(counts.get("anteckningar", 0)):
        rubrik, text = rng.choice(_HSL_NOTES)
        out["anteckningar"].append(
            _note(
                f"AN-{n}H-{i + 1}", history.moment(rng, 7, 20), rubrik, text, "HSL", rng.choice([SSK, SSK2])
            )
        )
    for i in range(counts.get("hembesok", 0)):
        visit = history.moment(rng, 7, 20)
        status = "UTFORT" if rng.random() < 0.95 else "INSTALLT"
        who = rng.choice(["Sara Sjuksköterska", "Sven Sjuksköterska"])
        out["hembesok"].append(
            _visit(f"HB-{n}H-{i + 1}", visit, rng.choice([15, 30, 45]), "HEMSJUKVARD", who, status)
        )
    # ordinations, each with a run of daily administrations inside its period
    orders, doses = counts.get("lakemedelslista", 0), counts.get("administreringar", 0)
    if orders == 0 and doses:  # (administrations need an ordination to sit in)
        orders, doses = 1, doses - 1
    shares = [doses // orders + (1 if k < doses % orders else 0) for k in range(orders)] if orders else []
    for i, given in enumerate(shares):
        atc, preparat, dosering = _VIVA_MEDS[i % len(_VIVA_MEDS)]
        first = rng.randint(given + 1, max(given + 1, span))  # the first dose, days back
        stopped = rng.random() < 0.5 and first - given > 1
        last = first - given + 1  # the last dose, days back
        administrations = [
            (
                at(d, 8, rng.choice([0, 5, 10, 20])),
                rng.choice([USK, USK2]),
                rng.choice(["GIVEN"] * 19 + ["EJ_GIVEN"]),
            )
            for d in range(first, last - 1, -1)
        ]
        out["lakemedelslista"].append(
            _med(
                f"OR-{n}H-{i + 1}",
                atc,
                preparat,
                dosering,
                at(first),
                at(last - 1) if stopped else None,
                administrations,
                " ".join(dosering.split(" ")[:2]),
            )
        )
    for kind, field in (("funktionsbedomningar", "datum"), ("anteckningar", "datum"), ("hembesok", "start")):
        out[kind].sort(key=lambda r: str(r[field]), reverse=True)
    return out


def brukare_record(person: Person, seq: int) -> dict[str, Any]:
    street, zip_, city = person.address
    return {
        "brukarId": f"BR-{100000 + seq}",
        "personnummer": person.pnr,
        "fornamn": person.given,
        "efternamn": person.family,
        "kon": "man" if person.gender == "male" else "kvinna",
        "adress": {"gatuadress": street, "postnummer": zip_, "postort": city},
        "telefon": f"08-{500000 + seq * 37 % 500000:06d}",
        "skyddadIdentitet": "J" if person.protected else "N",
        "senastAndrad": ts(at(30 + seq % 200, 9, 0)),
    }


Hand = dict[str, dict[str, list[Any]]]


def hand_records() -> Hand:
    """The named demo patients' records, ``data/viva/<name>.yaml`` (``proxy/simulators/records.py``)."""
    return hand_written("viva", ts, day)


def entry_of(person: Person, seq: int, hand: Hand, history: History | None = None) -> dict[str, Any]:
    """One person's database entry, {"brukare": {...}, "<kind>": [records]}: a data file's records, a
    long history's (``history.py``), or the small seeded history of the generator above."""
    if person.pnr in hand:
        records = hand[person.pnr]
    elif (long := plan(person, history)) is not None:
        records = _long(person, long)
    else:
        records = _generated(person, seq)
    entry: dict[str, Any] = {k: list(records.get(k, [])) for k in KINDS}
    entry["brukare"] = brukare_record(person, seq)
    return entry


def in_viva(people: Iterable[Person]) -> list[Person]:
    return [p for p in people if p.in_viva]


def build_data(people: list[Person], history: History | None = None) -> dict[str, dict[str, Any]]:
    """Viva's whole database at once: personnummer → entry (``entry_of``) for people in Viva. The
    app makes each person's entry when first asked (``create_app``); this is for tests and checks."""
    hand = hand_records()
    return {p.pnr: entry_of(p, seq, hand, history) for seq, p in enumerate(in_viva(people))}


def size(entry: dict[str, Any]) -> int:
    """Records in an entry, administrations included (what the app's cache is bounded by)."""
    meds = sum(len(o["administreringar"]) for o in entry["lakemedelslista"])
    return meds + sum(len(entry[k]) for k in KINDS)


def in_window(items: list[dict[str, Any]], kind: str, window: Window) -> list[dict[str, Any]]:
    if window.unbounded:
        return items
    start, end = DATE_FIELDS[kind]
    kept = [r for r in items if window.admits(r.get(start), r.get(end) if end else None, lasting=bool(end))]
    if kind != "lakemedelslista":
        return kept
    return [
        {**o, "administreringar": [a for a in o["administreringar"] if window.admits(a.get("tidpunkt"))]}
        for o in kept
    ]


# ---- the HTTP app -------------------------------------------------------------------------------


def _json(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _error(status: int, kod: str, meddelande: str) -> web.Response:
    return _json({"fel": {"kod": kod, "meddelande": meddelande, "status": status}}, status)


PATIENTS_KEY = web.AppKey("patients", Patients)
WRITTEN_KEY = web.AppKey("written", Written)


# ---- writes (issue 22) --------------------------------------------------------------------------
# POST to a kind's own path, the person in the body (``personnummer``), Viva's formats. Checked whole
# before anything is kept; 400 for a missing or malformed field, 422 for an unknown person or code.
# The written record is listed by the kind's GET like any other, with the writer's ``enhet`` and the
# writer's own id for it (``externtId``); a record may name the visit it was made at by the visit's
# ``besokExterntId`` (``besokId`` is added when Viva holds that visit). Vital signs (``matvarden``) and
# administrations without an ordination (``administreringar``: the mobile journal does not know
# Viva's ordinations) exist only as written records, each kind at its own GET.

WRITE_CODES = Codes("OBLIGATORISKT_FALT_SAKNAS", "OGILTIGT_FORMAT", "OKAND_KOD")
WRITTEN_ONLY = ("matvarden", "administreringar")
TS = "%Y%m%d%H%M"
BESOK_STATUS = ("UTFORT", "PLANERAT", "INSTALLT", "PAGAENDE")
BESOKSTYP = ("HEMSJUKVARD", "HEMTJANST")
LAGRUM = ("HSL", "SoL")
# vital sign type → the unit Viva keeps it in (None: a code, not a number)
MATVARDE_ENHET: dict[str, str | None] = {
    "BLODTRYCK": "mmHg",
    "PULS": "/min",
    "ANDNINGSFREKVENS": "/min",
    "TEMPERATUR": "°C",
    "SATURATION": "%",
    "MEDVETANDEGRAD": None,
}
ACVPU = ("A", "C", "V", "P", "U")  # alert, confusion, voice, pain, unresponsive
ADMINISTRERING_STATUS = ("GIVEN", "EJ_GIVEN", "VAGRAT")
ORSAK = ("EJ_HEMMA", "SOVER", "KRAKNING")
_ATC = re.compile(r"[A-Z][0-9]{2}[A-Z]{2}[0-9]{2}")


def _written_enhet(doc: dict[str, Any]) -> dict[str, str]:
    hsa = w.hsa_id(doc, "enhet.hsaId", WRITE_CODES)
    provider = w.hsa_id(doc, "enhet.vardgivareHsaId", WRITE_CODES)
    assert hsa is not None and provider is not None
    return {"hsaId": hsa, "namn": w.unit_name(hsa), "vardgivareHsaId": provider}


def _signer(doc: dict[str, Any], name: str) -> dict[str, str]:
    hsa = w.hsa_id(doc, f"{name}.hsaId", WRITE_CODES)
    assert hsa is not None
    return {"namn": w.text(doc, f"{name}.namn", WRITE_CODES, required=False, limit=200) or hsa, "hsaId": hsa}


class _Writes:
    """Viva's write handlers over one app's patients and written records."""

    def __init__(self, patients: Patients[dict[str, Any]], written: Written) -> None:
        self.patients = patients
        self.written = written

    def person(self, doc: dict[str, Any]) -> str:
        pnr = w.text(doc, "personnummer", WRITE_CODES, limit=64)
        assert pnr is not None
        if len(pnr) != 12 or not pnr.isascii() or not pnr.isdigit():
            raise Refused(400, "OGILTIGT_PERSONNUMMER", "Personnummer ska anges med 12 siffror")
        if pnr not in self.patients:
            raise Refused(422, "OKAND_BRUKARE", "Ingen brukare med det personnumret")
        return pnr

    def visit(self, pnr: str, doc: dict[str, Any]) -> dict[str, str]:
        """``besokExterntId``: the visit it was made at (and Viva's ``besokId`` for it, when held)."""
        ext = w.text(doc, "besokExterntId", WRITE_CODES, required=False, limit=64)
        if ext is None:
            return {}
        found = self.written.find(pnr, "hembesok", "externtId", ext)
        return {"besokExterntId": ext, **({"besokId": found["besokId"]} if found else {})}

    def keep(self, pnr: str, kind: str, record: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.written.add(pnr, kind, record)
        return 201, record

    def hembesok(self, request: web.Request, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        pnr = self.person(doc)
        ext = w.text(doc, "externtId", WRITE_CODES, limit=64)
        start = w.timestamp(doc, "start", TS, WRITE_CODES)
        slut = w.timestamp(doc, "slut", TS, WRITE_CODES, required=False)
        if slut is not None and start is not None and slut < start:
            raise Refused(400, "OGILTIGT_FORMAT", "slut är före start")
        besokstyp = w.code(doc, "besokstyp", BESOKSTYP, WRITE_CODES)
        status = w.code(doc, "status", BESOK_STATUS, WRITE_CODES)
        utforare = w.text(doc, "utforare", WRITE_CODES, limit=200)
        enhet = _written_enhet(doc)
        n = self.written.next_number()
        prefix = "HB" if besokstyp == "HEMSJUKVARD" else "HT"
        record = {
            "besokId": f"{prefix}-W{n}",
            "start": start,
            "slut": slut,
            "besokstyp": besokstyp,
            "utforare": utforare,
            "status": status,
            "enhet": enhet,
            "externtId": ext,
        }
        return self.keep(pnr, "hembesok", record)

    def matvarden(self, request: web.Request, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        pnr = self.person(doc)
        ext = w.text(doc, "externtId", WRITE_CODES, limit=64)
        tidpunkt = w.timestamp(doc, "tidpunkt", TS, WRITE_CODES)
        typ = w.code(doc, "typ", MATVARDE_ENHET, WRITE_CODES)
        assert typ is not None
        values: dict[str, Any] = {}
        if typ == "BLODTRYCK":
            for name in ("systoliskt", "diastoliskt"):
                v = doc.get(name)
                if v is None:
                    raise Refused(400, "OBLIGATORISKT_FALT_SAKNAS", f"{name} is required")
                if not isinstance(v, int) or isinstance(v, bool) or not 0 < v < 400:
                    raise Refused(400, "OGILTIGT_FORMAT", f"{name} ska vara ett heltal (mmHg)")
                values[name] = v
        elif typ == "MEDVETANDEGRAD":
            values["varde"] = w.code(doc, "varde", ACVPU, WRITE_CODES)
        else:
            values["varde"] = w.decimal(doc, "varde", WRITE_CODES, comma=True)
        enhet_ = MATVARDE_ENHET[typ]
        if enhet_ is not None:
            if w.text(doc, "matenhet", WRITE_CODES, limit=16) != enhet_:
                raise Refused(422, "OKAND_KOD", "matenhet: fel enhet för typen")
            values["matenhet"] = enhet_
        signer, enhet = _signer(doc, "signeradAv"), _written_enhet(doc)
        record = {
            "matvardeId": f"MV-W{self.written.next_number()}",
            "tidpunkt": tidpunkt,
            "typ": typ,
            **values,
            **self.visit(pnr, doc),
            "signeradAv": signer,
            "enhet": enhet,
            "senastAndrad": tidpunkt,
            "externtId": ext,
        }
        return self.keep(pnr, "matvarden", record)

    def anteckningar(self, request: web.Request, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        pnr = self.person(doc)
        ext = w.text(doc, "externtId", WRITE_CODES, limit=64)
        datum = w.timestamp(doc, "datum", TS, WRITE_CODES)
        rubrik = w.text(doc, "rubrik", WRITE_CODES, limit=200)
        body = w.text(doc, "text", WRITE_CODES)
        lagrum = w.code(doc, "lagrum", LAGRUM, WRITE_CODES)
        signer, enhet = _signer(doc, "signeradAv"), _written_enhet(doc)
        record = {
            "anteckningId": f"AN-W{self.written.next_number()}",
            "datum": datum,
            "rubrik": rubrik,
            "text": body,
            "lagrum": lagrum,
            "signeradAv": signer,
            "enhet": enhet,
            "senastAndrad": datum,
            **self.visit(pnr, doc),
            "externtId": ext,
        }
        return self.keep(pnr, "anteckningar", record)

    def administreringar(self, request: web.Request, doc: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        pnr = self.person(doc)
        ext = w.text(doc, "externtId", WRITE_CODES, limit=64)
        tidpunkt = w.timestamp(doc, "tidpunkt", TS, WRITE_CODES)
        status = w.code(doc, "status", ADMINISTRERING_STATUS, WRITE_CODES)
        atc = w.text(doc, "atc", WRITE_CODES, limit=7)
        if atc is None or not _ATC.fullmatch(atc):
            raise Refused(400, "OGILTIGT_FORMAT", "atc ska vara en ATC-kod på substansnivå")
        preparat = w.text(doc, "preparat", WRITE_CODES, limit=200)
        given = status == "GIVEN"
        amount = w.decimal(doc, "dosMangd", WRITE_CODES, comma=True, required=given)
        unit_ = w.text(doc, "dosEnhet", WRITE_CODES, required=given, limit=32)
        orsak = w.code(doc, "orsak", ORSAK, WRITE_CODES, required=False)
        kommentar = w.text(doc, "kommentar", WRITE_CODES, required=not given, limit=2000)
        if given and orsak is not None:
            raise Refused(400, "OGILTIGT_FORMAT", "orsak gäller bara en dos som inte gavs")
        givenAv = w.text(doc, "givenAv", WRITE_CODES, limit=200)
        enhet = _written_enhet(doc)
        record = {
            "administreringId": f"AD-W{self.written.next_number()}",
            "tidpunkt": tidpunkt,
            "signerad": tidpunkt,
            "givenAv": givenAv,
            "status": status,
            "atc": atc,
            "preparat": preparat,
            "dos": f"{amount} {unit_}" if given else None,
            "dosMangd": amount if given else None,
            "dosEnhet": unit_ if given else None,
            "enhet": enhet,
            **({"orsak": orsak} if orsak else {}),
            **({"kommentar": kommentar} if kommentar else {}),
            **self.visit(pnr, doc),
            "externtId": ext,
        }
        return self.keep(pnr, "administreringar", record)


def create_app(
    people: list[Person],
    faults: fault_mod.Faults | None = None,
    *,
    history: History | None = None,
    cached_records: int = DEFAULT_CACHED_RECORDS,
) -> web.Application:
    """The Viva app for ``people``: each person's records made when first asked for
    (``proxy/simulators/lazy.py``), long histories per ``history``; what was written (POST) kept
    beside them."""
    hand = hand_records()
    patients: Patients[dict[str, Any]] = Patients(
        in_viva(people), lambda p, seq: entry_of(p, seq, hand, history), size, cached_records
    )
    written = Written()

    def person_of(request: web.Request) -> tuple[dict[str, Any] | None, web.Response | None]:
        pnr = request.query.get("personnummer")
        if pnr is None:
            return None, _error(400, "PERSONNUMMER_SAKNAS", "Parametern personnummer saknas")
        if len(pnr) != 12 or not pnr.isascii() or not pnr.isdigit():
            return None, _error(400, "OGILTIGT_PERSONNUMMER", "Personnummer ska anges med 12 siffror")
        return patients.get(pnr), None

    async def brukare(request: web.Request) -> web.Response:
        entry, err = person_of(request)
        if err is not None:
            return err
        return _json({"brukare": entry["brukare"] if entry else None})

    def records(kind: str) -> fault_mod.Handler:
        async def handler(request: web.Request) -> web.Response:
            entry, err = person_of(request)
            if err is not None:
                return err
            try:
                window = Window.parse(request.query.get("fromDatum"), request.query.get("tomDatum"))
            except ValueError as exc:
                return _error(400, "OGILTIGT_DATUM", f"fromDatum/tomDatum: {exc}")
            if not entry:
                return _json({kind: []})
            pnr = entry["brukare"]["personnummer"]
            items = [*written.of(pnr, kind), *entry.get(kind, [])]
            return _json({kind: in_window(items, kind, window)})

        return handler

    app = web.Application()
    app[PATIENTS_KEY] = patients
    app[WRITTEN_KEY] = written
    stats.install(app)
    fault_mod.install(app, faults or fault_mod.Faults(), lambda s: _error(s, "SERVERFEL", "Injicerat fel"))
    app.router.add_get(BASE + "/brukare", brukare)
    for kind in (*KINDS, *WRITTEN_ONLY):
        app.router.add_get(f"{BASE}/{kind}", records(kind))
    writes = _Writes(patients, written)
    for kind, handle in (
        ("hembesok", writes.hembesok),
        ("matvarden", writes.matvarden),
        ("anteckningar", writes.anteckningar),
        ("administreringar", writes.administreringar),
    ):
        app.router.add_post(
            f"{BASE}/{kind}",
            w.endpoint(written, handle, _error, "IDEMPOTENSNYCKEL_ATERANVAND", "OGILTIG_BEGARAN"),
        )
    return app


SYSTEM_HSA_ID = VIVA_SYSTEM
