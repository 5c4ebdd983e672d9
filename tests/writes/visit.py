"""A home visit as a transaction Bundle, for the write tests: the README's example
(examples/home-visit.json — an Encounter, six vital signs, a nursing note, a dose given and one
not given), for any patient, under a fresh Bundle.identifier unless one is given."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import orjson

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "home-visit.json"
EXAMPLE_PATIENT = "Patient/kremj5bexrrkx4tqbkshl4dvai"  # (Tolvan, under the demo key)


def visit(patient_id: str, identifier: str | None = None) -> dict[str, Any]:
    text = EXAMPLE.read_text(encoding="utf-8").replace(EXAMPLE_PATIENT, f"Patient/{patient_id}")
    bundle: dict[str, Any] = orjson.loads(text)
    bundle["identifier"] = {"system": "urn:test:visits", "value": identifier or uuid.uuid4().hex}
    return bundle
