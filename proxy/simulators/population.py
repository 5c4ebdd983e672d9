"""The synthetic population the three simulators share.

Everything here is synthetic. Personnummer are Luhn-valid test numbers; names, addresses and
stories are invented. The same seed always yields the same population, so tests, the demo and the
benchmark see identical data.

Named demo patients (their stories are in the README; the people are ``data/people.yaml``, their
records ``data/<backend>/<name>.yaml``):

* ``191212121212`` Tolvan Tolvansson — in all three systems: threat flag, no-CPR limitation,
  penicillin allergy and hypertension in Cosmic (the hypertension also copied to NPÖ), care plan
  and functional status in Viva, a note not approved for the patient in NPÖ.
* ``193803142383`` Greta Gustafsson — known only to the municipality (Viva).
* ``197505154844`` Sanna Skyddad — protected identity (skyddad identitet) in Cosmic.
* ``194911309278`` Lennart Larsson — Cosmic plus plenty of NPÖ data from another region; care
  limitations from both (Ej HLR in NPÖ, VILSAD in Cosmic) and allergies in every state (suspected,
  confirmed, ended, certainty not recorded).
* ``199004672383`` Lucía Fernández — known by a samordningsnummer (coordination number: the day of
  birth + 60, here the 7th → 67), not a personnummer: a guest researcher not registered as resident.
  Cosmic (the emergency department: a sutured hand wound, a lab sample taken in the evening and
  answered next morning) and NPÖ (the wound diagnosis Cosmic published, a follow-up and a CRP from
  another region).
* ``194406289829`` Ingegerd Långberg — a long history: about 6,000 records over twelve years in all
  three systems, generated (seeded) rather than written: ``long_histories`` in ``data/people.yaml``,
  the generator in ``history.py``. Not in ``DEMO_PEOPLE`` (the tests that walk every demo patient
  would read all of it): ``LONG_HISTORY_PEOPLE``; ``NAMED_PEOPLE`` lists both.
* ``190101019800`` — unknown to every system.

Generated patients (``generated_people``) get the small histories of each dialect's generator, or,
with the long-history knobs (``history.History``), long ones.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

# the synthetic organisation (HSA-ids), shared with the demo issuer: proxy/demo_org.py
from proxy.demo_org import (
    COSMIC_SYSTEM,
    MUNICIPALITY_PROVIDER,
    OTHER_REGION_PROVIDER,
    OTHER_REGION_SYSTEM,
    REGION_PROVIDER,
    UNITS,
    VIVA_SYSTEM,
)
from proxy.pnr import PNR_SYSTEM, SAMORDNING_SYSTEM, dashed, is_valid_pnr, luhn_check_digit
from proxy.settings import load_yaml

__all__ = [
    "COSMIC_SYSTEM",
    "MUNICIPALITY_PROVIDER",
    "OTHER_REGION_PROVIDER",
    "OTHER_REGION_SYSTEM",
    "PNR_SYSTEM",
    "REGION_PROVIDER",
    "SAMORDNING_SYSTEM",
    "UNITS",
    "VIVA_SYSTEM",
    "is_valid_pnr",
    "luhn_check_digit",
]

DEFAULT_SEED = 1177


def make_pnr(birth: date, birth_number: int) -> str:
    base = f"{birth.year:04d}{birth.month:02d}{birth.day:02d}{birth_number:03d}"  # (not strftime: 4x faster)
    return base + str(luhn_check_digit(base[2:]))


pnr_dash = dashed


@dataclass(frozen=True, slots=True)  # (slots: 100,000 of them are the simulators' patient index)
class Person:
    pnr: str
    given: str
    family: str
    gender: str  # "male" | "female"
    address: tuple[str, str, str]  # street, postal code, city
    protected: bool = False
    in_cosmic: bool = True
    in_viva: bool = False
    in_npo: bool = True
    story: str = ""
    generated: bool = False
    rng_seed: str = field(default="", compare=False)

    @property
    def birth_date(self) -> date:
        day = int(self.pnr[6:8])
        return date(int(self.pnr[:4]), int(self.pnr[4:6]), day - 60 if day > 60 else day)


def _person(fields: dict[str, Any]) -> Person:
    return Person(**{**fields, "address": tuple(fields["address"])})


def _people_file() -> Any:
    """``data/people.yaml``: the named demo patients (their records: ``data/<backend>/``) and the
    named long histories."""
    path = Path(__file__).resolve().parent / "data" / "people.yaml"
    with path.open(encoding="utf-8") as f:
        return load_yaml(f)


_FILE = _people_file()
_DEMO = {name: _person(fields) for name, fields in _FILE["people"].items()}
TOLVAN = _DEMO["tolvan"]
GRETA = _DEMO["greta"]
SANNA = _DEMO["sanna"]
LENNART = _DEMO["lennart"]
LUCIA = _DEMO["lucia"]
UNKNOWN_PNR = "190101019800"  # unknown to every system

DEMO_PEOPLE: tuple[Person, ...] = (TOLVAN, GRETA, SANNA, LENNART, LUCIA)

_LONG = {name: _person(entry["person"]) for name, entry in _FILE["long_histories"].items()}
INGEGERD = _LONG["ingegerd"]
LONG_HISTORY_PEOPLE: tuple[Person, ...] = (INGEGERD,)
# personnummer → (records across the three systems, years of history) of each named long history
LONG_HISTORIES: dict[str, tuple[int, int]] = {
    _LONG[name].pnr: (int(entry["records"]), int(entry["years"]))
    for name, entry in _FILE["long_histories"].items()
}
NAMED_PEOPLE: tuple[Person, ...] = (*DEMO_PEOPLE, *LONG_HISTORY_PEOPLE)

_GIVEN_F = ["Anna", "Maria", "Karin", "Eva", "Birgitta", "Kerstin", "Ingrid", "Elsa", "Astrid", "Maja"]
_GIVEN_M = ["Lars", "Erik", "Karl", "Anders", "Johan", "Per", "Nils", "Sven", "Olof", "Gustav"]
_FAMILY = ["Andersson", "Johansson", "Karlsson", "Nilsson", "Eriksson", "Persson", "Svensson", "Berg", "Lind"]
_STREETS = ["Storgatan", "Skolgatan", "Kyrkvägen", "Ängsvägen", "Björkvägen", "Parkgatan"]
_CITIES = [("11122", "Stockholm"), ("41101", "Göteborg"), ("21115", "Malmö"), ("75310", "Uppsala")]


def generated_people(count: int, seed: int = DEFAULT_SEED) -> list[Person]:
    """``count`` generated patients, deterministic for (count index, seed).

    (One generator re-seeded per patient, not one made per patient: the same draws, and at 100,000
    patients the simulators' start is mostly this loop.)"""
    people = []
    taken = {p.pnr for p in NAMED_PEOPLE} | {UNKNOWN_PNR}
    rng = random.Random()
    for i in range(count):
        rng.seed(f"{seed}:person:{i}")
        while True:
            birth = date(1930, 1, 1) + timedelta(days=rng.randrange(0, 70 * 365))
            female = rng.random() < 0.5
            # odd third birth-number digit = male, even = female, as in real personnummer
            number = rng.randrange(0, 100) * 10 + (rng.randrange(0, 5) * 2 + (0 if female else 1))
            pnr = make_pnr(birth, number)
            if pnr not in taken:
                taken.add(pnr)
                break
        zip_, city = rng.choice(_CITIES)
        people.append(
            Person(
                pnr=pnr,
                given=rng.choice(_GIVEN_F if female else _GIVEN_M),
                family=rng.choice(_FAMILY),
                gender="female" if female else "male",
                address=(f"{rng.choice(_STREETS)} {rng.randrange(1, 90)}", zip_, city),
                in_viva=rng.random() < 0.4,
                generated=True,
                rng_seed=f"{seed}:{i}",
            )
        )
    return people


def population(generated: int = 0, seed: int = DEFAULT_SEED) -> list[Person]:
    return [*DEMO_PEOPLE, *generated_people(generated, seed)]


def at(days_ago: int, hour: int = 10, minute: int = 0, *, today: date | None = None) -> datetime:
    """A local (zone-less) timestamp ``days_ago`` before a fixed reference day.

    A fixed reference keeps the data deterministic: tests never depend on the wall clock.
    """
    ref = today or REFERENCE_DAY
    d = ref - timedelta(days=days_ago)
    return datetime(d.year, d.month, d.day, hour, minute)


REFERENCE_DAY = date(2026, 11, 1)
