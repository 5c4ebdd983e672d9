"""Time values: legacy local timestamps in, FHIR date/dateTime out, and FHIR values as instant ranges.

Swedish legacy systems (and RIVTA headers) write local time without a zone. FHIR requires a zone on
every dateTime that carries a time, so local times are read as Europe/Stockholm and written with the
offset that applied then (+01:00 winter, +02:00 summer).

Twice a year a Swedish wall-clock time is not one instant. The rule (mappings/README.md, "Local
times"; RFC 5545 §3.3.5 and PEP 495's ``fold=0``): an ambiguous time (the autumn hour that happens
twice) is the EARLIER instant, summer time; a time in the spring gap, which no clock showed, is read
with the offset before the gap — moved forward by the gap (02:30 → 03:30+02:00). A value resolved so
is a ``LocalTime``: the FHIR text, with what happened and the source's text, for the element's flag.

For search and sorting, a FHIR date/dateTime denotes a half-open range of instants [lo, hi) whose
width is its precision ("2024" is the whole year), as the FHIR search spec says.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime, timedelta, timezone
from zoneinfo import ZoneInfo

SWEDEN = ZoneInfo("Europe/Stockholm")

_TIME_DIRECTIVES = ("%H", "%M", "%S", "%I", "%p")

# FHIR date / dateTime / instant, with the precision implied by the parts present.
_FHIR_DATETIME = re.compile(
    r"(?P<y>[0-9]{4})(?:-(?P<m>[0-9]{2})(?:-(?P<d>[0-9]{2})"
    r"(?:T(?P<H>[0-9]{2}):(?P<M>[0-9]{2})(?::(?P<S>[0-9]{2})(?P<frac>\.[0-9]+)?)?"
    r"(?P<tz>Z|[+-](?:0[0-9]|1[0-4]):[0-5][0-9])?)?)?)?"
)
# ... and the form nearly every clinical time has: to the second, with its zone
_SECOND_WITH_ZONE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:Z|[+-](?:0[0-9]|1[0-4]):[0-5][0-9])"
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


AMBIGUOUS_URL = "urn:fhir-facade:local-time-ambiguous"  # extension: the earlier of two instants was taken
NONEXISTENT_URL = "urn:fhir-facade:local-time-nonexistent"  # extension: moved forward by the spring gap
_FLAG_URL = {"ambiguous": AMBIGUOUS_URL, "nonexistent": NONEXISTENT_URL}


class LocalTime(str):
    """A FHIR dateTime resolved from a local time the clocks made ambiguous or skipped.

    ``problem`` is "ambiguous" or "nonexistent", ``source`` the source's own text; the mapping
    engine writes the value as a plain string and ``flag()`` beside it (``_<element>``)."""

    problem: str
    source: str

    def __new__(cls, value: str, problem: str, source: str) -> LocalTime:
        self = super().__new__(cls, value)
        self.problem = problem
        self.source = source
        return self

    def flag(self) -> dict[str, str]:
        """The extension that says how the time was resolved, with the source's text."""
        return {"url": _FLAG_URL[self.problem], "valueString": self.source}


def localize(naive: datetime) -> tuple[datetime, str | None]:
    """A Swedish wall-clock time as an aware datetime, by the rule, and what the rule had to
    resolve: None, "ambiguous" (the earlier instant taken) or "nonexistent" (moved forward by the
    gap). A datetime that has a zone already is returned as it is."""
    if naive.tzinfo is not None:
        return naive, None
    aware = naive.replace(tzinfo=SWEDEN, fold=0)
    normal = aware.astimezone(UTC).astimezone(SWEDEN)  # (the offset before a gap: moved forward)
    if normal.replace(tzinfo=None, fold=0) != naive:
        return normal, "nonexistent"
    if aware.utcoffset() != naive.replace(tzinfo=SWEDEN, fold=1).utcoffset():
        return aware, "ambiguous"
    return aware, None


def _rendered(naive: datetime, source: str) -> str:
    dt, problem = localize(naive)
    text = dt.isoformat(timespec="seconds")
    return text if problem is None else LocalTime(text, problem, source)


