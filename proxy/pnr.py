"""Swedish personal identity numbers: personnummer and samordningsnummer (12-digit form)."""

from __future__ import annotations

from datetime import date

PNR_SYSTEM = "http://electronichealth.se/identifier/personnummer"
SAMORDNING_SYSTEM = "http://electronichealth.se/identifier/samordningsnummer"
IDENTIFIER_SYSTEMS = frozenset({PNR_SYSTEM, SAMORDNING_SYSTEM})
PNR_OID = "1.2.752.129.2.1.3.1"
SAMORDNING_OID = "1.2.752.129.2.1.3.3"


def luhn_check_digit(nine_digits: str) -> int:
    """The check digit over YYMMDDNNN (the 10-digit form without the century)."""
    total = 0
    for i, ch in enumerate(nine_digits):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return (10 - total % 10) % 10


def is_valid_pnr(pnr: str) -> bool:
    """A 12-digit personnummer or samordningsnummer with a real date and a valid check digit."""
    if len(pnr) != 12 or not pnr.isascii() or not pnr.isdigit():
        return False
    day = int(pnr[6:8])
    if day > 60:  # samordningsnummer: day + 60
        day -= 60
    try:
        date(int(pnr[0:4]), int(pnr[4:6]), day)
    except ValueError:
        return False
    return luhn_check_digit(pnr[2:11]) == int(pnr[11])


def system_of(pnr: str) -> str:
    return SAMORDNING_SYSTEM if int(pnr[6:8]) > 60 else PNR_SYSTEM


def oid_of(pnr: str) -> str:
    """The OID RIVTA contracts use for the identifier type (patientId.type)."""
    return SAMORDNING_OID if int(pnr[6:8]) > 60 else PNR_OID


def normalise(value: str) -> str | None:
    """'19121212-1212' or '191212121212' → '191212121212' when it is a valid number, else None."""
    digits = value.strip().replace("-", "").replace("+", "")
    return digits if is_valid_pnr(digits) else None


def dashed(pnr: str) -> str:
    return f"{pnr[:8]}-{pnr[8:]}"
