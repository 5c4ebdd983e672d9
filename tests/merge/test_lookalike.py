"""The possible-duplicate rule (proxy/merge/lookalike.py): properties over generated records, and the
rule's edges per type."""

from __future__ import annotations

import copy
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.merge.lookalike import POSSIBLE_DUPLICATE, mark
from proxy.types import MappedResource

ATC = "http://www.whocc.no/atc"
NPL = "urn:oid:1.2.752.129.2.1.5.1"
ICD = "urn:oid:1.2.752.116.1.1.1.1.3"
ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"
TYPES = ["MedicationStatement", "Encounter", "Condition"]
# one dose written the ways sources write it: (amount, per day) -> texts the rule must read alike
DOSE_TEXTS = {
    (1, 1): ["1 tablett 1 gång dagligen", "1 tablett dagligen", "1 tablett kl 08", "1 Tablett på morgonen"],
    (1, 2): ["1 tablett 2 gånger dagligen", "1 tablett morgon och kväll", "1 tablett kl 08 och 20"],
    (2, 1): ["2 tabletter 1 gång dagligen", "2 tabletter kl 8", "2 tabletter  på kvällen."],
    (2, 2): ["2 tabletter 2 gånger dagligen", "2 tabletter morgon och kväll"],
}
UNREAD = ["1-2 doser vid behov", "1 tablett 3 gånger dagligen i 5 dagar"]  # the grammar does not read


def strip(resource: dict[str, Any]) -> dict[str, Any]:
    """A marked resource without its marks."""
    out = dict(resource)
    meta = dict(out["meta"])
    tags = [t for t in meta.get("tag", []) if t.get("system") != POSSIBLE_DUPLICATE]
    if tags:
        meta["tag"] = tags
    else:
        meta.pop("tag", None)
    out["meta"] = meta
    ext = [e for e in out.get("extension", []) if e.get("url") != POSSIBLE_DUPLICATE]
    if ext:
        out["extension"] = ext
    else:
        out.pop("extension", None)
    return out


def twins(resource: dict[str, Any]) -> list[str]:
    return [
        e["valueReference"]["reference"]
        for e in resource.get("extension", [])
        if e["url"] == POSSIBLE_DUPLICATE
    ]


def mapped(resource: dict[str, Any], producer: str, source: str) -> MappedResource:
    origin = f"{resource['resourceType']}|{producer}|{resource['id']}"
    return MappedResource(resource, source, f"{source}/x", origin, 0, ())


@st.composite
def records(draw: Any) -> list[tuple[dict[str, Any], MappedResource, dict[str, Any]]]:
    """Resources with what they were generated from (the oracle's facts)."""
    out = []
    for i in range(draw(st.integers(min_value=1, max_value=9))):
        rtype = draw(st.sampled_from(TYPES))
        f: dict[str, Any] = {
            "type": rtype,
            "producer": draw(st.sampled_from(["P1", "P2", "P3"])),
            "source": draw(st.sampled_from(["cosmic", "viva", "npo"])),
            "subject": draw(st.sampled_from(["Patient/a", "Patient/a", "Patient/b"])),
            "code": draw(st.sampled_from(["X1", "X2"])),
            "start": draw(st.integers(min_value=1, max_value=6)),
            "error": draw(st.booleans()) and draw(st.booleans()) and draw(st.booleans()),
        }
        length = draw(st.one_of(st.none(), st.integers(min_value=0, max_value=3)))
        f["end"] = None if length is None else f["start"] + length
        r: dict[str, Any] = {
            "resourceType": rtype,
            "id": f"r{i}",
            "meta": {"source": f"urn:fhir-facade:source:{f['source']}"},
            "subject": {"reference": f["subject"]},
        }
        if draw(st.booleans()):
            r["meta"]["tag"] = [{"system": "urn:fhir-facade:also-in-source", "code": "npo"}]
        if draw(st.booleans()):
            r["extension"] = [{"url": "urn:other", "valueString": "kept"}]
        if rtype == "MedicationStatement":
            f["npl"] = draw(st.sampled_from([None, "N1", "N2"]))
            f["strength"] = draw(st.sampled_from([None, 5, 10]))
            dose = draw(st.sampled_from([None, *DOSE_TEXTS, *UNREAD]))
            f["dose"] = dose
            codings = [{"system": ATC, "code": f["code"]}]
            if f["npl"]:
                codings.append({"system": NPL, "code": f["npl"]})
            concept: dict[str, Any] = {"coding": codings}
            if f["strength"]:
                concept["text"] = f"Drug {f['strength']} mg tablett"
            period = {"start": f"2024-01-{f['start']:02d}"}
            if f["end"] is not None:
                period["end"] = f"2024-01-{f['end']:02d}"
            r |= {"status": "entered-in-error" if f["error"] else "active"}
            r |= {"medicationCodeableConcept": concept, "effectivePeriod": period}
            if isinstance(dose, tuple):
                r["dosage"] = [{"text": draw(st.sampled_from(DOSE_TEXTS[dose]))}]
            elif dose is not None:
                r["dosage"] = [{"text": dose}]
        elif rtype == "Encounter":
            period = {"start": f"2024-01-{f['start']:02d}T10:00:00+01:00"}
            if f["end"] is not None:
                period["end"] = f"2024-01-{f['end']:02d}T12:00:00+01:00"
            r |= {
                "status": "entered-in-error" if f["error"] else "finished",
                "class": {"system": ACT, "code": f["code"]},
                "period": period,
            }
        else:
            f["clinical"] = draw(st.sampled_from([None, "active", "resolved"]))
            r["code"] = {"coding": [{"system": ICD, "code": f["code"]}]}
            r["onsetDateTime"] = f"2024-01-{f['start']:02d}T10:00:00+01:00"
            if f["end"] is not None:
                r["abatementDateTime"] = f"2024-01-{f['end']:02d}T12:00:00+01:00"
            if f["clinical"]:
                r["clinicalStatus"] = {"coding": [{"system": CLINICAL, "code": f["clinical"]}]}
            ver = "entered-in-error" if f["error"] else "confirmed"
            r["verificationStatus"] = {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": ver}
                ]
            }
        out.append((r, mapped(r, f["producer"], f["source"]), f))
    return out