@functools.lru_cache(maxsize=65_536)  # the same record times come back on every request for a patient
def local_to_fhir(value: str, fmt: str, kind: str) -> str:
    """Parse a zone-less local timestamp with a strptime format and render it as a FHIR value (a
    ``LocalTime`` when the rule resolved an ambiguous or skipped time)."""
    dt = datetime.strptime(value.strip(), fmt)
    if kind == "dateTime":
        return _rendered(dt, value.strip())
    if kind == "date":
        return dt.strftime("%Y-%m-%d")
    if kind == "month":
        return dt.strftime("%Y-%m")
    return dt.strftime("%Y")


def iso_local_to_fhir(value: str) -> str:
    """An ISO 8601 value that may lack a zone (read as Swedish local time, by the rule) → FHIR date
    or dateTime."""
    v = value.strip()
    if len(v) <= 10:  # a bare date (or partial date) carries no zone in FHIR either
        if not _FHIR_DATETIME.fullmatch(v):
            raise ValueError(f"not an ISO date: {v!r}")
        return v
    return _rendered(datetime.fromisoformat(v.replace("Z", "+00:00")), v)


def instant(epoch_s: float) -> str:
    """A FHIR instant (UTC, milliseconds) for an epoch time."""
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def fhir_range(value: str) -> tuple[float, float]:
    """The instant range [lo, hi) in epoch seconds that a FHIR date/dateTime/instant denotes.

    Values without a zone (dates, and dateTimes a client sends without one) are read as Swedish
    local time: a local day is 23 or 25 hours long on the days the clocks change, while an hour,
    minute or second is always that long. Raises ValueError for anything that is not a FHIR date
    value, including dates beyond what can be represented (9999-12-31 and the like).
    """
    if _SECOND_WITH_ZONE.fullmatch(value) and "0001" < value[:4] < "9999" and value[11:13] < "24":
        lo = datetime.fromisoformat(value).timestamp()  # the common case: a second, zone given
        return lo, lo + 1.0
    m = _FHIR_DATETIME.fullmatch(value)
    if not m:
        raise ValueError(f"not a FHIR date/dateTime: {value!r}")
    y = int(m["y"])
    mo = int(m["m"]) if m["m"] else None
    d = int(m["d"]) if m["d"] else None
    if m["H"] is None:  # a year, month or day: Swedish local time, no zone can be given
        span = _local_span(y, mo, d)
        if span is None:
            raise ValueError(f"date out of range: {value!r}")
        return span
    tz = m["tz"]
    zone: ZoneInfo | timezone = SWEDEN
    if tz == "Z":
        zone = UTC
    elif tz:
        sign = 1 if tz[0] == "+" else -1
        zone = timezone(sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6])))
    assert d is not None and mo is not None  # (a time comes with a full date)
    try:
        H, M = int(m["H"]), int(m["M"])
        if m["S"] is None:
            start, width = datetime(y, mo, d, H, M, tzinfo=zone), timedelta(minutes=1)
        else:
            frac = m["frac"] or ""
            start = datetime(y, mo, d, H, M, int(m["S"]), tzinfo=zone)
            start += timedelta(seconds=float(frac) if frac else 0.0)
            digits = min(len(frac) - 1, 6) if frac else 0
            width = timedelta(seconds=10**-digits)
        start = start.astimezone(UTC)  # sub-day widths are exact, whatever the clocks do
        return start.timestamp(), (start + width).timestamp()
    except OverflowError:
        raise ValueError(f"date out of range: {value!r}") from None


# Dates recur (the day of a record, "9999-12-31" for "until further notice"); each is a lookup once
# its span is known. None: not a date that exists, or beyond what can be represented.
@functools.lru_cache(maxsize=16_384)
def _local_span(y: int, mo: int | None, d: int | None) -> tuple[float, float] | None:
    try:
        if mo is None:
            start = datetime(y, 1, 1, tzinfo=SWEDEN)
            end = datetime(y + 1, 1, 1, tzinfo=SWEDEN)
        elif d is None:
            start = datetime(y, mo, 1, tzinfo=SWEDEN)
            end = datetime(y + (mo == 12), mo % 12 + 1, 1, tzinfo=SWEDEN)
        else:
            start = datetime(y, mo, d, tzinfo=SWEDEN)
            end = start + timedelta(days=1)  # wall-clock day: DST days are 23/25 h
        return start.timestamp(), end.timestamp()
    except (OverflowError, ValueError):
        return None
