"""Whose records an asker may read: the PDL rules (lag 2022:913), record by record.

* A record from the asker's own care provider is readable.
* Another provider's record needs a consent in force for the asker's provider or unit that covers
  it, or emergency access (nödöppning).
* A block (spärr) on a provider (outer) or unit (inner) hides its records from everyone outside
  it; only a consent that names that provider/unit, or emergency access, lifts it for one asker.
* Demographics (``Patient``) belong to no provider and are not care documentation: always
  readable; so are the records of a backend declared as holding no PDL care documentation
  (``backends.<name>.care_documentation: false``).
* Any other record whose care provider is unknown (empty) is withheld (fail closed): nobody can
  tell whose it is, so neither "own provider" nor a consent can be shown to cover it, nor can a
  block be shown not to; only emergency access, which lifts consent and blocks alike, shows it.
  Likewise a record whose care unit is unknown, while the patient has a block in force: it may be
  a blocked unit's, so it is withheld as blocked unless a consent naming its provider lifts blocks
  there (or in an emergency).
* The patient reads all of their own records (``rules`` is not asked for the patient audience).
* The ambulance threat register belongs to the ambulance service as a whole
  (``access.threat_register``): its crews, at any station, are inside the service, so no block on
  the service or on one of its stations hides the service's records (the threat flag) from them.

Scopes and the audience's label policy still apply on top (proxy/access, proxy/redact).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from proxy.access.consent import Terms
from proxy.fhir.errors import FhirError, bad_request
from proxy.settings import ThreatRegister
from proxy.types import MappedResource, Principal, Withheld

EMERGENCY_HEADER = "X-Emergency-Access"
# Why consent could not be asked for; the code (never free text) goes to the access log.
EMERGENCY_REASONS = {
    "patient-unconscious": "the patient is unconscious",
    "patient-unable": "the patient cannot express a will",
    "no-time": "there is no time to ask",
}


def care_documentation(r: MappedResource, without_care_documentation: frozenset[str]) -> bool:
    """Whether a record is PDL care documentation, which must name its care provider: anything but
    demographics (``Patient``) from a backend not declared as holding none. (The start-up check of
    the mappings, ``proxy.mapping.registry.load_backend_mappings``, applies the same rule per mapping.)"""
    return r.resource["resourceType"] != "Patient" and r.source not in without_care_documentation


@dataclass(frozen=True, slots=True)
class Rules:
    provider: str | None
    unit: str | None
    emergency: bool
    consents: tuple[Terms, ...]  # in force, for this asker
    blocked: frozenset[str]  # providers/units blocked by blocks in force (not the asker's own)
    without_care_documentation: frozenset[str] = frozenset()  # backends (sources) declared so

    def verdict(self, r: MappedResource) -> Withheld | None:
        """None when the asker may read the record, else why not."""
        holder, unit = r.care_provider, r.care_unit
        if not holder:
            if not care_documentation(r, self.without_care_documentation):
                return None  # no provider's
            return None if self.emergency else Withheld.UNATTRIBUTED
        if self.emergency:
            return None
        # a record whose unit is not known may be a blocked unit's (an inner block): fail closed
        if holder in self.blocked or unit in self.blocked or (not unit and self.blocked):
            lifted = any(c.custodians and c.covers(holder, unit) for c in self.consents)
            return None if lifted else Withheld.BLOCKED
        if holder == self.provider or any(c.covers(holder, unit) for c in self.consents):
            return None
        return Withheld.CONSENT


def reason_code(header: str) -> str | None:
    """The reason code an emergency-access header names, or None when it names none (its text is
    never used: only a known code is logged or answered)."""
    code = header.strip()
    return code if code in EMERGENCY_REASONS else None


def emergency_reason(principal: Principal, header: str | None) -> str | None:
    """The emergency-access reason code the request carries, if it may use it (else 400/403)."""
    if header is None:
        return None
    reason = reason_code(header)
    if reason is None:
        raise bad_request(f"{EMERGENCY_HEADER} takes a reason code: one of {', '.join(EMERGENCY_REASONS)}")
    if not principal.audience.emergency_allowed:
        why = (
            "social-care providers have no emergency access"
            if principal.audience.social_care
            else f"the {principal.audience.name} audience has no emergency access"
        )
        raise FhirError(403, "forbidden", f"Emergency access (nödöppning) refused: {why}")
    return reason


def rules(
    principal: Principal,
    stored: Iterable[Terms],
    *,
    emergency: bool,
    now: float | None = None,
    without_care_documentation: frozenset[str] = frozenset(),
    threat_register: ThreatRegister | None = None,
) -> Rules:
    at = time.time() if now is None else now
    mine = {principal.care_provider_hsa_id, principal.care_unit_hsa_id} - {None}
    # A block hides a provider's or unit's records from everyone *outside* it. The crews of every
    # station work inside the ambulance service that owns the threat register, so a block on the
    # service (or on a station: the register is not the station's) does not hide it from them.
    inside = set(mine)
    if (
        threat_register is not None
        and principal.audience.name in threat_register.audiences
        and principal.care_provider_hsa_id == threat_register.care_provider
    ):
        inside.add(threat_register.care_unit)
    in_force = [t for t in stored if t.in_force(at)]
    return Rules(
        provider=principal.care_provider_hsa_id,
        unit=principal.care_unit_hsa_id,
        emergency=emergency,
        consents=tuple(t for t in in_force if t.permit and t.recipient in mine),
        blocked=frozenset(c for t in in_force if not t.permit for c in t.custodians) - inside,
        without_care_documentation=without_care_documentation,
    )
