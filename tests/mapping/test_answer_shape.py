"""An answer that lacks the list a mapping selects is unreadable, never "nothing here".

Every dialect says "no records" with the list present and empty: Cosmic ``{"items": []}``, Viva
``{"hembesok": []}``, and RIVTA a response element with no record elements in it (XML has no empty
list: zero repetitions of an element are no element). A body without that list — ``{}``, an error
object answered with 200, a SOAP body without its response element — is a broken answer: reading it
as an empty record would hide the patient's records behind an answer that looks complete.
"""

from __future__ import annotations

from typing import Any

import pytest

from proxy.mapping.compiler import CompiledMapping
from proxy.mapping.run import map_answer
from proxy.simulators import population as pop
from tests import contract


def _mappings(backend: contract.Backend, select: str) -> tuple[CompiledMapping, ...]:
    return tuple(m for m in backend.mappings if m.select_path == select)


def _map(backend: contract.Backend, select: str, body: bytes) -> Any:
    group = _mappings(backend, select)
    assert group, select
    return map_answer(body, group, dict(backend.context(pop.TOLVAN)), source_uri="urn:test", priority=1)


@pytest.mark.parametrize(
    ("backend", "select", "empty", "broken"),
    [
        ("cosmic", "$.items", b'{"items": []}', b"{}"),
        ("cosmic", "$.items", b'{"items": []}', b'{"error": "temporarily unavailable"}'),
        ("viva", "$.hembesok", b'{"hembesok": []}', b'{"status": "ok"}'),
        ("viva", "$.lakemedelslista[*].administreringar[*]", b'{"lakemedelslista": []}', b"{}"),
    ],
)
def test_json_without_the_selected_list_is_unreadable(
    backend: str, select: str, empty: bytes, broken: bytes
) -> None:
    b = contract.BACKENDS[backend]
    nothing = _map(b, select, empty)
    assert nothing.readable and nothing.resources == []
    assert not _map(b, select, broken).readable


def _envelope(inner: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
        f"<soapenv:Body>{inner}</soapenv:Body></soapenv:Envelope>"
    ).encode()


def test_a_rivta_answer_without_its_response_element_is_unreadable() -> None:
    npo = contract.NPO
    select = "$.Envelope.Body.GetDiagnosisResponse.diagnosis"
    ns = "urn:riv:clinicalprocess:healthcond:description:GetDiagnosisResponder:2"
    none = _map(
        npo,
        select,
        _envelope(
            f'<GetDiagnosisResponse xmlns="{ns}">'
            "<result><resultCode>OK</resultCode></result></GetDiagnosisResponse>"
        ),
    )
    assert none.readable and none.resources == []  # the response, with no diagnosis in it: nothing
    assert not _map(npo, select, _envelope("")).readable
    assert not _map(
        npo, select, _envelope('<Fault xmlns="urn:x"><faultstring>x</faultstring></Fault>')
    ).readable
