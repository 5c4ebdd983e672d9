"""The dedupe rule and the sort order (proxy.merge), on hand-made resources."""

from __future__ import annotations

from proxy.fhir.searchparams import sort_time
from proxy.merge import ALSO_IN_SOURCE_SYSTEM, merge
from proxy.types import MappedResource

NOPAT = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "NOPAT"}


def mr(rtype: str, rid: str, source: str, origin: str, priority: int, **fields: object) -> MappedResource:
    meta = {"source": f"urn:fhir-facade:source:{source}", **fields.pop("meta", {})}  # type: ignore[dict-item]
    references = bool(fields.pop("references", False))
    return MappedResource(
        resource={"resourceType": rtype, "id": rid, "meta": meta, **fields},
        source=source,
        mapping=f"{source}/x",
        references=references,
        origin_key=f"{rtype}|{origin}",
        priority=priority,
    )


def test_same_origin_merges_and_the_priority_source_wins() -> None:
    out = merge(
        [
            mr(
                "Condition",
                "p-npo-1",
                "npo",
                "COSM|D1",
                2,
                meta={"security": [NOPAT]},
                onsetDateTime="2020-01-01",
            ),
            mr("Condition", "p-cosmic-1", "cosmic", "COSM|D1", 0, onsetDateTime="2020-01-01"),
        ],
        sort_time,
    )
    assert len(out) == 1
    kept = out[0]
    assert kept["id"] == "p-cosmic-1"
    assert kept["meta"]["source"].endswith("cosmic")
    assert kept["meta"]["tag"] == [{"system": ALSO_IN_SOURCE_SYSTEM, "code": "npo"}]
    assert kept["meta"]["security"] == [NOPAT]  # the strictest copy's labels survive (fail closed)


def test_look_alikes_with_different_origins_are_both_kept() -> None:
    out = merge(
        [
            mr("Condition", "a", "cosmic", "COSM|D1", 0, onsetDateTime="2020-01-01"),
            mr("Condition", "b", "npo", "OTHER|X9", 2, onsetDateTime="2020-01-01"),
            mr("Flag", "c", "cosmic", "COSM|D1", 0),  # same origin, other type: another fact
        ],
        sort_time,
    )
    assert sorted(r["id"] for r in out) == ["a", "b", "c"]


def test_references_to_a_dropped_copy_point_to_the_kept_one() -> None:
    out = merge(
        [
            mr("Condition", "npo-c", "npo", "COSM|D1", 2),
            mr("Condition", "cos-c", "cosmic", "COSM|D1", 0),
            mr(
                "Encounter",
                "npo-e",
                "npo",
                "OTHER|E1",
                2,
                references=True,
                reasonReference=[{"reference": "Condition/npo-c"}],
            ),
        ],
        sort_time,
    )
    enc = next(r for r in out if r["resourceType"] == "Encounter")
    assert enc["reasonReference"] == [{"reference": "Condition/cos-c"}]


def test_input_is_not_modified() -> None:
    a = mr("Condition", "a", "npo", "O|1", 2)
    b = mr("Condition", "b", "cosmic", "O|1", 0)
    merge([a, b], sort_time)
    assert "tag" not in b.resource["meta"]


def test_order_patient_first_then_type_then_newest_then_id() -> None:
    out = merge(
        [
            mr("Observation", "o-old", "cosmic", "1", 0, effectiveDateTime="2020-01-01"),
            mr("Observation", "o-undated", "cosmic", "2", 0),
            mr("Observation", "o-new", "cosmic", "3", 0, effectiveDateTime="2024-05-01T10:00:00+02:00"),
            mr("Condition", "c", "cosmic", "4", 0),
            mr("Patient", "p", "cosmic", "5", 0),
            mr(
                "Observation",
                "o-new-b",
                "npo",
                "6",
                2,
                effectivePeriod={"start": "2024-05-01T10:00:00+02:00"},
            ),
        ],
        sort_time,
    )
    assert [r["id"] for r in out] == ["p", "c", "o-new", "o-new-b", "o-old", "o-undated"]
