"""The hand-written demo records: data files beside the dialect apps, read here.

``data/people.yaml`` names the demo patients (``population.py`` makes them ``Person`` values);
``data/<backend>/<name>.yaml`` holds one patient's records in that backend's own dialect, as the
simulator serves them::

    pnr: '191212121212'
    records:
      diagnoses:                      # the backend's record kinds, in the order it serves them
      - diagnosisId: D-100001
        diagnosedAt: {days_ago: 2800, at: "10:15"}
        ...

Dates are relative, to the simulators' fixed reference day (``population.REFERENCE_DAY``, so the
data never depends on the wall clock): ``{days_ago: N, at: "HH:MM"}`` is a timestamp N days before
it (a negative N is after it: a planned visit), ``{days_ago: N}`` a date; each simulator writes them
in its own format (Cosmic ``2026-10-31 08:05``, Viva ``202610310805``, NPÖ ``20261031080500``).
Write ``at`` in quotes: YAML reads an unquoted ``10:15`` as a number, which is refused. Anything
else is served as written.

Generated patients are not here: they come from a seeded generator in each dialect's module.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from proxy.settings import load_yaml
from proxy.simulators.population import at

DATA = Path(__file__).resolve().parent / "data"
RELATIVE = frozenset({"days_ago", "at"})

Format = Callable[[datetime], str]


@functools.cache
def _parsed(path: Path) -> Any:
    with path.open(encoding="utf-8") as f:
        return load_yaml(f)


def data_file(*parts: str) -> Any:
    """A parsed data file under ``data/`` (cached: callers must not change what they get)."""
    return _parsed(DATA.joinpath(*parts))


def hand_written(
    backend: str, timestamp: Format, date: Format, root: Path = DATA
) -> dict[str, dict[str, list[Any]]]:
    """personnummer → {record kind: [records]} from ``<root>/<backend>/*.yaml``, dates resolved.

    Each call builds new objects, so a simulator may change what it gets. A malformed file raises
    ``ValueError`` naming the file."""
    out: dict[str, dict[str, list[Any]]] = {}
    for path in sorted((root / backend).glob("*.yaml")):
        doc = _parsed(path)
        where = f"{path.parent.name}/{path.name}"
        if (
            not isinstance(doc, dict)
            or set(doc) != {"pnr", "records"}
            or not isinstance(doc["records"], dict)
        ):
            raise ValueError(f"{where}: expects {{pnr, records: {{kind: [records]}}}}")
        out[str(doc["pnr"])] = {
            str(kind): _resolve(items, timestamp, date, f"{where}: records.{kind}")
            for kind, items in doc["records"].items()
        }
    return out


def _resolve(value: Any, timestamp: Format, date: Format, where: str) -> Any:
    if isinstance(value, list):
        return [_resolve(v, timestamp, date, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if "days_ago" in value:
            return _relative(value, timestamp, date, where)
        return {k: _resolve(v, timestamp, date, f"{where}.{k}") for k, v in value.items()}
    return value


def _relative(value: dict[str, Any], timestamp: Format, date: Format, where: str) -> str:
    days, clock = value.get("days_ago"), value.get("at")
    if set(value) - RELATIVE or not isinstance(days, int) or isinstance(days, bool):
        raise ValueError(f'{where}: a relative date is {{days_ago: N, at: "HH:MM"}} (at optional)')
    if "at" not in value:
        return date(at(days))
    if not isinstance(clock, str):
        raise ValueError(f'{where}: at must be a quoted "HH:MM" (unquoted, YAML reads it as a number)')
    try:
        moment = datetime.strptime(clock, "%H:%M")
    except ValueError:
        raise ValueError(f'{where}: at must be "HH:MM", not {clock!r}') from None
    return timestamp(at(days, moment.hour, moment.minute))
