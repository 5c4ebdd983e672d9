"""Opaque, stateless FHIR ids for patients and for the resources about them.

A personnummer must not appear in URLs (they end up in access logs, proxies and browser history),
and the facade keeps no patient table. So the Patient id is the personnummer encrypted under a
deployment key: one AES block holding a version byte, the 12 digits as BCD and nine zero bytes.
A single-block AES encryption is a keyed permutation, so the id is deterministic (the same patient
always has the same id, on every worker and host sharing the key) and reversible without state;
the nine zero bytes make a forged or mistyped id fail to decode (chance 2^-72).
Rendered as 26 characters of lower-case base32.

Every other resource id starts with its patient's id, so a read by id knows which patient to ask
the backends about: ``<patient id>-<backend>-<16 hex of keyed BLAKE2b(mapping, source record id)>``
(``ResourceIds``; made by ``proxy.mapping.ids.stable_id``). The hash is keyed because source
record ids are guessable (often sequential): with an unkeyed hash, anyone who knows a patient's id
could compute the id of a record they may not read and tell "exists but withheld" from "absent".
Its key is derived from the deployment's patient-id key (HKDF-SHA256 with its own label, so the
AES key is never used for a second primitive): ids stay the same on every worker and host sharing
that key, and change with it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from proxy.pnr import is_valid_pnr, system_of
from proxy.types import PatientRef

PATIENT_ID_LENGTH = 26
_VERSION = 0x01
_ID_CHARS = re.compile(r"[A-Za-z0-9\-.]{1,64}")  # FHIR id
_B32_VALUE = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz234567")}


class PatientIds:
    """Encode a personnummer as an opaque Patient id and back. Keys are 16, 24 or 32 bytes.

    One instance serves one event loop (not shared between threads): an ECB context holds no state
    between whole blocks, so the two contexts are made once and each call passes exactly one block.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) not in (16, 24, 32):
            raise ValueError("the patient id key must be 16, 24 or 32 bytes")
        cipher = Cipher(algorithms.AES(key), modes.ECB())  # one block: a keyed permutation
        self._encrypt = cipher.encryptor().update
        self._decrypt = cipher.decryptor().update

    def encode(self, pnr: str) -> str:
        block = bytes([_VERSION]) + bytes.fromhex(pnr) + bytes(9)
        return base64.b32encode(self._encrypt(block)).decode("ascii").rstrip("=").lower()

    def decode(self, patient_id: str) -> str | None:
        """The personnummer behind an id, or None if the id is not one of ours."""
        if len(patient_id) != PATIENT_ID_LENGTH or patient_id != patient_id.lower():
            return None
        # 26 base32 characters carry 130 bits for the 128 of a block: only the spelling whose last
        # character leaves the two spare bits zero is the id (the others decode to the same block)
        if _B32_VALUE.get(patient_id[-1], 1) & 3:
            return None
        try:
            raw = base64.b32decode(patient_id.upper() + "======")
        except (binascii.Error, ValueError):
            return None
        block = self._decrypt(raw)
        if block[0] != _VERSION or block[7:] != bytes(9):
            return None
        pnr = block[1:7].hex()
        return pnr if is_valid_pnr(pnr) else None

    def patient(self, pnr: str) -> PatientRef:
        return PatientRef(pnr=pnr, fhir_id=self.encode(pnr), system=system_of(pnr))

    def resolve(self, patient_id: str) -> PatientRef | None:
        pnr = self.decode(patient_id)
        return None if pnr is None else PatientRef(pnr=pnr, fhir_id=patient_id, system=system_of(pnr))


def _derive(key: bytes, label: bytes, length: int) -> bytes:
    if len(key) not in (16, 24, 32):
        raise ValueError("the patient id key must be 16, 24 or 32 bytes")
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=label).derive(key)


class ResourceIds:
    """The keyed hash in ``<patient id>-<backend>-<hash>``, from the deployment's patient-id key.

    ``fingerprint`` names the key without revealing it (another HKDF output): what is stored with
    ids in it (the shared cache) is filed under it, so entries made under another key, or by the
    unkeyed scheme before, are never served.
    """

    __slots__ = ("_key", "fingerprint")

    def __init__(self, patient_id_key: bytes) -> None:
        self._key = _derive(patient_id_key, b"fhir-facade resource id v1", 32)
        self.fingerprint = _derive(patient_id_key, b"fhir-facade key fingerprint v1", 8).hex()

    def digest(self, mapping_name: str, record_id: str) -> str:
        """16 hex characters, stable for (mapping, source record id) under this key."""
        data = f"{mapping_name}\x1f{record_id}".encode()
        return hashlib.blake2b(data, digest_size=8, key=self._key).hexdigest()

    def __repr__(self) -> str:
        return f"ResourceIds(fingerprint={self.fingerprint})"  # never the key


def patient_part(resource_id_: str) -> str:
    """The patient id a resource id starts with (may not decode: check with PatientIds.resolve)."""
    return resource_id_.split("-", 1)[0]


def holding_backend(resource_id_: str) -> str:
    """The backend a (non-Patient) resource id names: ``<patient>-<backend>-<hash>``."""
    parts = resource_id_.split("-")
    return parts[1] if len(parts) == 3 else ""


def is_fhir_id(value: str) -> bool:
    return bool(_ID_CHARS.fullmatch(value))
