"""The sentinel suite: for every audience × demo patient × endpoint × page, the *response bytes*
contain no restricted text that audience may not see — and do contain what it may.

Sentinels are distinctive strings the simulators put in restricted fields. Attachments are base64,
so every attachment's decoded text is searched too. Besides the text, the ids of resources hidden
from an audience must not appear anywhere in its responses (no dangling reference, no link).
"""

from __future__ import annotations

import base64
import re
from collections import Counter
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from proxy.fhir.params import SUPPORTED_TYPES
from proxy.simulators.population import DEMO_PEOPLE, GRETA, SANNA, TOLVAN, UNKNOWN_PNR
from tests import ips
from tests.conftest import BASE, auth, pid

THREAT = "Hotfullt beteende mot ambulanspersonal"  # Tolvan's threat flag (Cosmic, MobiMed "Hot")
NOPAT = "Misstänkt malignitet, ej delgivet patienten"  # NPÖ note with approvedForPatient=false
NOPAT_TITLE = "Utredning pågår"
SOL = "Biståndsbeslut hemtjänst SoL-anteckning"  # Viva social-care note: never leaves Viva
NULLIFIED = "MAKULERAD-ANTECKNING"  # NPÖ nullified record: never shown
PROTECTED_NAME = "Skyddad"  # Sanna's family name (protected identity)
PROTECTED_ADDRESS = "Hemlig adress 1"

NOBODY = {SOL, NULLIFIED}
# who may see what; the patient audience only ever reads its own record
MAY_SEE = {
    "ambulance": {THREAT, NOPAT, NOPAT_TITLE},
    "clinician": {NOPAT, NOPAT_TITLE},
    "homecare": {NOPAT, NOPAT_TITLE},
    "patient": {PROTECTED_NAME, PROTECTED_ADDRESS},
}
ALL_SENTINELS = {THREAT, NOPAT, NOPAT_TITLE, SOL, NULLIFIED, PROTECTED_NAME, PROTECTED_ADDRESS}
PEOPLE = [*(p.pnr for p in DEMO_PEOPLE), UNKNOWN_PNR]
REQUESTS: Counter[str] = Counter()


def token_for(audience: str, pnr: str) -> dict[str, str]:
    return (
        auth("patient", pnr=TOLVAN.pnr if pnr == UNKNOWN_PNR else pnr)
        if audience == "patient"
        else auth(audience)
    )


def readable(raw: bytes) -> str:
    """The response text plus every base64 attachment, decoded."""
    text = raw.decode()
    decoded = []
    for data in re.findall(r'"data":"([A-Za-z0-9+/=]+)"', text):
        try:
            decoded.append(base64.b64decode(data).decode())
        except (ValueError, UnicodeDecodeError):
            continue
    return "\n".join([text, *decoded])


class Probe:
    """Sends requests as one audience and checks every response it gets."""

    def __init__(
        self, client: Any, headers: dict[str, str], forbidden: set[str], hidden_ids: set[str]
    ) -> None:
        self.client = client
        self.headers = headers
        self.forbidden = forbidden
        self.hidden_ids = hidden_ids
        self.seen: set[str] = set()  # sentinels that did reach this audience

    async def get(self, path: str, params: Any = None) -> tuple[int, dict[str, Any]]:
        resp = await self.client.get(path, params=params, headers=self.headers)
        raw = await resp.read()
        REQUESTS[path.split("/")[2].split("?")[0]] += 1
        text = readable(raw)
        for s in self.forbidden:
            assert s not in text, f"{s!r} leaked to {self.headers} via {path} {params}"
        for rid in self.hidden_ids:
            assert rid not in text, f"hidden id {rid} leaked via {path} {params}"
        for header in ("ETag", "Last-Modified", "Content-Location", "Location"):
            assert header not in resp.headers
        self.seen |= {s for s in ALL_SENTINELS if s in text}
        return resp.status, (await resp.json(content_type=None))

    async def all_pages(self, path: str, params: dict[str, str]) -> list[dict[str, Any]]:
        """Follow next links; check totals and page sizes; return every match."""
        status, page = await self.get(path, {**params, "_count": "4"})
        if status != 200:
            return []
        total, found, pages = page["total"], [], 0
        while True:
            pages += 1
            assert pages <= 100
            batch = [e["resource"] for e in page.get("entry", []) if e["search"]["mode"] == "match"]
            nxt = next((lk["url"] for lk in page["link"] if lk["relation"] == "next"), None)
            assert len(batch) == 4 or nxt is None, "a short page with a next link hints at a gap"
            assert page["total"] == total
            found.extend(batch)
            if nxt is None:
                break
            url = urlsplit(nxt)
            status, page = await self.get(url.path, parse_qsl(url.query))
        assert len(found) == total, "Bundle.total must count what this audience can see"
        _, counted = await self.get(path, {**params, "_summary": "count"})
        assert counted["total"] == total
        return found


