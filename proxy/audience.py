"""Who asks: the client audiences, one ``Audience`` value each, built once at start-up.

A token's audience claim (``client_audience``) names one of the configured audiences
(``audiences:`` in ``config/facade.yaml``; without that section, ``DEFAULT_AUDIENCES``); a name not
in the table is refused at token verification (401, fail closed). The ``Principal`` carries the
``Audience``, and every stage asks it what it means instead of comparing names:

* ``is_patient`` — the patient reading their own record (1177): only their own record, all of it
  (no PDL rules), ``patient/`` scopes only, purpose of use PATRQT;
* ``social_care`` — a social-care provider (municipal home care under SoL/HSL): never emergency
  access (nödöppning);
* ``emergency_allowed`` — may use emergency access (``access.emergency_audiences``);
* ``purpose`` — the purpose of use logged for its requests (PATRQT or TREAT; ETREAT is decided per
  request, by emergency access);
* ``display`` — what the patient's view of their access log calls it.

The name stays the string in JSON, the access log, the stored audit rows and metric labels; what
each audience may see is the policy's (``policy.audiences.<name>``, proxy/redact).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

# Purposes of use (HL7 v3 ActReason), as the access log records them
TREAT = "TREAT"  # care
PATRQT = "PATRQT"  # the patient's own request
ETREAT = "ETREAT"  # emergency access (per request)

# what the patient's view of the log calls an audience no longer configured
UNKNOWN_DISPLAY = "Vården"


@dataclass(frozen=True, slots=True)
class Audience:
    """One client audience. Compare audiences by their attributes, never by name."""

    name: str  # the token's audience claim; the label in logs, metrics and stored events
    display: str  # what the patient's view of their access log calls it
    is_patient: bool = False
    social_care: bool = False
    emergency_allowed: bool = False

    @property
    def purpose(self) -> str:
        """The purpose of use of its requests without emergency access."""
        return PATRQT if self.is_patient else TREAT

    @property
    def scope_context(self) -> str:
        """The SMART scope context its tokens carry: ``patient`` for the patient, ``user`` for care."""
        return "patient" if self.is_patient else "user"


class Audiences:
    """The configured audiences by name, in configuration order. Immutable."""

    __slots__ = ("_by_name",)

    def __init__(self, audiences: Iterable[Audience]) -> None:
        by_name: dict[str, Audience] = {}
        for a in audiences:
            if a.name in by_name:
                raise ValueError(f"audience {a.name} is listed twice")
            by_name[a.name] = a
        self._by_name = by_name

    def get(self, name: object) -> Audience | None:
        """The audience of that name; None for any other value (an unknown audience: refuse)."""
        return self._by_name.get(name) if isinstance(name, str) else None

    def __getitem__(self, name: str) -> Audience:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._by_name

    def __iter__(self) -> Iterator[Audience]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Audiences) and tuple(self) == tuple(other)

    def __hash__(self) -> int:
        return hash(tuple(self))

    def __repr__(self) -> str:
        return f"Audiences({list(self)!r})"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._by_name)

    @property
    def care(self) -> tuple[str, ...]:
        """The names of the care audiences (every audience but the patient's)."""
        return tuple(a.name for a in self if not a.is_patient)

    def display(self, name: str, default: str = UNKNOWN_DISPLAY) -> str:
        """What the patient's view calls the audience ``name`` (stored events may name one no
        longer configured: ``default``)."""
        a = self._by_name.get(name)
        return a.display if a is not None else default


# What a config without an `audiences:` section gets (config/facade.yaml lists the same), with
# `access.emergency_audiences` left at its default: ambulance and clinician.
DEFAULT_AUDIENCES = Audiences(
    (
        Audience("ambulance", "Ambulanssjukvård", emergency_allowed=True),
        Audience("homecare", "Kommunal hemsjukvård", social_care=True),
        Audience("clinician", "Hälso- och sjukvård", emergency_allowed=True),
        Audience("patient", "Du själv (1177)", is_patient=True),
    )
)
