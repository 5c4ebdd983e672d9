"""Code systems a receiver recognises, over every demo patient's $everything: ICF as one URI from
every source, and diagnoses on the problem list with an end where the source gives one."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fhir.resources.R4B.bundle import Bundle

from proxy.simulators.population import DEMO_PEOPLE, TOLVAN
from tests.conftest import BASE, pid, validate

ICF = "http://hl7.org/fhir/sid/icf"
ICF_OTHER = ("who.int/classifications/icf", "1.2.752.116.1.1.3")  # WHO's web page, the Swedish OID
CATEGORY = "http://terminology.hl7.org/CodeSystem/condition-category"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"


def resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def source(resource: dict[str, Any]) -> str:
    return str(resource["meta"]["source"]).rsplit(":", 1)[-1]


async def everything(f: Any) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for person in DEMO_PEOPLE:
        status, bundle = await f.get(
            f"{BASE}/Patient/{pid(person.pnr)}/$everything", params={"_count": "500"}
        )
        assert status == 200
        Bundle.model_validate(bundle)
        out[person.pnr] = resources(bundle)
    return out


def _functional_status(r: dict[str, Any]) -> bool:
    return r["resourceType"] == "Observation" and any(
        c.get("code") == "survey" for cat in r.get("category", []) for c in cat.get("coding", [])
    )


async def test_icf_is_one_uri_from_viva_and_npo(facade: Any) -> None:
    async with facade() as f:
        found = await everything(f)
    per_source: dict[str, int] = {}
    for rs in found.values():
        text = str(rs)
        for other in ICF_OTHER:
            assert other not in text, other
        for r in rs:
            if not _functional_status(r):
                continue
            validate(r)
            codings = r["code"]["coding"] + r.get("valueCodeableConcept", {}).get("coding", [])
            assert codings, r["id"]
            for c in codings:
                # every ICF coding, Viva's domain and qualifier and NPÖ's PADL/disability domain alike
                assert c["system"] == ICF, (source(r), c)
                assert c["code"][:1] in "bdes", c  # an ICF component letter, not a local code
            per_source[source(r)] = per_source.get(source(r), 0) + len(codings)
    assert set(per_source) == {"viva", "npo"}, per_source
    assert per_source["npo"] >= 2 and per_source["viva"] >= 4


def test_no_mapping_writes_icf_under_another_uri() -> None:
    mappings = Path(__file__).resolve().parents[2] / "mappings"
    users = []
    for path in sorted(mappings.rglob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        assert "who.int/classifications/icf" not in text, path.name
        if ICF in text:
            users.append(path.relative_to(mappings).as_posix())
    assert {"viva/funktionsbedomningar.yaml", "npo/functional-status.yaml"} <= set(users)


def _category(r: dict[str, Any]) -> list[str]:
    return [c["code"] for cat in r["category"] for c in cat["coding"] if c["system"] == CATEGORY]


def _clinical(r: dict[str, Any]) -> str | None:
    codes = [c["code"] for c in r.get("clinicalStatus", {}).get("coding", []) if c["system"] == CLINICAL]
    return codes[0] if codes else None


async def test_diagnoses_are_problem_list_items_ended_where_the_source_ends_them(facade: Any) -> None:
    async with facade() as f:
        found = await everything(f)
    conditions = [r for rs in found.values() for r in rs if r["resourceType"] == "Condition"]
    by_source: dict[str, int] = {}
    abated = []
    for r in conditions:
        validate(r)
        # no demo record names the one care contact it belongs to: all are on the problem list
        assert _category(r) == ["problem-list-item"], (source(r), r["id"], r["category"])
        by_source[source(r)] = by_source.get(source(r), 0) + 1
        if "abatementDateTime" in r:
            # R4 con-4: an abatement only with an inactive, resolved or in-remission status
            assert _clinical(r) in ("inactive", "resolved", "remission"), r
            abated.append(r)
    assert set(by_source) == {"cosmic", "npo"}, by_source
    # Tolvan's radius fracture: resolved in Cosmic, with the date Cosmic gives for its end
    tolvan = {
        r["code"]["coding"][0]["code"]: r for r in found[TOLVAN.pnr] if r["resourceType"] == "Condition"
    }
    fracture = tolvan["S52.5"]
    assert _clinical(fracture) == "resolved"
    assert fracture["abatementDateTime"] > fracture["onsetDateTime"]
    assert fracture["abatementDateTime"].startswith("20") and fracture["abatementDateTime"][-6:] in (
        "+01:00",
        "+02:00",
    )
    assert [source(r) for r in abated] == ["cosmic"]
    # a diagnosis still in force has no end
    assert "abatementDateTime" not in tolvan["I10"] and _clinical(tolvan["I10"]) == "active"
