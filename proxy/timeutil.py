"""Time values: legacy local timestamps in, FHIR date/dateTime out, and FHIR values as instant ranges.

Swedish legacy systems (and RIVTA headers) write local time without a zone. FHIR requires a zone on
every dateTime that carries a time, so local times are read as Europe/Stockholm and written with the
offset that applied then (+01:00 winter, +02:00 summer).

For search and sorting, a FHIR date/dateTime denotes a half-open range of instants [lo, hi) whose
width is its precision ("2024" is the whole year), as the FHIR search spec says.
"""

from __future__ import annotations

import calendar
import re
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

SWEDEN = ZoneInfo("Europe/Stockholm")

_TIME_DIRECTIVES = ("%H", "%M", "%S", "%I", "%p")

# FHIR date / dateTime / instant, with the precision implied by the parts present.
_FHIR_DATETIME = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})"
    r"(?:T(?P<H>\d{2}):(?P<M>\d{2})(?::(?P<S>\d{2})(?P<frac>\.\d+)?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def format_kind(fmt: str) -> str:
    """What a strptime format yields in FHIR terms: 'dateTime', 'date', 'month' or 'year'."""
    if any(d in fmt for d in _TIME_DIRECTIVES):
        return "dateTime"
    if "%d" in fmt or "%j" in fmt:
        return "date"
    if "%m" in fmt or "%b" in fmt or "%B" in fmt:
        return "month"
    return "year"


def local_to_fhir(value: str, fmt: str, kind: str) -> str:
    """Parse a zone-less local timestamp with a strptime format and render it as a FHIR value."""
    dt = datetime.strptime(value.strip(), fmt)
    if kind == "dateTime":
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=SWEDEN)
        return dt.isoformat(timespec="seconds")
    if kind == "date":
        return dt.strftime("%Y-%m-%d")
    if kind == "month":
        return dt.strftime("%Y-%m")
    return dt.strftime("%Y")


def iso_local_to_fhir(value: str) -> str:
    """An ISO 8601 value that may lack a zone (read as Swedish local time) → FHIR date or dateTime."""
    v = value.strip()
    if len(v) <= 10:  # a bare date (or partial date) carries no zone in FHIR either
        if not _FHIR_DATETIME.match(v):
            raise ValueError(f"not an ISO date: {v!r}")
        return v
    dt = datetime.fromisoformat(v.replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=SWEDEN)
    return dt.isoformat(timespec="seconds")


def fhir_range(value: str) -> tuple[float, float]:
    """The instant range [lo, hi) in epoch seconds that a FHIR date/dateTime/instant denotes.

    Values without a zone (dates, and dateTimes a client sends without one) are read as Swedish
    local time. Raises ValueError for anything that is not a FHIR date value.
    """
    m = _FHIR_DATETIME.match(value)
    if not m:
        raise ValueError(f"not a FHIR date/dateTime: {value!r}")
    y = int(m["y"])
    mo = int(m["m"]) if m["m"] else None
    d = int(m["d"]) if m["d"] else None
    tz = m["tz"]
    zone: ZoneInfo | timezone = SWEDEN
    if tz == "Z":
        zone = UTC
    elif tz:
        sign = 1 if tz[0] == "+" else -1
        hh, mm = int(tz[1:3]), int(tz[4:6])
        zone = timezone(sign * timedelta(hours=hh, minutes=mm))
    if mo is None:
        start = datetime(y, 1, 1, tzinfo=zone)
        end = datetime(y + 1, 1, 1, tzinfo=zone)
    elif d is None:
        start = datetime(y, mo, 1, tzinfo=zone)
        end = datetime(y + (mo == 12), mo % 12 + 1, 1, tzinfo=zone)
    elif m["H"] is None:
        start = datetime(y, mo, d, tzinfo=zone)
        end = start + timedelta(days=1)
    else:
        H, M = int(m["H"]), int(m["M"])
        if m["S"] is None:
            start = datetime(y, mo, d, H, M, tzinfo=zone)
            end = start + timedelta(minutes=1)
        else:
            frac = float(m["frac"]) if m["frac"] else 0.0
            start = datetime(y, mo, d, H, M, int(m["S"]), tzinfo=zone) + timedelta(seconds=frac)
            end = start + timedelta(seconds=1 if not m["frac"] else 10 ** -(len(m["frac"]) - 1))
    # Validate the calendar (datetime() already rejects month 13 / day 32 and raises ValueError).
    if d is not None and mo is not None and d > calendar.monthrange(y, mo)[1]:
        raise ValueError(f"no such day: {value!r}")
    return start.timestamp(), end.timestamp()
