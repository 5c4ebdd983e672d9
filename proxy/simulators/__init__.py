"""Stand-ins for the three legacy backends, each its own aiohttp app in its own dialect.

``SIMULATORS`` maps a simulator name to ``create_app(people, faults) -> web.Application``.

The named demo patients and their hand-written records are data files in ``data/`` (read by
``records.py``, which describes the format); generated patients come from each module's seeded
generator. Only the CLI (``demo``, ``simulate``, ``mappings check``) imports this package: the
product does not (``tests/test_house.py``).
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
