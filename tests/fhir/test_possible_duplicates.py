"""Look-alike duplicates on the simulators' real data: signposted as possible duplicates of each
other (proxy/merge/lookalike.py), never merged — and never over a record the asker may not see."""

from __future__ import annotations

from typing import Any

import pytest
from yarl import URL

from proxy.simulators import npo
from proxy.simulators.population import DEMO_PEOPLE, LENNART, TOLVAN
from tests.conftest import BASE, auth, pid, validate

TAG = EXT = "urn:fhir-facade:possible-duplicate"
ATC = "http://www.whocc.no/atc"


def matches(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def source(r: dict[str, Any]) -> str:
    return str(r["meta"]["source"]).rsplit(":", 1)[-1]


def key(r: dict[str, Any]) -> str:
    return f"{r['resourceType']}/{r['id']}"


def twins(r: dict[str, Any]) -> list[str]:
    return [e["valueReference"]["reference"] for e in r.get("extension", []) if e.get("url") == EXT]


def dup_tags(r: dict[str, Any]) -> list[str]:
    return [t["code"] for t in r.get("meta", {}).get("tag", []) if t.get("system") == TAG]


def what(r: dict[str, Any]) -> tuple[str, str, str]:
    """(type, source, what it is about): the drug's ATC code, the encounter's class and start."""
    if r["resourceType"] == "MedicationStatement":
        about = next(c["code"] for c in r["medicationCodeableConcept"]["coding"] if c["system"] == ATC)
    elif r["resourceType"] == "Encounter":
        about = f"{r['class']['code']} {r['period']['start'][:10]}"
    else:
        about = r["id"]
    return (r["resourceType"], source(r), about)


def pairs(resources: list[dict[str, Any]]) -> set[frozenset[tuple[str, str, str]]]:
    """The possible-duplicate pairs an answer marks, each by what its two resources are."""
    by_key = {key(r): r for r in resources}
    out = set()
    for r in resources:
        for t in twins(r):
            assert t in by_key, f"{key(r)} names {t}, which is not in the answer"
            out.add(frozenset({what(r), what(by_key[t])}))
    return out


async def everything(f: Any, pnr: str, **kw: Any) -> list[dict[str, Any]]:
    status, bundle = await f.get(f"{BASE}/Patient/{pid(pnr)}/$everything", params={"_count": "500"}, **kw)
    assert status == 200, bundle
    return matches(bundle)


async def test_the_demo_look_alikes_are_marked_as_each_others_possible_duplicates(facade: Any) -> None:
    async with facade() as f:
        found = {p.pnr: await everything(f, p.pnr) for p in DEMO_PEOPLE}
    marked = {pnr: pairs(rs) for pnr, rs in found.items()}
    assert marked[LENNART.pnr] == {
        # furosemide: Cosmic's list and the other region's record in NPÖ, same dose, both still taken
        frozenset({("MedicationStatement", "cosmic", "C03CA01"), ("MedicationStatement", "npo", "C03CA01")}),
        # the heart-failure admission, recorded by the region (Cosmic) and by the other region (NPÖ)
        frozenset({("Encounter", "cosmic", "IMP 2024-05-10"), ("Encounter", "npo", "IMP 2024-05-10")}),
    }, marked[LENNART.pnr]
    # ramipril: Cosmic's prescription and Viva's home-care list ("1 tablett 1 gång dagligen" and
    # "1 tablett kl 08": one tablet once a day)
    assert marked[TOLVAN.pnr] == {
        frozenset({("MedicationStatement", "cosmic", "C09AA05"), ("MedicationStatement", "viva", "C09AA05")})
    }
    assert all(not v for pnr, v in marked.items() if pnr not in (LENNART.pnr, TOLVAN.pnr)), marked
    for rs in found.values():
        for r in rs:
            validate(r)
            # symmetric, and the tag names the source of each look-alike
            by_key = {key(x): x for x in rs}
            for t in twins(r):
                assert key(r) in twins(by_key[t])
            assert dup_tags(r) == sorted({source(by_key[t]) for t in twins(r)})
    # never merged: both copies are there, each as its source gave it
    lennart = [what(r) for r in found[LENNART.pnr]]
    assert lennart.count(("MedicationStatement", "cosmic", "C03CA01")) == 1
    assert lennart.count(("MedicationStatement", "npo", "C03CA01")) == 1
    # the other NPÖ stay (angioedema, six weeks later) is not the same stay
    assert ("Encounter", "npo", "IMP 2024-06-23") in lennart


async def test_marks_survive_paging_type_filters_and_reads(facade: Any) -> None:
    lennart = pid(LENNART.pnr)
    async with facade() as f:
        full = {key(r): r for r in await everything(f, LENNART.pnr)}
        furosemide = {
            k: r
            for k, r in full.items()
            if r["resourceType"] == "MedicationStatement" and what(r)[2] == "C03CA01"
        }
        assert len(furosemide) == 2 and all(twins(r) for r in furosemide.values())
        # one resource a page, with a code filter: the twin is on another page, the mark is here
        seen = {}
        url = f"{BASE}/MedicationStatement"
        params: dict[str, str] | None = {"patient": lennart, "code": f"{ATC}|C03CA01", "_count": "1"}
        while url:
            status, bundle = await f.get(url, params=params)
            assert status == 200
            page = matches(bundle)
            assert len(page) <= 1
            for r in page:
                seen[key(r)] = r
            url = next(
                (URL(link["url"]).path_qs for link in bundle["link"] if link["relation"] == "next"), ""
            )
            params = None
        assert seen == furosemide
        # $everything narrowed to the type: the same marks
        status, bundle = await f.get(
            f"{BASE}/Patient/{lennart}/$everything", params={"_type": "MedicationStatement"}
        )
        assert {k: r for k, r in ((key(r), r) for r in matches(bundle)) if k in furosemide} == furosemide
        # a read: the same resource, and the reference it names can be read in turn
        for k, r in furosemide.items():
            status, read = await f.get(f"{BASE}/{k}")
            assert status == 200 and read == r
            (twin,) = twins(read)
            status, other = await f.get(f"{BASE}/{twin}")
            assert status == 200 and twins(other) == [k]
        # the same answer, the same marks
        again = {key(r): r for r in await everything(f, LENNART.pnr)}
        assert again == full


async def test_probe_a_twin_withheld_under_pdl_leaves_no_mark(facade: Any) -> None:
    """Attacker probe: without the patient's consent the clinician may not read the other region's
    (NPÖ) or the municipality's (Viva) records. Their own region's look-alike shows no sign of them:
    no tag, no extension, no id, no count."""
    async with facade(consent=False) as f:
        for person, withheld_source in ((LENNART, "npo"), (TOLVAN, "viva")):
            status, bundle = await f.get(
                f"{BASE}/Patient/{pid(person.pnr)}/$everything", params={"_count": "500"}
            )
            assert status == 200
            shown = matches(bundle)
            assert {source(r) for r in shown} == {"cosmic"}, {source(r) for r in shown}
            assert TAG not in str(bundle)
            for r in shown:
                assert not twins(r) and not dup_tags(r)
            # emergency access shows the withheld records: then, and only then, they are marked
            status, opened = await f.get(
                f"{BASE}/Patient/{pid(person.pnr)}/$everything",
                params={"_count": "500"},
                headers={**auth("clinician"), "X-Emergency-Access": "patient-unconscious"},
            )
            assert status == 200
            hidden = {key(r) for r in matches(opened) if source(r) == withheld_source}
            assert hidden and any(set(twins(r)) & hidden for r in matches(opened))
            assert not any(h in str(bundle) for h in hidden)  # (and the hidden ids never appeared)


@pytest.fixture
def npo_twins_not_for_the_patient(monkeypatch: pytest.MonkeyPatch) -> None:
    """NPÖ's furosemide and admission of Lennart's, not approved for the patient (NOPAT)."""
    original = npo.hand_written  # the hand-written records, from data/npo/*.yaml

    def hand_written(*args: Any, **kwargs: Any) -> dict[str, dict[str, list[Any]]]:
        data = original(*args, **kwargs)
        out = data[LENNART.pnr]
        for kind in ("medicationMedicalRecord", "careContact"):
            for record in out[kind]:
                header = record[f"{kind}Header"]
                if header["documentId"] in ("KAR-M-309278-1", "KAR-C-309278-1"):
                    header["approvedForPatient"] = "false"
        return data

    monkeypatch.setattr(npo, "hand_written", hand_written)


@pytest.mark.usefixtures("npo_twins_not_for_the_patient")
async def test_probe_a_twin_redacted_for_the_audience_leaves_no_mark(facade: Any) -> None:
    """Attacker probe: the patient may not see NPÖ's records the producer has not approved for him;
    his own Cosmic furosemide and admission carry no mark that another such record exists."""
    async with facade() as f:
        clinician = await everything(f, LENNART.pnr)
        nopat = {
            key(r) for r in clinician if any(s["code"] == "NOPAT" for s in r["meta"].get("security", []))
        }
        assert len(nopat) == 2
        # the clinician sees both and the marks (the probe's control)
        assert len(pairs(clinician)) == 2
        status, bundle = await f.get(
            f"{BASE}/Patient/{pid(LENNART.pnr)}/$everything",
            params={"_count": "500"},
            headers=auth("patient", pnr=LENNART.pnr),
        )
        assert status == 200
        text = str(bundle)
        assert TAG not in text and not any(k.split("/")[1] in text for k in nopat)
        cosmic = [r for r in matches(bundle) if source(r) == "cosmic" and r["resourceType"] != "Patient"]
        assert {what(r)[2] for r in cosmic if r["resourceType"] in ("MedicationStatement", "Encounter")} == {
            "C03CA01",
            "IMP 2024-05-10",
        }
        for r in matches(bundle):
            assert not twins(r) and not dup_tags(r)
        # nor in a read or a search of the type
        for r in cosmic:
            if r["resourceType"] == "MedicationStatement":
                status, read = await f.get(f"{BASE}/{key(r)}", headers=auth("patient", pnr=LENNART.pnr))
                assert status == 200 and read == r
        status, bundle = await f.get(
            f"{BASE}/Encounter",
            params={"patient": pid(LENNART.pnr)},
            headers=auth("patient", pnr=LENNART.pnr),
        )
        assert status == 200 and TAG not in str(bundle) and matches(bundle)
