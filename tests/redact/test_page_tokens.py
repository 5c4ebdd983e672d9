"""Page tokens are no key to anyone else's answer.

A first page's links carry ``_page_token`` (proxy/paging.py): later pages are read from the first
page's snapshot. The token is bound to the asker, the access decision and the search. Every probe
below presents a real token where it does not belong — another audience, another user, another
care unit, other scopes or client, emergency access, the patient, another patient's or another
search's URL — or after its snapshot ended (a consent change, its lifetime). Each must get exactly
the answer (status and bytes) the same request gets with a made-up token: hidden is absent, so a
probe cannot learn that the token exists for someone else. None may carry the snapshot's data.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest

from proxy.demo_org import UNITS
from proxy.simulators.population import LENNART, OTHER_REGION_PROVIDER, TOLVAN
from tests.clock import FakeClock
from tests.conftest import BASE, auth, consent_body, pid, redis_url

PATIENT = pid(LENNART.pnr)
EVERYTHING = f"{BASE}/Patient/{PATIENT}/$everything"
MADE_UP = "Zm9yZ2VkLXRva2VuLTEyMw"  # 22 URL-safe characters, like a real token: issued to nobody
OWNER = auth("clinician")

# (who presents the owner's next link, unchanged): headers
ASKERS: dict[str, dict[str, str]] = {
    "another audience (ambulance)": auth("ambulance"),
    "another audience (homecare)": auth("homecare"),
    "another user of the same unit": auth("clinician", hsa_id="SE2321000016-L002", sub="demo-clinician-2"),
    "the same user at another care unit": auth("clinician", care_unit=UNITS["akuten"][0]),
    "the same user with narrower scopes": auth("clinician", scopes="user/Observation.rs user/Condition.rs"),
    "the same user in another client": auth("clinician", client_id="another-app"),
    "the same user under emergency access": {**OWNER, "X-Emergency-Access": "no-time"},
    "the patient": auth("patient", pnr=LENNART.pnr),
    "another patient": auth("patient", pnr=TOLVAN.pnr),
}
# (the owner presents the token on another URL): path, parameters to add or change
URLS: dict[str, tuple[str, dict[str, str]]] = {
    "another patient's $everything": (f"{BASE}/Patient/{pid(TOLVAN.pnr)}/$everything", {}),
    "another search of the patient": (f"{BASE}/Observation", {"patient": PATIENT}),
    "another _type": (EVERYTHING, {"_type": "Condition"}),
    "a _since": (EVERYTHING, {"_since": "2000-01-01T00:00:00Z"}),
}


@dataclass
class Paged:
    f: Any
    clock: FakeClock
    path: str
    params: list[tuple[str, str]]  # the owner's next link's
    token: str
    second: dict[str, Any]  # what the owner's next link answered
    snapshot_ids: set[str]  # every resource id in the owner's answer

    async def ask(self, token: str, headers: dict[str, str], path: str | None = None, **change: str) -> Any:
        params = [(k, v) for k, v in self.params if k not in change and k != "_page_token"]
        params += [*change.items(), ("_page_token", token)]
        resp = await self.f.client.get(path or self.path, params=params, headers=headers)
        return resp.status, await resp.read()

    def clean(self, raw: bytes) -> None:
        text = raw.decode()
        leaked = sorted(i for i in self.snapshot_ids if i in text)
        assert leaked == [], f"the snapshot's resources leaked: {leaked[:3]}"


@asynccontextmanager
async def paged(facade: Any, **kw: Any) -> AsyncIterator[Paged]:
    """The owner (the demo clinician) pages Lennart's $everything, 5 a page: the next link."""
    clock = FakeClock()
    async with facade(clock=clock, **kw) as f:
        _, whole = await f.get(EVERYTHING, params={"_count": "500"}, headers=OWNER)
        _, first = await f.get(EVERYTHING, params={"_count": "5"}, headers=OWNER)
        nxt = urlsplit(next(lk["url"] for lk in first["link"] if lk["relation"] == "next"))
        params = parse_qsl(nxt.query)
        status, second = await f.get(nxt.path, params=params, headers=OWNER)
        assert status == 200 and len(second["entry"]) >= 5
        ids = {e["resource"]["id"] for e in whole["entry"] if e["search"]["mode"] == "match"}
        yield Paged(f, clock, nxt.path, params, dict(params)["_page_token"], second, ids - {PATIENT})


def _same_as_made_up(real: tuple[int, bytes], made_up: tuple[int, bytes], what: str) -> None:
    assert real == made_up, f"{what}: a real token is answered unlike a made-up one"


async def test_the_owner_reads_the_next_page_with_a_new_bearer_token(facade: Any) -> None:
    """The binding is the asker, not the bearer token: a refreshed token of the same user pages on
    (the probes below would prove nothing if the owner could not)."""
    async with paged(facade) as p:
        status, raw = await p.ask(p.token, auth("clinician"))
    assert status == 200 and orjson.loads(raw) == p.second


@pytest.mark.parametrize("who", list(ASKERS))
async def test_a_token_presented_by_anyone_else_is_a_made_up_token(facade: Any, who: str) -> None:
    async with paged(facade) as p:
        real = await p.ask(p.token, ASKERS[who])
        made_up = await p.ask(MADE_UP, ASKERS[who])
    _same_as_made_up(real, made_up, who)
    p.clean(real[1])
    if who not in ("another patient",):  # (a patient asking about another's record: as unknown, 200)
        assert real[0] == 410 and orjson.loads(real[1])["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("where", list(URLS))
async def test_a_token_on_another_url_is_a_made_up_token(facade: Any, where: str) -> None:
    path, change = URLS[where]
    async with paged(facade) as p:
        real = await p.ask(p.token, OWNER, path, **change)
        made_up = await p.ask(MADE_UP, OWNER, path, **change)
    _same_as_made_up(real, made_up, where)
    assert real[0] == 410
    p.clean(real[1])


@pytest.mark.parametrize("store", ["sqlite", "redis"])
async def test_a_token_after_a_consent_change_or_its_lifetime_is_a_made_up_token(
    facade: Any, store: str
) -> None:
    kw = {"cache": {"store": "redis", "redis_url": redis_url(), "enabled": False}} if store == "redis" else {}
    async with paged(facade, **kw) as p:
        block = consent_body(PATIENT, deny=True, custodians=(OTHER_REGION_PROVIDER,))
        lennart = {**auth("patient", pnr=LENNART.pnr), "Content-Type": "application/fhir+json"}
        assert (await p.f.client.post(f"{BASE}/Consent", json=block, headers=lennart)).status == 201
        blocked = await p.ask(p.token, OWNER)
        blocked_made_up = await p.ask(MADE_UP, OWNER)
    async with paged(facade, **kw) as p:
        p.clock.advance(301)
        expired = await p.ask(p.token, OWNER)
        expired_made_up = await p.ask(MADE_UP, OWNER)
    _same_as_made_up(blocked, blocked_made_up, "after a block")
    _same_as_made_up(expired, expired_made_up, "after its lifetime")
    assert blocked == expired and blocked[0] == 410
    p.clean(blocked[1])


@pytest.mark.parametrize(
    "token",
    ["", "x", MADE_UP[:-1], MADE_UP + "A", "../" * 8, "%00" * 22, "A" * 4000, "Zm9yZ2VkLXRva2VuLTEyM="],
)
async def test_a_malformed_token_is_a_made_up_token(facade: Any, token: str) -> None:
    async with paged(facade) as p:
        got = await p.ask(token, OWNER)
        made_up = await p.ask(MADE_UP, OWNER)
    _same_as_made_up(got, made_up, repr(token[:10]))
