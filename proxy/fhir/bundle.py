"""The answer as FHIR: searchset Bundles with paging links and one OperationOutcome per source asked."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from urllib.parse import urlencode

from proxy.types import FhirDict, SourceOutcome, SourceStatus, Withheld

SOURCE_SYSTEM = "urn:fhir-facade:source"
# How the source took part, for programs: one code per source outcome (README "Source status").
# With NTjP's ProcessingStatus: answered = DataFromSource, cached = DataFromCache, stale =
# DataFromCacheSynchFailed, failed = NoDataSynchFailed; not-asked: the source was not asked (why in
# the text) and nothing is missing.
SOURCE_STATUS_SYSTEM = "urn:fhir-facade:source-status"
LATENCY_URL = "urn:fhir-facade:source-latency-ms"  # extension: how long the source took, in ms
_STATUS_CODE = {
    SourceStatus.OK: "answered",
    SourceStatus.CACHED: "cached",
    SourceStatus.STALE: "stale",
    SourceStatus.SKIPPED: "not-asked",
    SourceStatus.TIMEOUT: "failed",
    SourceStatus.ERROR: "failed",
    SourceStatus.INVALID: "failed",
    SourceStatus.UNAVAILABLE: "failed",  # not asked after repeated failures: its data is missing
    SourceStatus.OVERLOADED: "failed",  # not asked (or heard) in time, the facade's load: data missing
}
_ISSUE_CODE = {
    SourceStatus.TIMEOUT: "timeout",
    SourceStatus.ERROR: "transient",
    SourceStatus.INVALID: "processing",
    SourceStatus.UNAVAILABLE: "transient",
    SourceStatus.OVERLOADED: "throttled",  # the facade's own load management, not the source
    SourceStatus.STALE: "transient",
    SourceStatus.OK: "informational",
    SourceStatus.CACHED: "informational",
    SourceStatus.SKIPPED: "informational",
}


# an answer cut off mid-way (SourceOutcome.partial): what arrived before the cut is in the answer
_PARTIAL = "; what arrived before the cut is in this answer"


def source_outcome(outcome: SourceOutcome, description: str) -> FhirDict:
    """How one source took part in the answer — every source the answer asked, or chose not to ask,
    gets one — the FHIR form of NTjP's ProcessingStatus. ``details.coding`` carries the source name
    (system urn:fhir-facade:source) and its status code (urn:fhir-facade:source-status); the
    extension its latency in milliseconds; severity is warning when data is or may be missing."""
    label = f"'{outcome.source}' ({description})" if description else f"'{outcome.source}'"
    consequence = {
        SourceStatus.OK: "",
        SourceStatus.CACHED: "",
        SourceStatus.SKIPPED: "",
        SourceStatus.STALE: "; its data may be out of date",
    }.get(outcome.status, _PARTIAL if outcome.partial else "; its data is missing from this answer")
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "extension": [{"url": LATENCY_URL, "valueDecimal": round(outcome.latency_ms, 1)}],
                "severity": "warning" if outcome.status.degraded else "information",
                "code": _ISSUE_CODE.get(outcome.status, "exception"),
                "details": {
                    "coding": [
                        {"system": SOURCE_SYSTEM, "code": outcome.source},
                        {"system": SOURCE_STATUS_SYSTEM, "code": _STATUS_CODE[outcome.status]},
                    ],
                    "text": f"Source {label} {outcome.detail}{consequence}.",
                },
            }
        ],
    }


PDL_SYSTEM = "urn:fhir-facade:pdl"
_WITHHELD_TEXT = {
    Withheld.CONSENT: (
        "More information about this patient exists at other care providers. It can be shown with "
        "the patient's consent (register it: POST Consent) or, when consent cannot be asked for, "
        "by emergency access (header X-Emergency-Access)."
    ),
    Withheld.BLOCKED: (
        "Some information about this patient is blocked by the patient (spärr). It can be shown only "
        "with the patient's consent naming the blocked care provider or unit, or by emergency access "
        "(header X-Emergency-Access)."
    ),
    Withheld.UNATTRIBUTED: (
        "Some information about this patient is withheld because the care provider it belongs to is "
        "not known, so no consent can be shown to cover it. It can be shown only by emergency access "
        "(header X-Emergency-Access)."
    ),
}


def withheld_outcome(reasons: Iterable[Withheld]) -> FhirDict:
    """The PDL hint for care staff: more exists behind consent or a block (never for the patient)."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {
                "severity": "information",
                "code": "suppressed",
                "details": {"coding": [{"system": PDL_SYSTEM, "code": w.value}], "text": _WITHHELD_TEXT[w]},
            }
            for w in sorted(reasons, key=lambda w: w.value)
        ],
    }


def page_links(
    url: str,
    params: Sequence[tuple[str, str]],
    offset: int,
    count: int,
    total: int,
    *,
    token: str | None = None,
) -> list[dict[str, str]]:
    """self/first/previous/next/last: by offset over a deterministic order, from the snapshot
    ``token`` names when there is one (``_page_token``, proxy/paging.py), else walked again."""
    kept = [("_page_token", token)] if token is not None else []

    def link(relation: str, at: int) -> dict[str, str]:
        query = [*params, *kept, *([("_offset", str(at))] if at else [])]
        return {"relation": relation, "url": f"{url}?{urlencode(query)}" if query else url}

    links = [link("self", offset), link("first", 0)]
    if count > 0:
        last = (total - 1) // count * count if total else 0
        if offset > 0:
            links.append(link("previous", min(max(0, offset - count), last)))
        if offset + count < total:
            links.append(link("next", offset + count))
        links.append(link("last", last))
    return links


def searchset(
    page: Sequence[FhirDict],
    *,
    total: int | None,
    base_url: str,
    links: list[dict[str, str]],
    outcomes: Sequence[FhirDict] = (),
) -> FhirDict:
    # (one ``search`` object for every entry of a mode: a Bundle is serialised, never modified)
    match, outcome = {"mode": "match"}, {"mode": "outcome"}
    entries: list[FhirDict] = [
        {"fullUrl": f"{base_url}/{r['resourceType']}/{r['id']}", "resource": r, "search": match} for r in page
    ]
    entries.extend({"resource": o, "search": outcome} for o in outcomes)
    bundle: FhirDict = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        bundle["total"] = total
    bundle["link"] = links
    if entries:
        bundle["entry"] = entries
    return bundle
