"""A date range a simulator's list endpoint is asked for (Cosmic ``fromDate``/``toDate``, Viva
``fromDatum``/``tomDatum``, NPÖ RIVTA ``timePeriod`` ``start``/``end``), and which records it admits.

The three dialects write dates and times differently (``2026-10-31 08:05``, ``202610310805``,
``20261031080500``) but each is fixed-width, most significant first: compared by their digits alone,
padded to ``YYYYMMDDhhmmss``, they sort as the instants they name. A bound given as a date covers its
whole day (``to`` 2026-10-31 admits 23:59 that day); both bounds are inclusive, either may be left out.

A record's date is one field for a record made at one moment (a lab sample, a note), two for one
that lasts (a medication, a care contact): it is admitted when its period overlaps the range, an
open end lasting until now. A record without the date is always admitted: a filter only narrows,
and one the simulator cannot place must not vanish from every window of a split history.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

WIDTH = 14  # YYYYMMDDhhmmss


def digits(value: str) -> str:
    return "".join(c for c in value if c.isdigit())


_SHAPE = re.compile(r"[0-9][0-9 :T-]*")
_FORMATS = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}


def _bound(raw: str | None, pad: str) -> str | None:
    if raw is None:
        return None
    text = digits(raw)
    try:
        if not _SHAPE.fullmatch(raw) or len(text) not in _FORMATS:
            raise ValueError
        datetime.strptime(text, _FORMATS[len(text)])
    except ValueError:
        raise ValueError(f"not a date or a date and time: {raw!r}") from None
    return text + pad * (WIDTH - len(text))


@dataclass(frozen=True, slots=True)
class Window:
    """The inclusive range ``[start, end]`` as padded digits; ``None``: unbounded on that side."""

    start: str | None = None
    end: str | None = None

    @classmethod
    def parse(cls, start: str | None, end: str | None) -> Window:
        """From a request's bounds, in the dialect's own format (a date, or a date and time).

        Raises ValueError for a malformed bound or a start after the end."""
        window = cls(_bound(start, "0"), _bound(end, "9"))
        if window.start and window.end and window.start > window.end:
            raise ValueError("the range starts after it ends")
        return window

    @property
    def unbounded(self) -> bool:
        return self.start is None and self.end is None

    def admits(self, start: str | None, end: str | None = None, *, lasting: bool = False) -> bool:
        """Whether a record dated ``start`` falls in the range; for one that ``lasting``, whether its
        period ``start``–``end`` overlaps it (``end`` None: still going)."""
        if self.unbounded:
            return True
        first = _pad(start, "0") if start else None
        if lasting:
            last = _pad(end, "9") if end else None
            if first is None and last is None:
                return True  # (no date at all: never filtered out)
        else:
            last = _pad(start, "9") if start else None
            if first is None:
                return True
        if self.end is not None and first is not None and first > self.end:
            return False
        return not (self.start is not None and last is not None and last < self.start)


def _pad(value: str, pad: str) -> str:
    text = digits(value)
    return text[:WIDTH] + pad * (WIDTH - len(text))
