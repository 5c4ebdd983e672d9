"""The NPÖ simulator's XML writer (proxy/simulators/xmlwrite.py) writes xmltodict's bytes: every
answer the simulator gives — the demo patients, generated ones, a long history, a fault — and the
corner cases of the notation (attributes, quoting, text, empty and absent elements)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import xmltodict

from proxy.simulators import npo, xmlwrite
from proxy.simulators import population as pop
from proxy.simulators.history import History


def reference(doc: dict[str, Any]) -> str:
    return str(xmltodict.unparse(doc, encoding="utf-8", pretty=True, indent="  "))


def answers() -> list[dict[str, Any]]:
    people = [*pop.population(12), pop.INGEGERD]
    data = {
        **npo.build_data(people),
        **npo.build_data(pop.generated_people(3), History((400, 400))),
    }
    docs = []
    for entry in data.values():
        for c in npo.CONTRACTS:
            records = entry.get(c.record, [])
            content: dict[str, Any] = {"@xmlns:ns2": c.responder_ns, "@xmlns": c.core_ns}
            if records:
                content[f"ns2:{c.record}"] = records
            content["ns2:result"] = {"resultCode": "OK", "logId": "0"}
            docs.append(
                {
                    "soap:Envelope": {
                        "@xmlns:soap": npo.SOAP_NS,
                        "soap:Body": {f"ns2:{c.operation}Response": content},
                    }
                }
            )
    return docs


def test_every_answer_of_the_simulator_is_written_as_xmltodict_writes_it() -> None:
    docs = answers()
    assert len(docs) > 100
    for doc in docs:
        assert xmlwrite.unparse(doc) == reference(doc)


@pytest.mark.parametrize(
    "doc",
    [
        {"a": {"@x": 'say "hi"', "@y": "it's", "@z": "both \" and '", "@n": None, "#text": "a < b & c > d"}},
        {"a": {"b": None, "c": [], "d": "", "e": [1, 2.5, True, False, None, "", {"#text": None}]}},
        {"a": {"b": ("x", "y"), "c": {"d": {"e": "deep"}}, "f": "line\nbreak\ttab"}},
        {"a": {"@tab": "a\tb\nc\rd", "b": {"@k": "v"}}},
        {"a": "just text"},
        {"a": None},
    ],
)
def test_the_notation_s_corner_cases(doc: dict[str, Any]) -> None:
    assert xmlwrite.unparse(doc) == reference(doc)


async def test_the_simulator_answers_with_it(aiohttp_client: Any) -> None:
    client = await aiohttp_client(npo.create_app(list(pop.DEMO_PEOPLE)))
    c = next(c for c in npo.CONTRACTS if c.operation == "GetLaboratoryOrderOutcome")
    body = (
        "<Envelope><Header><LogicalAddress>SE1</LogicalAddress></Header><Body><GetLaboratoryOrderOutcome>"
        f"<patientId><id>{pop.LENNART.pnr}</id><type>{npo.PNR_OID}</type></patientId>"
        "</GetLaboratoryOrderOutcome></Body></Envelope>"
    )
    resp = await client.post(c.path, data=body)
    records = npo.build_data(list(pop.DEMO_PEOPLE))[pop.LENNART.pnr][c.record]
    log_id = uuid.uuid5(uuid.NAMESPACE_URL, f"npo:{c.operation}:{pop.LENNART.pnr}")  # (as npo.response)
    assert (await resp.read()).decode() == reference(
        {
            "soap:Envelope": {
                "@xmlns:soap": npo.SOAP_NS,
                "soap:Body": {
                    f"ns2:{c.operation}Response": {
                        "@xmlns:ns2": c.responder_ns,
                        "@xmlns": c.core_ns,
                        f"ns2:{c.record}": records,
                        "ns2:result": {"resultCode": "OK", "logId": str(log_id)},
                    }
                },
            }
        }
    )
