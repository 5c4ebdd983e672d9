"""Fault settings for the simulators, as a value: what ``simulators.faults`` in ``config/*.yaml`` and a
simulator's control endpoint (``PUT/PATCH /_sim/faults``) may say, checked in one place.

It lives outside ``proxy.simulators`` because ``proxy.settings`` validates the config's fault section
at start-up and the product does not import the simulators (``proxy/simulators/faults.py`` applies
them; the fields are described there).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any


@dataclass(frozen=True)
class Faults:
    latency_ms: float = 0.0
    error_status: int | None = None
    malformed: bool = False
    hang: bool = False
    hang_s: float = 120.0
    drop: bool = False
    oversize_bytes: int = 0
    rate: float = 1.0
    path_contains: str | None = None
    path_endswith: str | None = None
    error_body: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None, base: Faults | None = None) -> Faults:
        """Validate a settings dict (from YAML or the control endpoint). Raises ValueError."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ValueError("faults must be a JSON object")
        known = {f.name: f for f in fields(cls)}
        unknown = set(data) - set(known)
        if unknown:
            raise ValueError(f"unknown fault field(s): {sorted(unknown)}")
        out = replace(base or cls(), **data)

        def number(v: Any) -> bool:
            return isinstance(v, int | float) and not isinstance(v, bool)

        if not number(out.latency_ms) or not 0 <= out.latency_ms <= 600_000:
            raise ValueError("latency_ms must be a number between 0 and 600000")
        if out.error_status is not None and (
            not number(out.error_status)
            or not isinstance(out.error_status, int)
            or not 400 <= out.error_status <= 599
        ):
            raise ValueError("error_status must be an HTTP status between 400 and 599, or null")
        if not number(out.rate) or not 0.0 <= out.rate <= 1.0:
            raise ValueError("rate must be between 0 and 1")
        if not number(out.hang_s) or not 0 <= out.hang_s <= 3600:
            raise ValueError("hang_s must be between 0 and 3600")
        if (
            not number(out.oversize_bytes)
            or not isinstance(out.oversize_bytes, int)
            or not (0 <= out.oversize_bytes <= 512 * 1024 * 1024)
        ):
            raise ValueError("oversize_bytes must be between 0 and 512 MiB")
        for key in ("path_contains", "path_endswith"):
            if getattr(out, key) is not None and not isinstance(getattr(out, key), str):
                raise ValueError(f"{key} must be a string or null")
        if out.error_body is not None and not isinstance(out.error_body, dict):
            raise ValueError("error_body must be a JSON object or null")
        for flag in ("malformed", "hang", "drop"):
            if not isinstance(getattr(out, flag), bool):
                raise ValueError(f"{flag} must be true or false")
        return out