def _both(a: Any, b: Any) -> bool:
    return a is None or b is None or a == b


def oracle(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """From what the records were generated from: are they possible duplicates?"""
    inf = 99
    return (
        a["type"] == b["type"]
        and a["producer"] != b["producer"]
        and a["subject"] == b["subject"]
        and not a["error"]
        and not b["error"]
        and a["code"] == b["code"]
        and a["start"] <= (inf if b["end"] is None else b["end"])
        and b["start"] <= (inf if a["end"] is None else a["end"])
        and _both(a.get("npl"), b.get("npl"))
        and _both(a.get("strength"), b.get("strength"))
        and _both(a.get("dose"), b.get("dose"))
        and _both(a.get("clinical"), b.get("clinical"))
    )


@settings(max_examples=300, deadline=None)
@given(records(), st.randoms(use_true_random=False))
def test_marks_exactly_the_look_alikes_and_change_nothing_else(
    generated: list[tuple[dict[str, Any], MappedResource, dict[str, Any]]], rnd: random.Random
) -> None:
    shown = [r for r, _, _ in generated]
    kept = [m for _, m, _ in generated]
    facts = {f"{r['resourceType']}/{r['id']}": f for r, _, f in generated}
    before = copy.deepcopy(shown)
    out = mark(kept, shown)
    assert shown == before  # the input (shared with the cache) is not modified
    # never removes, reorders or renames a resource, never alters anything but the marks
    assert [strip(r) for r in out] == before
    by_key = {f"{r['resourceType']}/{r['id']}": r for r in out}
    for k, r in by_key.items():
        names = twins(r)
        assert names == sorted(set(names))
        for t in names:
            assert k in twins(by_key[t])  # symmetric
        # exactly the records that look alike (records differing in code, period or dose: never)
        assert set(names) == {t for t in facts if t != k and oracle(facts[k], facts[t])}
        tags = [x["code"] for x in r["meta"].get("tag", []) if x["system"] == POSSIBLE_DUPLICATE]
        assert tags == sorted({facts[t]["source"] for t in names})
    # deterministic: the same records in another order get the same marks
    order = list(range(len(shown)))
    rnd.shuffle(order)
    again = mark([kept[i] for i in order], [shown[i] for i in order])
    assert {f"{r['resourceType']}/{r['id']}": r for r in again} == by_key
    # hidden is absent: over a subset, the marks are the full set's restricted to it — a resource
    # whose look-alike is not shown carries no sign of it
    visible = [r for r in shown if rnd.random() < 0.6]
    keys = {f"{r['resourceType']}/{r['id']}" for r in visible}
    for r in mark(kept, visible):
        k = f"{r['resourceType']}/{r['id']}"
        assert set(twins(r)) == set(twins(by_key[k])) & keys
        if not twins(r):
            assert r == next(v for v in visible if v["id"] == r["id"])


@pytest.mark.parametrize(
    ("a", "b", "same"),
    [
        ("1 tablett 1 gång dagligen", "1 tablett kl 08", True),  # Tolvan's ramipril, Cosmic and Viva
        ("1 tablett på morgonen", "1 tablett på morgonen", True),  # Lennart's furosemide
        ("1 tablett dagligen", "1 TABLETT KL 8.", True),
        ("1 tablett morgon och kväll", "1 tablett 2 gånger dagligen", True),
        ("1 tablett kl 08, 14 och 20", "1 tablett 3 gånger dagligen", True),
        ("1 tablett 2 gånger dagligen", "1 tablett dagligen", False),
        ("2 tabletter dagligen", "1 tablett dagligen", False),
        ("1 kapsel dagligen", "1 tablett dagligen", False),
        ("0,5 tablett dagligen", "0.5 tablett kl 08", True),
        ("1-2 doser vid behov", "1-2 doser vid behov", True),  # not read: the same text only
        ("1-2 doser vid behov", "2 doser vid behov", False),
        ("1 tablett", "1 tablett dagligen", False),  # no frequency: not read
        ("1 tablett 3 gånger dagligen i 5 dagar", "1 tablett 3 gånger dagligen", False),
    ],
)
def test_doses_are_compared_by_amount_unit_and_times_a_day(a: str, b: str, same: bool) -> None:
    shown = [_statement("r1", a), _statement("r2", b)]
    out = mark([mapped(shown[0], "P1", "cosmic"), mapped(shown[1], "P2", "viva")], shown)
    assert bool(twins(out[0])) is same and bool(twins(out[1])) is same


def _statement(rid: str, dose: str | None, text: str = "Ramipril 5 mg tablett", **kw: Any) -> dict[str, Any]:
    r: dict[str, Any] = {
        "resourceType": "MedicationStatement",
        "id": rid,
        "meta": {},
        "status": "active",
        "medicationCodeableConcept": {"coding": [{"system": ATC, "code": "C09AA05"}], "text": text},
        "subject": {"reference": "Patient/a"},
        "effectivePeriod": {"start": "2024-01-01"},
    }
    if dose is not None:
        r["dosage"] = [{"text": dose}]
    return r | kw


def _condition(rid: str, code: str = "I10", **kw: Any) -> dict[str, Any]:
    return {
        "resourceType": "Condition",
        "id": rid,
        "meta": {},
        "code": {"coding": [{"system": ICD, "code": code}]},
        "subject": {"reference": "Patient/a"},
        "onsetDateTime": "2019-03-03T10:15:00+01:00",
    } | kw


def _marked(a: dict[str, Any], b: dict[str, Any], producers: tuple[str, str] = ("P1", "P2")) -> bool:
    out = mark([mapped(a, producers[0], "cosmic"), mapped(b, producers[1], "npo")], [a, b])
    assert bool(twins(out[0])) == bool(twins(out[1]))
    return bool(twins(out[0]))


def test_the_rule_per_type_at_its_edges() -> None:
    active = {"clinicalStatus": {"coding": [{"system": CLINICAL, "code": "active"}]}}
    resolved = {
        "clinicalStatus": {"coding": [{"system": CLINICAL, "code": "resolved"}]},
        "abatementDateTime": "2024-01-01T10:00:00+01:00",
    }
    # Condition: the same diagnosis from two producers, both in force
    assert _marked(_condition("c1", **active), _condition("c2", **active))
    assert _marked(_condition("c1", **active), _condition("c2"))  # a status only one has: not compared
    assert not _marked(_condition("c1", **active), _condition("c2", **resolved))
    assert not _marked(_condition("c1"), _condition("c2", code="I11"))
    assert not _marked(_condition("c1"), _condition("c2"), producers=("P1", "P1"))  # one producer's two
    no_onset = {k: v for k, v in _condition("c2").items() if k != "onsetDateTime"}
    assert not _marked(_condition("c1"), no_onset)  # no start: not compared, never marked
    later = _condition("c2", onsetDateTime="2024-02-01", **active)
    assert not _marked(_condition("c1", **resolved), later)  # ended before the other began
    assert not _marked(_condition("c1"), _condition("c2", abatementString="in childhood"))
    other_patient = _condition("c2", subject={"reference": "Patient/b"})
    assert not _marked(_condition("c1"), other_patient)
    # MedicationStatement: strength and NPL where both have them; a medicationReference never
    assert _marked(_statement("m1", "1 tablett dagligen"), _statement("m2", None))
    assert not _marked(_statement("m1", None), _statement("m2", None, text="Ramipril 10 mg tablett"))
    assert _marked(_statement("m1", None), _statement("m2", None, text="Ramipril"))
    npl = {
        "medicationCodeableConcept": {
            "coding": [{"system": ATC, "code": "C09AA05"}, {"system": NPL, "code": "1"}]
        }
    }
    npl2 = {
        "medicationCodeableConcept": {
            "coding": [{"system": ATC, "code": "C09AA05"}, {"system": NPL, "code": "2"}]
        }
    }
    assert _marked(_statement("m1", None, **npl), _statement("m2", None))
    assert not _marked(_statement("m1", None, **npl), _statement("m2", None, **npl2))
    ref = {k: v for k, v in _statement("m2", None).items() if k != "medicationCodeableConcept"}
    assert not _marked(_statement("m1", None), ref | {"medicationReference": {"reference": "Medication/x"}})
    ended = _statement("m1", None, effectivePeriod={"start": "2023-01-01", "end": "2023-12-31"})
    assert not _marked(ended, _statement("m2", None))  # the periods do not overlap
    one_day = _statement("m1", None, effectivePeriod={"start": "2023-01-01", "end": "2024-01-01"})
    assert _marked(one_day, _statement("m2", None))  # a date is its whole day: they share one
    unreadable = _statement("m1", None, effectivePeriod={"start": "the first of May"})
    assert not _marked(unreadable, _statement("m2", None))
    # Encounter: class, and the type's codings where both have the system
    stay = {
        "resourceType": "Encounter",
        "id": "e1",
        "meta": {},
        "status": "finished",
        "class": {"system": ACT, "code": "IMP"},
        "subject": {"reference": "Patient/a"},
        "period": {"start": "2024-05-10T16:00:00+02:00", "end": "2024-05-16T11:00:00+02:00"},
    }
    assert _marked(stay, stay | {"id": "e2", "type": [{"text": "Vårdtillfälle"}]})
    assert not _marked(stay, stay | {"id": "e2", "class": {"system": ACT, "code": "AMB"}})
    typed = [{"coding": [{"system": "urn:t", "code": "1"}]}]
    other = [{"coding": [{"system": "urn:t", "code": "2"}]}]
    assert not _marked(stay | {"type": typed}, stay | {"id": "e2", "type": other})
    touching = {"start": "2024-05-16T11:00:00+02:00", "end": "2024-05-20T11:00:00+02:00"}
    assert not _marked(stay, stay | {"id": "e2", "period": touching})  # one ends as the other begins
    moment = {"start": "2024-05-12T09:00:00+02:00", "end": "2024-05-12T09:00:00+02:00"}
    assert _marked(stay, stay | {"id": "e2", "period": moment})  # a period is at least its start
    assert not _marked(stay, stay | {"id": "e2", "status": "entered-in-error"})


def _visit(rid: str, start: str, end: str | None, code: str = "AMB") -> dict[str, Any]:
    period = {"start": start} | ({"end": end} if end is not None else {})
    return {
        "resourceType": "Encounter",
        "id": rid,
        "meta": {},
        "status": "finished",
        "class": {"system": ACT, "code": code},
        "subject": {"reference": "Patient/a"},
        "period": period,
    }


def test_only_visits_at_about_the_same_time_are_look_alikes_however_long_the_history() -> None:
    """A long history (one class, ten years, two producers): a visit is marked with the other
    producer's visits its period overlaps and with nothing else — not the same visit a year later,
    and a period still going on overlaps every later one, however many end in between."""
    visits, producers = [], []
    for year in range(2015, 2025):
        for producer in ("P1", "P2"):
            visits.append(
                _visit(f"{producer}-{year}", f"{year}-03-01T10:00:00+01:00", f"{year}-03-01T11:00:00+01:00")
            )
            producers.append(producer)
    ongoing = _visit("P1-ongoing", "2014-06-01T08:00:00+02:00", None)  # no end: still going on
    visits.append(ongoing)
    producers.append("P1")
    kept = [mapped(v, p, "cosmic" if p == "P1" else "npo") for v, p in zip(visits, producers, strict=True)]
    out = {r["id"]: twins(r) for r in mark(kept, visits)}
    for year in range(2015, 2025):
        assert out[f"P1-{year}"] == [f"Encounter/P2-{year}"]
        assert out[f"P2-{year}"] == sorted([f"Encounter/P1-{year}", "Encounter/P1-ongoing"])
    assert out["P1-ongoing"] == sorted(f"Encounter/P2-{year}" for year in range(2015, 2025))
