"""Stand-ins for the three legacy backends, each its own aiohttp app in its own dialect.

``factory(name)`` is a simulator's ``create_app(people, faults, *, history, cached_records)``.

The named demo patients and their hand-written records are data files in ``data/`` (read by
``records.py``, which describes the format); generated patients come from each module's seeded
generator, long histories from ``history.py``. A patient's records are made when first asked for
(``lazy.py``); every list endpoint takes a date range (``window.py``); ``/_sim/stats`` counts what a
simulator served (``stats.py``), ``/_sim/faults`` injects faults (``faults.py``). Only the CLI
(``demo``, ``simulate``, ``mappings check``) imports this package: the product does not
(``tests/test_house.py``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from aiohttp import web

NAMES = ("cosmic", "viva", "npo")


def factory(name: str) -> Callable[..., web.Application]:
    """The ``create_app`` of a simulator, by name (cosmic, viva, npo)."""
    if name not in NAMES:
        raise KeyError(f"unknown simulator {name!r}; known: {', '.join(NAMES)}")
    module: Any = importlib.import_module(f"proxy.simulators.{name}")
    return module.create_app  # type: ignore[no-any-return]
