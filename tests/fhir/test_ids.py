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


def test_only_the_canonical_spelling_decodes() -> None:
    """The last base32 character has two spare bits: the other three spellings of an id decode to
    the same block, and are refused, so that one patient has exactly one id."""
    pnr = DEMO_PEOPLE[0].pnr
    pid = IDS.encode(pnr)
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    value = alphabet.index(pid[-1])
    assert value & 3 == 0
    for spare in (1, 2, 3):
        other = pid[:-1] + alphabet[value | spare]
        assert IDS.decode(other) is None
        assert IDS.resolve(other) is None
    ref = IDS.resolve(pid)
    assert ref is not None and ref.pnr == pnr and ref.fhir_id == pid == IDS.patient(pnr).fhir_id


def test_the_reused_cipher_contexts_agree_with_fresh_ones() -> None:
    """Encoding and decoding reuse one ECB context each: interleaved calls give what a fresh
    context gives for each block."""
    import base64

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = b"k" * 32
    people = [p.pnr for p in generated_people(50)]
    for pnr in people:
        pid = IDS.encode(pnr)
        fresh = Cipher(algorithms.AES(key), modes.ECB()).decryptor()
        block = fresh.update(base64.b32decode(pid.upper() + "======")) + fresh.finalize()
        assert block[1:7].hex() == pnr == IDS.decode(pid)
