"""``request.filters`` checked at start-up like the rest of a mapping, a search's range computed
never narrower than FHIR's, and a narrowed request a fetch of its own."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.fhir.params import parse_search
from proxy.fhir.searchparams import date_bounds
from proxy.mapping.registry import MappingSet
from proxy.settings import FacadeSettings
from proxy.timeutil import fhir_range
from tests.conftest import IDS, pid
from tests.mapping.test_compiler import compile_doc, compile_error, doc

PATIENT = pid("191212121212")

QUERY = {"path": "/api/patients/{@pnr_dash}/things"}
BODY = {"method": "POST", "format": "xml", "path": "/soap", "body": "<a><p>{@pnr}</p>{@filters}</a>"}
FRAGMENT = "<tp><s>{@from}</s><e>{@to}</e></tp>"


def with_filters(request: dict[str, Any], filters: Any, resource: str = "Condition") -> dict[str, Any]:
    return doc(request={**request, "filters": filters}, resource=resource)


@pytest.mark.parametrize(
    ("request_", "filters", "where", "says"),
    [
        (QUERY, {"date": {"from": "f", "format": "%Y-%m-%d"}}, "request.filters", "onset-date"),
        (QUERY, {"onset-date": {"format": "%Y-%m-%d"}}, "request.filters.onset-date", "from and/or to"),
        (QUERY, {"onset-date": {"from": "f"}}, "request.filters.onset-date", "format"),
        (QUERY, {"onset-date": {"from": "f", "format": "%H:%M"}}, "onset-date.format", "strftime"),
        (QUERY, {"onset-date": {"from": "{@pnr}", "format": "%Y%m%d"}}, "onset-date.from", "name"),
        (QUERY, {"onset-date": {"body": FRAGMENT, "format": "%Y%m%d"}}, "onset-date", "without a body"),
        (BODY, {"onset-date": {"from": "f", "format": "%Y%m%d"}}, "onset-date", "with a body"),
        (BODY, {"onset-date": {"body": "<s>{@from}</s>", "format": "%Y%m%d"}}, "onset-date.body", "{@to}"),
        (
            {**BODY, "body": "<a>{@pnr}</a>"},
            {"onset-date": {"body": FRAGMENT, "format": "%Y%m%d"}},
            "onset-date.body",
            "{@filters}",
        ),
        (QUERY, {"onset-date": {"from": "f", "format": "%Y%m%d"}, "code": {}}, "request.filters", "one of"),
    ],
)
def test_a_bad_filter_is_refused_at_start_up_naming_the_key(
    request_: dict[str, Any], filters: Any, where: str, says: str
) -> None:
    message = compile_error(with_filters(request_, filters))
    assert where in message and says in message, message


def test_a_query_filter_narrows_into_a_request_of_its_own() -> None:
    m = compile_doc(
        with_filters(QUERY, {"onset-date": {"from": "fromDate", "to": "toDate", "format": "%Y-%m-%d"}})
    )
    spec = m.request
    assert spec.date_filter is not None and spec.date_filter.param == "onset-date"
    lo, _ = fhir_range("2024-03-01")
    _, hi = fhir_range("2024-03-31")
    narrowed = spec.narrowed(lo, hi)
    assert narrowed.render({"pnr_dash": "x"}).query == [("fromDate", "2024-02-29"), ("toDate", "2024-04-01")]
    assert spec.render({"pnr_dash": "x"}).query == []  # the whole list: no range
    assert narrowed.fetch_key != spec.fetch_key and narrowed.learning_key != spec.learning_key
    # learnt apart from the whole list, but not one key per range (the ranges are the askers')
    assert spec.narrowed(lo, None).learning_key == narrowed.learning_key
    assert narrowed.whole_key == spec.fetch_key and narrowed.narrows == spec.fetch_key
    assert spec.narrowed(lo, None).render({"pnr_dash": "x"}).query == [("fromDate", "2024-02-29")]
    # a zone far from Sweden's still falls inside the widened days
    lo_z, hi_z = fhir_range("2024-03-01T23:30:00-10:00")  # 2024-03-02 10:30 in Sweden
    assert spec.narrowed(lo_z, hi_z).render({"pnr_dash": "x"}).query == [
        ("fromDate", "2024-03-01"),
        ("toDate", "2024-03-03"),
    ]

    mappings = MappingSet(by_backend={"b": (m,)})
    assert mappings.readers_of("b", narrowed) == (m,)
    whole, part = mappings.cache_key_of("b", spec), mappings.cache_key_of("b", narrowed)
    other = mappings.cache_key_of("b", spec.narrowed(lo, None))
    assert len({whole, part, other}) == 3  # never one answer for another
    assert whole.split(".")[1] == part.split(".")[1]  # (the same mappings made them)


def test_a_body_filter_goes_where_the_body_says_with_both_bounds() -> None:
    m = compile_doc(with_filters(BODY, {"onset-date": {"body": FRAGMENT, "format": "%Y%m%d"}}))
    lo, _ = fhir_range("2024-03-01")
    ctx = {"pnr": "191212121212"}
    assert m.request.render(ctx).body == b"<a><p>191212121212</p></a>"
    body = m.request.narrowed(lo, None).render(ctx).body
    assert body == b"<a><p>191212121212</p><tp><s>20240229</s><e>99981231</e></tp></a>"


def bounds(*dates: str) -> tuple[float | None, float | None]:
    params = [("patient", PATIENT), *(("date", d) for d in dates)]
    query = parse_search("Observation", params, IDS, FacadeSettings())
    return date_bounds(query.filters, "date")


def test_a_searchs_range_is_never_narrower_than_its_filters() -> None:
    day = fhir_range("2024-03-01")
    assert bounds("ge2024-03-01") == (day[0], None)
    assert bounds("gt2024-03-01") == (day[0], None)  # (its day's start: wider than needed, never narrower)
    assert bounds("le2024-03-01") == (None, day[1])
    assert bounds("lt2024-03-01") == (None, day[1])
    assert bounds("eq2024-03-01") == day
    assert bounds("2024-03-01") == day  # (no prefix: eq)
    assert bounds("ne2024-03-01") == (None, None)
    assert bounds("ge2024-03-01,le2020-01-01") == (None, None)  # OR of open sides: open
    assert bounds("eq2024-03-01,eq2024-05-01") == (day[0], fhir_range("2024-05-01")[1])  # the hull
    assert bounds("ge2024-01-01", "le2024-03-01") == (fhir_range("2024-01-01")[0], day[1])  # AND
    assert bounds("ge2025-01-01", "le2024-01-01") == (None, None)  # nothing can match: left whole
