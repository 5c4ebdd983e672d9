"""Opaque patient ids: deterministic, reversible with the key, and forgery-resistant; the keyed
hash in the other resources' ids: deterministic under one key, not computable without it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proxy.fhir.ids import PATIENT_ID_LENGTH, PatientIds, ResourceIds, is_fhir_id
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


def test_resource_id_hashes_are_keyed() -> None:
    """The same (mapping, record) hashes alike under one key — on every worker and host sharing it —
    and differently under another key, and never to what the unkeyed BLAKE2b gives."""
    import hashlib

    key, other = b"k" * 32, b"o" * 16
    records = [("cosmic/diagnoses", f"D-{i}") for i in range(50)]
    mine = [ResourceIds(key).digest(m, r) for m, r in records]
    assert mine == [ResourceIds(key).digest(m, r) for m, r in records]  # another instance, same key
    assert len(set(mine)) == len(mine)
    theirs = [ResourceIds(other).digest(m, r) for m, r in records]
    unkeyed = [hashlib.blake2b(f"{m}\x1f{r}".encode(), digest_size=8).hexdigest() for m, r in records]
    assert set(mine).isdisjoint(theirs) and set(mine).isdisjoint(unkeyed)
    assert all(len(d) == 16 and int(d, 16) >= 0 for d in mine)


def test_the_resource_id_key_is_derived_not_the_aes_key() -> None:
    """The id hash is keyed with an HKDF sub-key: keying BLAKE2b with the AES key itself gives
    other hashes; the fingerprint names the key without showing it, and differs per key."""
    import hashlib

    key = b"k" * 32
    ids = ResourceIds(key)
    raw_keyed = hashlib.blake2b(b"cosmic/diagnoses\x1fD-1", digest_size=8, key=key).hexdigest()
    assert ids.digest("cosmic/diagnoses", "D-1") != raw_keyed
    assert ids.fingerprint != ResourceIds(b"o" * 32).fingerprint
    assert len(ids.fingerprint) == 16 and key.hex() not in ids.fingerprint
    assert key.hex() not in repr(ids) and "k" * 8 not in repr(ids)
    with pytest.raises(ValueError):
        ResourceIds(b"short")
