"""The ambulance threat register belongs to the ambulance service as a whole, not to the station
whose crew recorded a threat: a patient's block cannot make the threat flag vanish between stations.

The rule (config/facade.yaml ``access.threat_register``): the threat flag's care unit is the
ambulance service; the crews of every station (audience ``ambulance`` at the service's care
provider) are inside the service. So a block on one station, or on the whole service, hides the
service's records only from those outside it; an outer block on the region only from other care
providers — who need a consent naming the region, or emergency access, as for any record.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.access.consent import stored, terms
from proxy.access.pdl import Withheld, rules
from proxy.audience import DEFAULT_AUDIENCES
from proxy.settings import ConfigError, ThreatRegister, load_settings
from proxy.simulators.population import REGION_PROVIDER, TOLVAN, UNITS
from proxy.types import MappedResource, Principal, Scope
from tests.conftest import BASE, auth, consent_body, pid
from tests.test_settings import config_with

PATIENT = pid(TOLVAN.pnr)
SERVICE = UNITS["ambulans"][0]
STATIONS = (UNITS["ambulans-city"][0], UNITS["ambulans-syd"][0])
THREAT = "Hotfullt beteende mot ambulanspersonal"
CONTRACTOR = "SE5560000000-PRIV"  # a contracted ambulance operator: another care provider


async def registering_station(f: Any) -> str:
    """The unit Cosmic says recorded Tolvan's threat (read from the simulator, as MobiMed has it)."""
    url = f"{f.sim_urls['cosmic']}/cosmic/api/v1/ambulance/patients/19121212-1212/threats"
    async with f.client.session.get(url) as resp:
        (threat,) = (await resp.json())["items"]
    return str(threat["registeredBy"]["unitHsaId"])


async def block(f: Any, custodian: str) -> None:
    resp = await f.client.post(
        f"{BASE}/Consent",
        json=consent_body(PATIENT, deny=True, custodians=(custodian,)),
        headers={**auth("patient", pnr=TOLVAN.pnr), "Content-Type": "application/fhir+json"},
    )
    assert resp.status == 201, await resp.text()


async def threat_flags(f: Any, headers: dict[str, str]) -> int:
    status, bundle = await f.get(f"{BASE}/Flag", params={"patient": PATIENT}, headers=headers)
    assert status == 200
    return sum(
        THREAT in str(e["resource"]) for e in bundle.get("entry", []) if e["search"]["mode"] == "match"
    )


def crew(unit: str, provider: str = REGION_PROVIDER) -> dict[str, str]:
    return auth("ambulance", care_unit=unit, care_provider=provider)


async def test_a_block_on_the_recording_station_does_not_hide_the_flag_from_other_stations(
    facade: Any,
) -> None:
    async with facade() as f:
        station = await registering_station(f)
        await block(f, station)
        for unit in (*STATIONS, SERVICE):
            assert await threat_flags(f, crew(unit)) == 1, unit


async def test_a_block_on_the_whole_ambulance_service_does_not_hide_it_from_its_crews(facade: Any) -> None:
    async with facade() as f:
        _, notes_before = await f.get(f"{BASE}/DocumentReference", params={"patient": PATIENT})
        await block(f, SERVICE)
        for unit in (*STATIONS, SERVICE):
            assert await threat_flags(f, crew(unit)) == 1, unit
        # the block still does its job for everyone outside the service: the region's clinician
        # loses the ambulance journal (the service's record) and is told something is blocked
        _, notes = await f.get(f"{BASE}/DocumentReference", params={"patient": PATIENT})
        assert notes["total"] == notes_before["total"] - 1
        assert "Ambulansjournal" not in str(notes["entry"])
        assert "blocked" in str([e for e in notes["entry"] if e["search"]["mode"] == "outcome"])


