"""Consents (samtycke) and blocks (spärr) as FHIR ``Consent`` resources: what a client may send,
and what a stored one means for an access decision.

A Consent the facade accepts (``POST {base}/Consent``)::

    resourceType  Consent
    status        active                      (revoking = PUT the same resource with inactive)
    scope         consentscope#patient-privacy
    category      1..* (e.g. LOINC 59284-0 "Patient Consent")
    patient       Patient/<id>                (the facade's opaque id)
    provision:
      type        permit → a consent, deny → a block
      period      optional start / end        (a consent or block outside it is not in force)
      (no action, securityLabel, purpose, class, code, dataPeriod, data or modifierExtension: a
      narrowing these rules do not read is refused with a 400, never enforced as no narrowing)
      actor       role v3-ParticipationType, reference.identifier an HSA-id: system HL7 Sweden's
                  urn:oid:1.2.752.29.4.19, or the RIVTA OID urn:oid:1.2.752.129.2.1.4.1 (accepted,
                  and stored and answered as HL7 Sweden's: ``normalised``)
                  IRCP  the recipient: the care provider or care unit that may read (consent only,
                        exactly one: the asker's own provider or unit)
                  CST   a custodian: the care provider (outer block) or care unit (inner block)
                        whose records it concerns. A block names at least one; a consent that
                        names some covers only their records, and lifts their blocks for the
                        recipient; a consent that names none covers every other provider's
                        records that are not blocked.

An HSA-id names exactly one provider or unit, so whether a block is inner or outer follows from
the id: it hides every record whose provider or unit is that id.

Nothing that acts when displayed is stored (``inert``): a Consent's narrative (``text``, XHTML a
viewer renders — a ``<script>`` in it would run in whichever patient app or care system shows the
consent) is dropped, and ``contained`` resources are refused with a 400.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from proxy.fhir.errors import bad_request
from proxy.hsa import HSA_SYSTEM, RIVTA_HSA_SYSTEM, hsa_system, is_hsa_id
from proxy.timeutil import fhir_range
from proxy.types import FhirDict

PARTICIPATION = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
SCOPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/consentscope"
RECIPIENT, CUSTODIAN = "IRCP", "CST"
_EDITABLE = {"status", "meta", "id"}
# Consent.provision elements that narrow what a consent or block covers, which these rules do not read
_UNENFORCED = (
    "action",
    "securityLabel",
    "purpose",
    "class",
    "code",
    "dataPeriod",
    "data",
    "modifierExtension",
)
_ELEMENT_NAME = re.compile(r"[a-z][A-Za-z0-9]{0,63}")  # how a FHIR element is spelt


@dataclass(frozen=True, slots=True)
class Terms:
    """What one stored Consent means for access decisions."""

    id: str
    permit: bool  # True: a consent; False: a block
    active: bool  # status active (not revoked / lifted)
    recipient: str | None  # the HSA-id that may read (consents)
    custodians: frozenset[str]  # the HSA-ids whose records it concerns (empty: all, for a consent)
    start: float | None
    end: float | None

    def in_force(self, now: float) -> bool:
        return (
            self.active and (self.start is None or self.start <= now) and (self.end is None or now < self.end)
        )

    def covers(self, holder: str | None, unit: str | None) -> bool:
        """Whether a record held by ``holder`` (provider) at ``unit`` is among what it concerns."""
        return not self.custodians or holder in self.custodians or unit in self.custodians


def terms(resource: FhirDict) -> Terms:
    """The meaning of a Consent the facade stored (it was validated on the way in)."""
    provision = resource.get("provision", {})
    period = provision.get("period", {})
    roles: dict[str, set[str]] = {RECIPIENT: set(), CUSTODIAN: set()}
    for actor in provision.get("actor", []):
        roles[_role(actor)].add(actor["reference"]["identifier"]["value"])
    return Terms(
        id=resource["id"],
        permit=provision.get("type") == "permit",
        active=resource.get("status") == "active",
        recipient=next(iter(roles[RECIPIENT]), None),
        custodians=frozenset(roles[CUSTODIAN]),
        start=fhir_range(period["start"])[0] if "start" in period else None,
        end=fhir_range(period["end"])[1] if "end" in period else None,
    )


def _role(actor: FhirDict) -> str:
    for coding in actor.get("role", {}).get("coding", []):
        if coding.get("system") == PARTICIPATION and coding.get("code") in (RECIPIENT, CUSTODIAN):
            return str(coding["code"])
    raise ValueError("actor without a known role")


def inert(body: Any) -> Any:
    """A Consent body as the facade will keep it, before it is validated or compared.

    The narrative (``text``) is stripped rather than refused: it is optional, display-only, and
    clients generate it; what a Consent means here is its coded elements, which the answer shows as
    stored. ``contained`` resources are refused (400): they are content, not display — a contained
    Organization or Patient a reference points at (``#id``) — and dropping them would change what
    the Consent refers to, while keeping them would store resources the facade does not check."""
    if not isinstance(body, dict):
        return body  # (validate says what is wrong with it)
    if "contained" in body:
        raise bad_request(
            "Consent.contained is not accepted: name care providers and units by HSA-id in "
            "provision.actor, without contained resources"
        )
    return {k: v for k, v in body.items() if k != "text"}


def validate(body: Any) -> FhirDict:
    """A Consent as a client sent it, checked against the FHIR model and the rules above → 400."""
    from fhir.resources.R4B.consent import Consent  # imported at start-up by proxy.app

    if not isinstance(body, dict) or body.get("resourceType") != "Consent":
        raise bad_request("The body must be a FHIR Consent resource (resourceType Consent)")
    try:
        Consent.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(f"{_where(e['loc'])}: {e['msg']}" for e in exc.errors()[:5])
        raise bad_request(f"Not a valid Consent: {problems}") from None
    if body.get("status") != "active":
        raise bad_request("Consent.status must be active (revoke later by setting it to inactive)")
    if not any(
        c.get("system") == SCOPE_SYSTEM and c.get("code") == "patient-privacy"
        for c in body["scope"].get("coding", [])
    ):
        raise bad_request(f"Consent.scope must be {SCOPE_SYSTEM}#patient-privacy")
    if not body.get("patient", {}).get("reference", "").startswith("Patient/"):
        raise bad_request("Consent.patient must reference the Patient (Patient/<id>)")
    provision = body.get("provision")
    if not isinstance(provision, dict) or provision.get("type") not in ("permit", "deny"):
        raise bad_request("Consent.provision.type must be permit (a consent) or deny (a block)")
    if provision.get("provision"):
        raise bad_request("Nested Consent.provision.provision is not supported")
    # A restriction the access rules do not read would be enforced as no restriction at all (a
    # consent to "only the diagnoses" read as a consent to everything): refused, not widened.
    for where, element in [("", "modifierExtension")] + [("provision.", k) for k in _UNENFORCED]:
        if (provision if where else body).get(element):
            raise bad_request(
                f"Consent.{where}{element} is not supported: a consent or block here covers all of "
                "the named providers' or units' records for the period; register it without it"
            )
    period = provision.get("period", {})
    for end in ("start", "end"):
        if end in period:
            try:
                fhir_range(period[end])
            except ValueError:
                raise bad_request(f"Consent.provision.period.{end} is not a FHIR dateTime") from None
    if (
        "start" in period
        and "end" in period
        and fhir_range(period["end"])[1] <= fhir_range(period["start"])[0]
    ):
        raise bad_request("Consent.provision.period ends before it starts")
    for i, actor in enumerate(provision.get("actor", [])):
        ident = actor.get("reference", {}).get("identifier", {})
        if hsa_system(ident.get("system")) is None or not isinstance(ident.get("value"), str):
            raise bad_request(
                f"Consent.provision.actor[{i}].reference.identifier must be an HSA-id (system {HSA_SYSTEM}, "
                f"or {RIVTA_HSA_SYSTEM})"
            )
        if not is_hsa_id(ident["value"]):  # matched exactly: a near miss would match nothing
            raise bad_request(
                f"Consent.provision.actor[{i}].reference.identifier.value is not an HSA-id as written "
                "(SE, ten digits, a hyphen, capital letters and digits, no spaces)"
            )
        try:
            _role(actor)
        except ValueError:
            raise bad_request(
                f"Consent.provision.actor[{i}].role must be {PARTICIPATION}#{RECIPIENT} (who may read) "
                f"or #{CUSTODIAN} (whose records)"
            ) from None
    meaning = terms({**body, "id": ""})
    recipients = sum(1 for a in provision.get("actor", []) if _role(a) == RECIPIENT)
    if meaning.permit and recipients != 1:
        raise bad_request(f"A consent (permit) names exactly one actor with role {RECIPIENT}: who may read")
    if not meaning.permit and (recipients or not meaning.custodians):
        raise bad_request(
            f"A block (deny) names the blocked care provider or unit as actors with role {CUSTODIAN}, "
            f"and no {RECIPIENT}"
        )
    return normalised(body)


def normalised(resource: FhirDict) -> FhirDict:
    """The Consent with every actor's HSA-id in HL7 Sweden's system (``HSA_SYSTEM``), as the facade
    stores and answers it: a client's RIVTA OID, or a Consent stored before the facade wrote
    HL7 Sweden's, reads the same. The resource is not modified; unchanged, it is returned as is.
    Safe on a body nobody has validated yet (a PUT's): anything not shaped like an actor is kept."""
    provision = resource.get("provision")
    if not isinstance(provision, dict) or not isinstance(provision.get("actor"), list):
        return resource
    actors: list[Any] = provision["actor"]
    if not any(_rivta_identifier(a) for a in actors):
        return resource
    fixed = []
    for actor in actors:
        ident = _rivta_identifier(actor)
        if ident is not None:
            actor = {
                **actor,
                "reference": {**actor["reference"], "identifier": {**ident, "system": HSA_SYSTEM}},
            }
        fixed.append(actor)
    return {**resource, "provision": {**provision, "actor": fixed}}


def _rivta_identifier(actor: Any) -> dict[str, Any] | None:
    """An actor's HSA-id identifier when it is written in the RIVTA OID."""
    reference = actor.get("reference") if isinstance(actor, dict) else None
    ident = reference.get("identifier") if isinstance(reference, dict) else None
    return ident if isinstance(ident, dict) and ident.get("system") == RIVTA_HSA_SYSTEM else None


def _where(loc: tuple[int | str, ...]) -> str:
    """Where in the Consent a problem is. A key the client sent is named only if it is spelt like a
    FHIR element: markup, quotes, spaces or a ``Bearer ...`` header line are never echoed."""
    parts = [
        str(p) if isinstance(p, int) or _ELEMENT_NAME.fullmatch(p) else "(an element not in FHIR)"
        for p in loc
    ]
    return ".".join(parts) or "Consent"


def stored(body: FhirDict, *, consent_id: str | None = None, version: int = 1) -> FhirDict:
    """The resource as the facade keeps and returns it: its id and version, server-set."""
    now = datetime.now(UTC).isoformat(timespec="milliseconds")
    resource = {k: v for k, v in body.items() if k not in ("id", "meta", "text", "contained")}
    resource.setdefault("dateTime", now)
    return {
        "resourceType": "Consent",
        "id": consent_id or uuid.uuid4().hex,
        "meta": {"versionId": str(version), "lastUpdated": now},
        **{k: v for k, v in resource.items() if k != "resourceType"},
    }


def only_status_changed(old: FhirDict, new: FhirDict) -> bool:
    """Whether ``new`` is ``old`` but for its status (an actor's HSA-id in either accepted system)."""
    old, new = normalised(old), normalised(new)
    keys = (set(old) | set(new)) - _EDITABLE - {"dateTime", "text", "contained"}  # (never stored)
    return all(old.get(k) == new.get(k) for k in keys)