async def visible(client: Any, headers: dict[str, str], pnr: str) -> dict[str, str]:
    """{id: resource type} of what ``$everything`` shows these headers."""
    resp = await client.get(
        f"{BASE}/Patient/{pid(pnr)}/$everything", params={"_count": "500"}, headers=headers
    )
    if resp.status != 200:
        return {}
    bundle = await resp.json(content_type=None)
    return {
        e["resource"]["id"]: e["resource"]["resourceType"]
        for e in bundle.get("entry", [])
        if e["search"]["mode"] == "match"
    }


@pytest.mark.parametrize("audience", ["ambulance", "clinician", "homecare", "patient"])
async def test_no_sentinel_leaks_to_any_audience_on_any_endpoint_or_page(facade: Any, audience: str) -> None:
    forbidden = (ALL_SENTINELS - MAY_SEE[audience]) | NOBODY
    seen: set[str] = set()
    # with the cache on: the views of the most privileged audiences, fetched first, fill it, and
    # every later request for this audience is served from those audience-free entries
    async with facade(cache=True) as f:
        for pnr in PEOPLE:
            # what exists at all (the most privileged view of each kind) vs what this audience sees
            everything = await visible(f.client, auth("ambulance"), pnr) | await visible(
                f.client, auth("clinician"), pnr
            )
            headers = token_for(audience, pnr)
            hidden = set(everything) - set(await visible(f.client, headers, pnr))
            probe = Probe(f.client, headers, forbidden, hidden)
            await probe.all_pages(f"{BASE}/Patient/{pid(pnr)}/$everything", {})
            status, _ = await probe.get(f"{BASE}/Patient/{pid(pnr)}/$summary")
            assert status == (404 if pnr == UNKNOWN_PNR else 200)
            await probe.all_pages(f"{BASE}/Patient", {"identifier": pnr})
            for rtype in sorted(SUPPORTED_TYPES - {"Patient"}):
                await probe.all_pages(f"{BASE}/{rtype}", {"patient": pid(pnr)})
            for rid, rtype in sorted(everything.items()):
                status, _ = await probe.get(f"{BASE}/{rtype}/{rid}")
                assert status == (404 if rid in hidden else 200), f"{rtype}/{rid}"
            seen |= probe.seen
    # and what the audience may see does reach it
    expected = {
        "ambulance": {THREAT, NOPAT},
        "clinician": {NOPAT},
        "homecare": {NOPAT},
        "patient": {PROTECTED_NAME, PROTECTED_ADDRESS},
    }[audience]
    assert expected <= seen
    assert sum(REQUESTS.values()) > 0


async def test_a_reference_to_the_threat_flag_goes_with_it(facade: Any) -> None:
    """Tolvan's ambulance note points at the threat flag: the note stays, the reference does not."""
    async with facade() as f:
        seen = {}
        for audience in ("ambulance", "clinician"):
            resp = await f.client.get(
                f"{BASE}/DocumentReference", params={"patient": pid(TOLVAN.pnr)}, headers=auth(audience)
            )
            notes = [e["resource"] for e in (await resp.json(content_type=None))["entry"]]
            seen[audience] = next(n for n in notes if n.get("description") == "Ambulansjournal")
    related = seen["ambulance"]["context"]["related"][0]["reference"]
    assert related.startswith("Flag/")
    assert "context" not in seen["clinician"]  # emptied by the removal, so removed too
    assert related.split("/")[1] not in str(seen["clinician"])