async def test_an_outer_block_on_the_region_hides_it_only_from_other_care_providers(facade: Any) -> None:
    async with facade() as f:
        assert (
            await threat_flags(f, crew("SE5560000000-AMBX", CONTRACTOR)) == 0
        )  # another provider: no consent
        await block(f, REGION_PROVIDER)
        for unit in (*STATIONS, SERVICE):
            assert await threat_flags(f, crew(unit)) == 1, unit
        assert await threat_flags(f, crew("SE5560000000-AMBX", CONTRACTOR)) == 0
        emergency = {**crew("SE5560000000-AMBX", CONTRACTOR), "X-Emergency-Access": "patient-unconscious"}
        assert await threat_flags(f, emergency) == 1


async def test_without_the_setting_the_flag_follows_the_plain_rules_of_its_unit(facade: Any) -> None:
    async with facade(access={"threat_register": None}) as f:
        await block(f, SERVICE)
        assert await threat_flags(f, crew(SERVICE)) == 1  # the service itself
        assert await threat_flags(f, crew(STATIONS[1])) == 0  # a station: outside the service's unit


def test_the_shipped_register_names_the_service_the_threat_mapping_uses() -> None:
    settings = load_settings()
    register = settings.access.threat_register
    assert register == ThreatRegister(SERVICE, REGION_PROVIDER, frozenset({"ambulance"}))
    assert dict(settings.backend("cosmic").vars)["ambulance_service_hsa_id"] == register.care_unit


def test_inside_the_service_only_for_its_own_crews() -> None:
    register = ThreatRegister(SERVICE, REGION_PROVIDER, frozenset({"ambulance"}))
    flag = MappedResource(
        {"resourceType": "Flag", "id": "f"},
        "cosmic",
        "cosmic/threats",
        "k",
        0,
        (),
        None,
        REGION_PROVIDER,
        SERVICE,
    )
    service_block = consent_body(PATIENT, deny=True, custodians=(SERVICE,))
    blocks = [terms(stored(service_block))]

    def asker(audience: str, provider: str) -> Principal:
        who = DEFAULT_AUDIENCES[audience]
        return Principal(who, "s", "c", "i", frozenset({Scope("user", "*", "s")}), "u", STATIONS[0], provider)

    def verdict(who: Principal) -> Withheld | None:
        return rules(who, blocks, emergency=False, threat_register=register).verdict(flag)

    assert verdict(asker("ambulance", REGION_PROVIDER)) is None
    assert verdict(asker("clinician", REGION_PROVIDER)) is Withheld.BLOCKED  # not the service's crew
    assert verdict(asker("ambulance", CONTRACTOR)) is Withheld.BLOCKED  # another provider


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"access.threat_register.care_unit": ""}, "access.threat_register.care_unit"),
        ({"access.threat_register.care_unit": "AMB1"}, "access.threat_register.care_unit"),
        (
            {"access.threat_register.care_provider": "se2321000016-15cq"},
            "access.threat_register.care_provider",
        ),
        ({"access.threat_register.care_provider": 7}, "access.threat_register.care_provider"),
        ({"access.threat_register.audiences": ["patient"]}, "access.threat_register.audiences"),
        ({"access.threat_register.station": "x"}, "access.threat_register"),
    ],
)
def test_a_bad_threat_register_setting_names_file_and_key(
    tmp_path: Path, change: dict[str, Any], key: str
) -> None:
    with pytest.raises(ConfigError) as exc:
        load_settings(config_with(tmp_path, change))
    assert str(exc.value).startswith(f"facade.yaml: {key}")


def test_a_threat_register_that_names_another_unit_than_the_threat_mapping_is_refused(tmp_path: Path) -> None:
    """The threat flag's care unit (Cosmic's ``ambulance_service_hsa_id``, read by the threat mapping)
    and the register's owner must be one unit: if they differ, a block on the unit the flags carry
    hides the threat flag from every crew. Start-up refuses that, naming both keys."""
    other = "SE2321000016-AMB9"
    with pytest.raises(ConfigError) as exc:
        load_settings(config_with(tmp_path, {"backends.cosmic.vars.ambulance_service_hsa_id": other}))
    message = str(exc.value)
    assert message.startswith("facade.yaml: access.threat_register.care_unit")
    assert "backends.cosmic.vars.ambulance_service_hsa_id" in message
