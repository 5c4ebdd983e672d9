"""Property: whatever the labels and references, redaction never lets a denied resource — or a
reference to one — through, and keeps every resource the audience may see."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.audience import DEFAULT_AUDIENCES
from proxy.mapping.engine import references
from proxy.redact.policy import compile_policy, redact
from proxy.settings import load_settings
from proxy.types import MappedResource

POLICY = compile_policy(load_settings().policy)
LABELS = [
    {"system": "urn:fhir-facade:security-label", "code": "THREAT"},
    {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "NOPAT"},
    {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"},
    {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "V"},
    {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "N"},
    {"system": "urn:somebody-elses:label", "code": "SECRET"},  # unknown to the policy
]
TYPES = ["Condition", "Flag", "Encounter", "DocumentReference", "Observation"]


@st.composite
def bundles(draw: Any) -> list[dict[str, Any]]:
    n = draw(st.integers(min_value=1, max_value=12))
    ids = [f"r{i}" for i in range(n)]
    types = [draw(st.sampled_from(TYPES)) for _ in ids]
    out = []
    for rid, rtype in zip(ids, types, strict=True):
        labels = draw(st.lists(st.sampled_from(LABELS), max_size=3, unique_by=lambda x: x["code"]))
        targets = draw(st.lists(st.integers(min_value=0, max_value=n - 1), max_size=4))
        refs = [{"reference": f"{types[t]}/{ids[t]}", "display": f"about {ids[t]}"} for t in targets]
        resource: dict[str, Any] = {
            "resourceType": rtype,
            "id": rid,
            "meta": {"source": "urn:x", **({"security": labels} if labels else {})},
            "text": {"status": "generated", "div": f"<div>narrative of {rid}</div>"},
        }
        if refs:
            resource["extension"] = [{"url": "urn:x", "valueReference": r} for r in refs]
            resource["basedOn"] = refs[:1]
        if draw(st.booleans()):
            contained_label = draw(st.sampled_from(LABELS))
            resource["contained"] = [
                {
                    "resourceType": "Observation",
                    "id": "c1",
                    "meta": {"security": [contained_label]},
                    "status": "final",
                }
            ]
            resource["hasMember"] = [{"reference": "#c1"}]
        out.append(resource)
    return out


def mapped(resources: list[dict[str, Any]]) -> list[MappedResource]:
    """As the mapping engine hands them on: with the references each makes read beside it."""
    return [
        MappedResource(
            resource=r, source="x", mapping="x/x", origin_key=r["id"], priority=0, refs=references(r)
        )
        for r in resources
    ]


def allowed(resource: dict[str, Any], audience: str) -> bool:
    granted = {
        "ambulance": {"THREAT", "NOPAT", "R"},
        "clinician": {"NOPAT", "R", "V"},
        "homecare": {"NOPAT", "R"},
        "patient": {"R"},
    }[audience] | {"N"}
    return all(
        s["code"] in granted and s["system"] != "urn:somebody-elses:label"
        for s in resource.get("meta", {}).get("security", [])
    )


def strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in strings(v)]
    return [node] if isinstance(node, str) else []


@settings(max_examples=300, deadline=None)
@given(bundles(), st.sampled_from(DEFAULT_AUDIENCES.names))
def test_redaction_never_lets_a_denied_resource_or_reference_through(
    resources: list[dict[str, Any]], audience: str
) -> None:
    out = redact(mapped(resources), POLICY, audience)
    denied = {r["id"] for r in resources if not allowed(r, audience)}
    kept = {r["id"] for r in out}
    assert kept == {r["id"] for r in resources} - denied  # nothing denied stays, nothing allowed goes
    for r in out:
        text = set(strings(r))
        for rid in denied:
            assert not {f"{t}/{rid}" for t in TYPES} & text, "a reference to a denied resource"
            assert f"about {rid}" not in text, "the display of a reference to a denied resource"
        original = next(x for x in resources if x["id"] == r["id"])
        for ext in original.get("extension", []):
            target = ext["valueReference"]["reference"].split("/")[1]
            if target not in denied:  # references between visible resources are kept
                assert ext["valueReference"]["reference"] in text
        assert "text" not in r  # narrative written before redaction never survives it
        for c in r.get("contained", []):
            assert allowed(c, audience)
        if not any(allowed(c, audience) for c in resources_contained(resources, r["id"])):
            assert "hasMember" not in r


def resources_contained(resources: list[dict[str, Any]], rid: str) -> list[dict[str, Any]]:
    return next(r for r in resources if r["id"] == rid).get("contained", [])


def test_input_is_left_untouched() -> None:
    resources = [
        {"resourceType": "Flag", "id": "a", "meta": {"security": [LABELS[0]]}},
        {
            "resourceType": "Encounter",
            "id": "b",
            "reasonReference": [{"reference": "Flag/a"}],
            "text": {"div": "x"},
        },
    ]
    before = repr(resources)
    out = redact(mapped(resources), POLICY, "clinician")
    assert out == [{"resourceType": "Encounter", "id": "b"}]
    assert repr(resources) == before