async def test_hidden_read_is_indistinguishable_from_missing(facade: Any) -> None:
    async with facade() as f:
        amb = await f.client.get(f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything", headers=auth("ambulance"))
        bundle = await amb.json(content_type=None)
        threat = next(
            e["resource"]
            for e in bundle["entry"]
            if e["resource"]["resourceType"] == "Flag" and THREAT in str(e["resource"])
        )
        fake = threat["id"][:-4] + ("0000" if not threat["id"].endswith("0000") else "1111")
        hidden = await f.client.get(f"{BASE}/Flag/{threat['id']}", headers=auth("clinician"))
        missing = await f.client.get(f"{BASE}/Flag/{fake}", headers=auth("clinician"))
        assert hidden.status == missing.status == 404
        assert (await hidden.text()).replace(threat["id"], "X") == (await missing.text()).replace(fake, "X")
        assert set(hidden.headers) == set(missing.headers)


@pytest.mark.parametrize("other", [SANNA.pnr, GRETA.pnr, UNKNOWN_PNR])
async def test_a_patient_reads_only_their_own_record(facade: Any, other: str) -> None:
    """Another patient is answered exactly like a patient nobody knows."""
    tolvan = auth("patient", pnr=TOLVAN.pnr)
    async with facade() as f:
        own = await f.client.get(f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything", headers=tolvan)
        assert own.status == 200
        answers = []
        for pnr in (other, UNKNOWN_PNR):
            pid_ = pid(pnr)
            ev = await f.client.get(f"{BASE}/Patient/{pid_}/$everything", headers=tolvan)
            rd = await f.client.get(f"{BASE}/Patient/{pid_}", headers=tolvan)
            sr = await f.client.get(f"{BASE}/Condition", params={"patient": pid_}, headers=tolvan)
            su = await f.client.get(f"{BASE}/Patient/{pid_}/$summary", headers=tolvan)
            answers.append(
                [(r.status, (await r.text()).replace(pid_, "X").replace(pnr, "N")) for r in (ev, rd, sr, su)]
            )
    assert answers[0] == answers[1]
    assert [status for status, _ in answers[0]] == [404, 404, 200, 404]


async def test_protected_identity_reaches_only_the_patient(facade: Any) -> None:
    async with facade() as f:
        seen = {}
        for audience in ("ambulance", "clinician", "homecare", "patient"):
            headers = token_for(audience, SANNA.pnr)
            resp = await f.client.get(f"{BASE}/Patient/{pid(SANNA.pnr)}", headers=headers)
            assert resp.status == 200
            seen[audience] = await resp.json(content_type=None)
    for audience in ("ambulance", "clinician", "homecare"):
        patient = seen[audience]
        assert "address" not in patient and "telecom" not in patient
        masked = {"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason", "valueCode": "masked"}
        assert patient["name"] == [{"extension": [masked]}]  # withheld, and says so
        assert patient["identifier"][0]["value"] == SANNA.pnr  # still identifiable in care
        assert any(s["code"] == "R" for s in patient["meta"]["security"])
    assert seen["patient"]["name"][0]["family"] == "Skyddad"


async def test_search_cannot_probe_hidden_content(facade: Any) -> None:
    """Filters run after redaction: a search on a hidden resource's code finds nothing."""
    async with facade() as f:
        amb = await f.client.get(
            f"{BASE}/Flag", params={"patient": pid(TOLVAN.pnr)}, headers=auth("ambulance")
        )
        clin = await f.client.get(
            f"{BASE}/Flag", params={"patient": pid(TOLVAN.pnr)}, headers=auth("clinician")
        )
        amb_total = (await amb.json(content_type=None))["total"]
        clin_total = (await clin.json(content_type=None))["total"]
        assert amb_total == clin_total + 1
        by_code = await f.client.get(
            f"{BASE}/Flag", params={"patient": pid(TOLVAN.pnr), "_summary": "count"}, headers=auth("homecare")
        )
        assert (await by_code.json(content_type=None))["total"] == clin_total


@pytest.mark.parametrize("audience", ["clinician", "homecare", "patient"])
async def test_a_summary_section_holding_only_hidden_records_reads_as_a_truly_empty_one(
    facade: Any, audience: str
) -> None:
    """Tolvan's only alert is the ambulance's threat flag; Sanna has no alert anywhere. For every
    audience but the ambulance both alerts sections are the same empty section, byte for byte, and
    nothing in Tolvan's summary names the flag (its text or its id)."""
    async with facade() as f:
        amb = await f.get(f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$summary", headers=auth("ambulance"))
        seen = {}
        for pnr in (TOLVAN.pnr, SANNA.pnr):
            status, seen[pnr] = await f.get(
                f"{BASE}/Patient/{pid(pnr)}/$summary", headers=token_for(audience, pnr)
            )
            assert status == 200
    threat = ips.entries(amb[1], ips.ALERTS)[0]
    assert THREAT in str(threat)
    assert ips.sections(seen[TOLVAN.pnr])[ips.ALERTS] == ips.sections(seen[SANNA.pnr])[ips.ALERTS]
    assert ips.empty_reason(ips.sections(seen[TOLVAN.pnr])[ips.ALERTS]) == "nilknown"
    text = str(seen[TOLVAN.pnr])
    assert THREAT not in text and threat["id"] not in text and "safety" not in text
