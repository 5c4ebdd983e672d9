"""Inputs that once reached a 500, or a wrong answer: each now gets the status it deserves."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from proxy.fhir.ids import PatientIds
from proxy.settings import DEMO_PATIENT_ID_KEY
from proxy.simulators.population import LENNART, TOLVAN
from proxy.timeutil import fhir_range
from tests.conftest import BASE, pid

TOLVAN_ID = pid(TOLVAN.pnr)


@pytest.mark.parametrize(
    "params",
    [
        {"date": "9999-12-31"},
        {"date": "ge9999-12-31T23:59:59-01:00"},  # past year 9999 in UTC
        {"_count": "²"},
        {"_offset": "٣"},
        {"_count": "1" * 5000},
        {"_count:foo": "1"},
        {"patient:missing": "true"},
        {"subject:Group": "abc"},
        {"date": "2024-05-15T10:00+15:00"},  # offsets stop at ±14:00
        {"date": "2024-05-15\n"},
    ],
)
async def test_hostile_parameters_are_400(facade: Any, params: dict[str, str]) -> None:
    async with facade() as f:
        status, body = await f.get(f"{BASE}/Observation", params={"patient": pid(LENNART.pnr), **params})
    assert status == 400, body
    assert body["resourceType"] == "OperationOutcome"


async def test_since_at_the_end_of_time_is_400(facade: Any) -> None:
    async with facade() as f:
        status, _ = await f.get(f"{BASE}/Patient/{TOLVAN_ID}/$everything", params={"_since": "9999-12-31"})
    assert status == 400


def test_dates_beyond_the_calendar_are_values_not_crashes() -> None:
    """A backend's open-ended '9999-12-31' must not break sorting or search (ValueError is skipped)."""
    from proxy.fhir.searchparams import sort_time

    with pytest.raises(ValueError):
        fhir_range("9999-12-31")
    assert sort_time({"resourceType": "Observation", "effectiveDateTime": "9999-12-31"}) is None
    period = {
        "resourceType": "MedicationStatement",
        "effectivePeriod": {"start": "2020-01-01", "end": "9999-12-31"},
    }
    assert sort_time(period) is not None


@pytest.mark.parametrize(
    ("value", "width"),
    [
        ("2024-10-27T02:59", 60),
        ("2024-10-27T02:59:59", 1),
        ("2024-10-27", 25 * 3600),
        ("2024-03-31", 23 * 3600),
    ],
)
def test_widths_across_daylight_saving_changes(value: str, width: int) -> None:
    lo, hi = fhir_range(value)
    assert hi - lo == width


def test_only_the_canonical_spelling_of_a_patient_id_decodes() -> None:
    ids = PatientIds(DEMO_PATIENT_ID_KEY)
    canonical = ids.encode(TOLVAN.pnr)
    variants = {canonical[:-1] + c for c in "abcdefghijklmnopqrstuvwxyz234567"} - {canonical}
    assert ids.decode(canonical) == TOLVAN.pnr
    assert all(ids.decode(v) is None for v in variants)


async def test_post_search_with_a_bad_charset_is_400(facade: Any) -> None:
    async with facade() as f:
        bad_charset = await f.client.post(
            f"{BASE}/Condition/_search",
            data=f"patient={TOLVAN_ID}".encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded; charset=foo"},
        )
        bad_bytes = await f.client.post(
            f"{BASE}/Condition/_search",
            data=f"patient={TOLVAN_ID}&code=\xff".encode("latin-1"),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
    assert bad_charset.status == 400
    assert bad_bytes.status == 400


async def test_empty_search_keeps_its_parameters_in_the_links(facade: Any) -> None:
    async with facade() as f:
        status, bundle = await f.get(
            f"{BASE}/Condition",
            params={"patient": "aaaaaaaaaaaaaaaaaaaaaaaaaa", "code": "I10", "_count": "5"},
        )
    assert status == 200 and bundle["total"] == 0
    self_link = next(lk["url"] for lk in bundle["link"] if lk["relation"] == "self")
    query = dict(parse_qsl(urlsplit(self_link).query))
    assert query == {"patient": "aaaaaaaaaaaaaaaaaaaaaaaaaa", "code": "I10", "_count": "5"}


async def test_patient_last_updated_is_applied(facade: Any) -> None:
    async with facade() as f:
        _, future = await f.get(f"{BASE}/Patient", params={"_id": TOLVAN_ID, "_lastUpdated": "ge2999"})
        _, past = await f.get(f"{BASE}/Patient", params={"_id": TOLVAN_ID, "_lastUpdated": "ge2000"})
    assert future["total"] == 0 and past["total"] == 1


async def test_a_read_is_503_only_when_the_holding_source_is_down(facade: Any) -> None:
    async with facade() as f:
        await f.faults("npo", error_status=500)
        status, _ = await f.get(f"{BASE}/Condition/{TOLVAN_ID}-cosmic-0000000000000000")
        assert status == 404  # Cosmic answered: the id is simply not there
        status, body = await f.get(f"{BASE}/Condition/{TOLVAN_ID}-npo-0000000000000000")
    assert status == 503 and "npo" in body["issue"][0]["diagnostics"]


async def test_links_use_the_configured_public_base_url(facade: Any) -> None:
    async with facade(facade_overrides={"public_base_url": "https://fhir.region.example/fhir"}) as f:
        _, bundle = await f.get(
            f"{BASE}/Condition", params={"patient": TOLVAN_ID}, headers={"Host": "evil.example"}
        )
    urls = [lk["url"] for lk in bundle["link"]] + [e["fullUrl"] for e in bundle["entry"] if "fullUrl" in e]
    assert all(u.startswith("https://fhir.region.example/fhir/") for u in urls)
