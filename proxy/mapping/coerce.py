"""Value coercions of the mapping language: FHIR text of a scalar, what counts as empty, the
``$as`` casts and the ``$date`` conversions (local times by ``proxy.timeutil``'s rule). Pure
functions; the checks of a spec that names them are in ``validate.py``."""

from __future__ import annotations

import base64
import math
import re
import sys
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from proxy.timeutil import format_kind, iso_local_to_fhir, local_to_fhir


def empty(v: Any) -> bool:
    """FHIR has no empty values: None, "", [] and {} are left out (whitespace-only strings too)."""
    if v is None:
        return True
    if isinstance(v, str):
        return not v.strip()
    return isinstance(v, list | dict) and not v


def scalar_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def to_bool(v: Any) -> bool | None:
    if isinstance(v, bool):
        return v
    text = scalar_text(v).strip().lower()
    if text in ("true", "1", "j", "ja", "y", "yes"):
        return True
    if text in ("false", "0", "n", "nej", "no"):
        return False
    return None


def to_code(v: Any) -> str | None:
    """FHIR ``code`` text (no leading or trailing whitespace, single spaces inside): a source's code
    echoed as it came (e.g. in an unmapped-code mark) must not make the resource invalid."""
    if isinstance(v, dict | list):
        return None
    return " ".join(scalar_text(v).split()) or None


def to_int(v: Any) -> int | None:
    """A FHIR integer: 32-bit signed; a value outside that range is left out, never guessed."""
    try:
        n = int(scalar_text(v).strip())
    except ValueError:
        return None
    return n if -(2**31) <= n < 2**31 else None


_PLAIN_INTEGER = re.compile(r"[+-]?[0-9]+")
_PLAIN_DECIMAL = re.compile(r"[+-]?[0-9]+[.,][0-9]+")


def to_decimal(v: Any) -> int | float | None:
    """A FHIR decimal: a whole number written without a decimal point or comma is an int, any
    other a float ("7.0" too: the decimals written are kept in FHIR's sense). The plain forms most
    values have are read directly; any other goes through ``Decimal`` (same results). A value JSON
    cannot carry as a number (a whole number beyond 64 bits, a float that overflows) is left out."""
    if v.__class__ is int:
        return _representable(v)
    text = scalar_text(v).strip()
    if _PLAIN_INTEGER.fullmatch(text):
        return _representable(int(text))
    if _PLAIN_DECIMAL.fullmatch(text):
        return _representable(float(text.replace(",", ".")))
    return _decimal(text)


_MAX_EXPONENT = sys.float_info.max_10_exp  # 308: a larger decimal exponent is no finite float


def _decimal(text: str) -> int | float | None:
    try:
        d = Decimal(text.replace(",", "."))  # Swedish decimal comma
    except InvalidOperation:
        return None
    if not d.is_finite():
        return None
    if d and d.adjusted() > _MAX_EXPONENT:  # past every float (and 64-bit integer): JSON cannot
        return None  # carry it; and turning 1E100000 into an int would hold the loop for 0.3 s
    whole = d == d.to_integral_value() and "." not in text and "," not in text
    return _representable(int(d) if whole else float(d))


def _representable(n: int | float) -> int | float | None:
    """``n`` if JSON output can carry it exactly as written: a 64-bit integer, a finite float."""
    if n.__class__ is int:
        return n if -(2**63) <= n < 2**63 else None
    return n if math.isfinite(n) else None


CASTS: dict[str, Callable[[Any], Any]] = {
    "boolean": to_bool,
    "integer": to_int,
    "decimal": to_decimal,
    "string": scalar_text,
    "code": to_code,
    "base64": lambda v: base64.b64encode(scalar_text(v).encode()).decode("ascii"),
}
"""``$as``: the casts by name."""


def iso_date(v: Any) -> str | None:
    """``$date: iso``: an ISO local time, as FHIR; None when unreadable."""
    try:
        return iso_local_to_fhir(str(v))
    except ValueError:
        return None


def local_date(spec: str) -> Callable[[Any], str | None]:
    """``$date: <strptime format>``: the conversion. Raises ValueError if the format cannot be used."""
    kind = format_kind(spec)
    local_to_fhir("2001-02-03 04:05:06", "%Y-%m-%d %H:%M:%S", kind)

    def convert(v: Any) -> str | None:
        try:
            return local_to_fhir(str(v), spec, kind)
        except ValueError:
            return None  # an unreadable date is left out, never guessed

    return convert
