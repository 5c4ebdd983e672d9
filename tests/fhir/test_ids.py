"""Opaque patient ids: deterministic, reversible with the key, and forgery-resistant."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.fhir.ids import PATIENT_ID_LENGTH, PatientIds, is_fhir_id
from proxy.simulators.population import DEMO_PEOPLE, generated_people

IDS = PatientIds(b"k" * 32)


@pytest.mark.parametrize("pnr", [p.pnr for p in DEMO_PEOPLE] + [p.pnr for p in generated_people(20)])
def test_round_trip(pnr: str) -> None:
    pid = IDS.encode(pnr)
    assert len(pid) == PATIENT_ID_LENGTH and is_fhir_id(pid)
    assert pnr not in pid
    assert IDS.encode(pnr) == pid
    assert IDS.decode(pid) == pnr


def test_other_key_other_ids() -> None:
    pnr = DEMO_PEOPLE[0].pnr
    other = PatientIds(b"o" * 16)
    assert other.encode(pnr) != IDS.encode(pnr)
    assert other.decode(IDS.encode(pnr)) is None


@given(st.text(alphabet="abcdefghijklmnopqrstuvwxyz234567", min_size=26, max_size=26))
def test_random_ids_do_not_decode(candidate: str) -> None:
    assert IDS.decode(candidate) is None


@pytest.mark.parametrize("bad", ["", "x", "A" * 26, "0" * 26, "a" * 27, "!" * 26])
def test_malformed_ids(bad: str) -> None:
    assert IDS.decode(bad) is None


def test_key_length_is_checked() -> None:
    with pytest.raises(ValueError):
        PatientIds(b"short")
