"""The PDL rules record by record (proxy/access/pdl.py), without HTTP."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from proxy.access.consent import Terms, stored, terms
from proxy.access.pdl import Withheld, rules
from proxy.audience import DEFAULT_AUDIENCES
from proxy.simulators.population import TOLVAN
from proxy.types import MappedResource, Principal, Scope
from tests.conftest import consent_body, pid

OWN, OTHER = "SE-PROVIDER-OWN", "SE-PROVIDER-OTHER"
MY_UNIT, SISTER_UNIT, OTHER_UNIT = "SE-UNIT-MINE", "SE-UNIT-SISTER", "SE-UNIT-OTHER"
ASKER = Principal(
    audience=DEFAULT_AUDIENCES["clinician"],
    subject="s",
    client_id="c",
    issuer="i",
    scopes=frozenset({Scope("user", "*", "s")}),
    user_hsa_id="SE-USER",
    care_unit_hsa_id=MY_UNIT,
    care_provider_hsa_id=OWN,
)
NOW = 1_800_000_000.0


def record(provider: str | None, unit: str | None) -> MappedResource:
    condition = {"resourceType": "Condition", "id": "x"}
    return MappedResource(condition, "src", "m", "k", 0, (), care_provider=provider, care_unit=unit)


def consent(**kw: Any) -> Terms:
    return terms(stored(consent_body(pid(TOLVAN.pnr), **kw)))


def verdict(stored_terms: list[Terms], rec: MappedResource, *, emergency: bool = False) -> Withheld | None:
    return rules(ASKER, stored_terms, emergency=emergency, now=NOW).verdict(rec)


def test_own_provider_readable_others_need_consent_and_demographics_are_free() -> None:
    r = rules(ASKER, [], emergency=False, now=NOW)
    assert r.verdict(record(OWN, SISTER_UNIT)) is None
    assert r.verdict(record(OTHER, OTHER_UNIT)) is Withheld.CONSENT
    patient = MappedResource({"resourceType": "Patient", "id": "p"}, "src", "m", "k", 0, ())
    assert r.verdict(patient) is None


def test_a_record_without_a_known_care_provider_is_withheld_not_shown_to_everyone() -> None:
    """Fail closed: whose record it is decides who may read it, so an unknown owner opens nothing —
    not a consent (it may be blocked, for all the facade knows); only emergency access lifts it."""
    for unknown in (record(None, None), record(None, OTHER_UNIT), record("", MY_UNIT)):
        assert verdict([], unknown) is Withheld.UNATTRIBUTED
        assert verdict([consent(recipient=OWN)], unknown) is Withheld.UNATTRIBUTED
        assert verdict([], unknown, emergency=True) is None
    # a backend declared as holding no PDL care documentation: its records belong to no provider
    exempt = rules(ASKER, [], emergency=False, now=NOW, without_care_documentation=frozenset({"src"}))
    assert exempt.verdict(record(None, None)) is None
    assert exempt.verdict(record(OTHER, OTHER_UNIT)) is Withheld.CONSENT  # one that names one: as ever


def test_consent_for_my_provider_or_unit_opens_others_but_not_for_someone_else() -> None:
    for recipient in (OWN, MY_UNIT):
        r = rules(ASKER, [consent(recipient=recipient)], emergency=False, now=NOW)
        assert r.verdict(record(OTHER, OTHER_UNIT)) is None
    r = rules(ASKER, [consent(recipient="SE-SOMEONE-ELSE")], emergency=False, now=NOW)
    assert r.verdict(record(OTHER, OTHER_UNIT)) is Withheld.CONSENT


def test_a_consent_naming_custodians_covers_only_them() -> None:
    r = rules(ASKER, [consent(recipient=OWN, custodians=("SE-THIRD",))], emergency=False, now=NOW)
    assert r.verdict(record("SE-THIRD", "SE-THIRD-UNIT")) is None
    assert r.verdict(record(OTHER, OTHER_UNIT)) is Withheld.CONSENT


def test_period_and_status_decide_whether_a_consent_is_in_force() -> None:
    expired = consent(recipient=OWN, period={"start": "2020-01-01", "end": "2021-01-01"})
    future = consent(recipient=OWN, period={"start": "2099-01-01"})
    for t in (expired, future):
        assert verdict([t], record(OTHER, OTHER_UNIT)) is Withheld.CONSENT
    current = consent(recipient=OWN, period={"start": "2020-01-01", "end": "2099-01-01"})
    assert verdict([current], record(OTHER, OTHER_UNIT)) is None
    revoked = stored(consent_body(pid(TOLVAN.pnr), recipient=OWN))
    revoked["status"] = "inactive"
    assert verdict([terms(revoked)], record(OTHER, OTHER_UNIT)) is Withheld.CONSENT


def test_inner_block_hides_a_unit_from_its_sister_units_but_not_from_itself() -> None:
    block = consent(deny=True, custodians=(SISTER_UNIT,))
    r = rules(ASKER, [block], emergency=False, now=NOW)
    assert r.verdict(record(OWN, SISTER_UNIT)) is Withheld.BLOCKED
    assert r.verdict(record(OWN, MY_UNIT)) is None
    inside = replace(ASKER, care_unit_hsa_id=SISTER_UNIT)
    assert rules(inside, [block], emergency=False, now=NOW).verdict(record(OWN, SISTER_UNIT)) is None


def test_outer_block_survives_a_general_consent_but_not_one_naming_it_nor_emergency() -> None:
    block = consent(deny=True, custodians=(OTHER,))
    general = consent(recipient=OWN)
    r = rules(ASKER, [block, general], emergency=False, now=NOW)
    assert r.verdict(record(OTHER, OTHER_UNIT)) is Withheld.BLOCKED
    assert r.verdict(record("SE-THIRD", "U")) is None
    naming = consent(recipient=MY_UNIT, custodians=(OTHER,))
    assert verdict([block, naming], record(OTHER, OTHER_UNIT)) is None
    assert verdict([block], record(OTHER, OTHER_UNIT), emergency=True) is None


def test_a_record_without_a_known_care_unit_is_not_let_past_an_inner_block() -> None:
    """An inner block hides one unit's records; a record whose unit came out empty may be that
    unit's, for all the facade can tell — so while the patient has a block in force it is withheld
    as blocked (fail closed), unless a consent naming its provider lifts blocks there, or in an
    emergency. Without any block it is read as before."""
    block_other_unit = consent(deny=True, custodians=(OTHER_UNIT,))
    block_sister_unit = consent(deny=True, custodians=(SISTER_UNIT,))
    opened = consent(recipient=OWN)
    for unitless in (record(OTHER, None), record(OTHER, "")):
        assert verdict([opened], unitless) is None  # no block: consent opens it, as ever
        assert verdict([opened, block_other_unit], record(OTHER, OTHER_UNIT)) is Withheld.BLOCKED
        assert verdict([opened, block_other_unit], unitless) is Withheld.BLOCKED
        assert verdict([opened, block_other_unit], unitless, emergency=True) is None
        lifting = consent(recipient=OWN, custodians=(OTHER,))
        assert verdict([lifting, block_other_unit], unitless) is None
    # the asker's own provider: a unit-less record may be the blocked sister unit's
    assert verdict([], record(OWN, None)) is None
    assert verdict([block_sister_unit], record(OWN, SISTER_UNIT)) is Withheld.BLOCKED
    assert verdict([block_sister_unit], record(OWN, None)) is Withheld.BLOCKED
