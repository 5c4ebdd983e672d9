"""Opaque, stateless FHIR ids for patients and for the resources about them.

A personnummer must not appear in URLs (they end up in access logs, proxies and browser history),
and the facade keeps no patient table. So the Patient id is the personnummer encrypted under a
deployment key: one AES block holding a version byte, the 12 digits as BCD and nine zero bytes.
A single-block AES encryption is a keyed permutation, so the id is deterministic (the same patient
always has the same id, on every worker and host sharing the key) and reversible without state;
the nine zero bytes make a forged or mistyped id fail to decode (chance 2^-72).
Rendered as 26 characters of lower-case base32.

Every other resource id starts with its patient's id, so a read by id knows which patient to ask
the backends about: ``<patient id>-<backend>-<16 hex of BLAKE2b(mapping, source record id)>``
(made by ``proxy.mapping.compiler.stable_id``).
"""

from __future__ import annotations

import base64
import binascii
import re

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

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


def patient_part(resource_id_: str) -> str:
    """The patient id a resource id starts with (may not decode: check with PatientIds.resolve)."""
    return resource_id_.split("-", 1)[0]


def holding_backend(resource_id_: str) -> str:
    """The backend a (non-Patient) resource id names: ``<patient>-<backend>-<hash>``."""
    parts = resource_id_.split("-")
    return parts[1] if len(parts) == 3 else ""


def is_fhir_id(value: str) -> bool:
    return bool(_ID_CHARS.fullmatch(value))
