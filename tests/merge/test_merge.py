"""The dedupe rule and the sort order (proxy.merge), on hand-made resources."""

from __future__ import annotations

from proxy.fhir.searchparams import sort_time
from proxy.mapping.engine import references
from proxy.merge.facts import ALSO_IN_SOURCE_SYSTEM, merge
from proxy.types import MappedResource

NOPAT = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "NOPAT"}


def mr(rtype: str, rid: str, source: str, origin: str, priority: int, **fields: object) -> MappedResource:
    meta = {"source": f"urn:fhir-facade:source:{source}", **fields.pop("meta", {})}  # type: ignore[dict-item]
    resource = {"resourceType": rtype, "id": rid, "meta": meta, **fields}
    return MappedResource(
        resource=resource,
        source=source,
        mapping=f"{source}/x",
        origin_key=f"{rtype}|{origin}",
        priority=priority,
        refs=references(resource),
        clinical_time=sort_time(resource),
    )


def merged(resources: list[MappedResource]) -> list[dict[str, object]]:
    return [r.resource for r in merge(resources)]


def test_same_origin_merges_and_the_priority_source_wins() -> None:
    out = merged(
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
        ]
    )
    assert len(out) == 1
    kept = out[0]
    assert kept["id"] == "p-cosmic-1"
    assert kept["meta"]["source"].endswith("cosmic")
    assert kept["meta"]["tag"] == [{"system": ALSO_IN_SOURCE_SYSTEM, "code": "npo"}]
    assert kept["meta"]["security"] == [NOPAT]  # the strictest copy's labels survive (fail closed)


def test_look_alikes_with_different_origins_are_both_kept() -> None:
    out = merged(
        [
            mr("Condition", "a", "cosmic", "COSM|D1", 0, onsetDateTime="2020-01-01"),
            mr("Condition", "b", "npo", "OTHER|X9", 2, onsetDateTime="2020-01-01"),
            mr("Flag", "c", "cosmic", "COSM|D1", 0),  # same origin, other type: another fact
        ]
    )
    assert sorted(r["id"] for r in out) == ["a", "b", "c"]


def test_references_to_a_dropped_copy_point_to_the_kept_one() -> None:
    out = merged(
        [
            mr("Condition", "npo-c", "npo", "COSM|D1", 2),
            mr("Condition", "cos-c", "cosmic", "COSM|D1", 0),
            mr(
                "Encounter",
                "npo-e",
                "npo",
                "OTHER|E1",
                2,
                reasonReference=[{"reference": "Condition/npo-c"}],
            ),
        ]
    )
    enc = next(r for r in out if r["resourceType"] == "Encounter")
    assert enc["reasonReference"] == [{"reference": "Condition/cos-c"}]


def test_rewritten_references_are_the_ones_redaction_checks() -> None:
    enc = mr(
        "Encounter",
        "npo-e",
        "npo",
        "OTHER|E1",
        2,
        reasonReference=[{"reference": "Condition/npo-c"}, {"reference": "Condition/cos-c"}],
        subject={"reference": "Patient/p"},
    )
    out = merge(
        [mr("Condition", "npo-c", "npo", "COSM|D1", 2), mr("Condition", "cos-c", "cosmic", "COSM|D1", 0), enc]
    )
    kept = next(r for r in out if r.resource["resourceType"] == "Encounter")
    assert kept.refs == ("Condition/cos-c", "Patient/p")  # the dropped copy's id is gone, no duplicate
    assert kept.refs == references(kept.resource)
    assert enc.refs == ("Condition/npo-c", "Condition/cos-c", "Patient/p")  # the input is untouched


def test_input_is_not_modified() -> None:
    a = mr("Condition", "a", "npo", "O|1", 2)
    b = mr("Condition", "b", "cosmic", "O|1", 0)
    merge([a, b])
    assert "tag" not in b.resource["meta"]


def test_order_patient_first_then_type_then_newest_then_id() -> None:
    out = merged(
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
        ]
    )
    assert [r["id"] for r in out] == ["p", "c", "o-new", "o-new-b", "o-old", "o-undated"]


def test_resources_about_the_merged_patient_are_used_as_they_are() -> None:
    # every source's Patient has the request's patient id: merging them renames nothing, so the
    # resources that refer to the patient (shared with the cache) are neither copied nor rewritten
    cond = mr("Condition", "c", "npo", "O|1", 2, subject={"reference": "Patient/p"})
    out = merge([mr("Patient", "p", "cosmic", "P|1", 0), mr("Patient", "p", "npo", "P|1", 2), cond])
    assert [r.resource["id"] for r in out] == ["p", "c"]
    assert out[1] is cond
    assert out[0].resource["meta"]["tag"] == [{"system": ALSO_IN_SOURCE_SYSTEM, "code": "npo"}]
