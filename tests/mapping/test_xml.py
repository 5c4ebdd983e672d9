"""XML answers as dicts: namespace-blind, xmltodict-shaped, and no entity games."""

from __future__ import annotations

import pytest

from proxy.mapping.xml import parse_xml


def test_shape() -> None:
    doc = parse_xml(
        b'<s:Envelope xmlns:s="urn:s" xmlns:r="urn:r"><s:Body><r:Resp>'
        b"<r:rec><r:id> 1 </r:id></r:rec><r:rec><r:id>2</r:id><r:empty/></r:rec>"
        b'<r:code r:system="x">C</r:code><r:flag r:on="true"/></r:Resp></s:Body></s:Envelope>'
    )
    resp = doc["Envelope"]["Body"]["Resp"]
    assert resp["rec"] == [{"id": "1"}, {"id": "2", "empty": None}]
    assert resp["code"] == {"@system": "x", "#text": "C"}
    assert resp["flag"] == {"@on": "true"}


@pytest.mark.parametrize(
    "body",
    [
        b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">]><a>&lol;</a>',
        b'<!DOCTYPE a SYSTEM "file:///etc/passwd"><a/>',
        b"<a><b></a>",
        b"",
        b"not xml",
    ],
)
def test_rejected(body: bytes) -> None:
    with pytest.raises(ValueError):
        parse_xml(body)


def test_indentation_and_blank_text() -> None:
    """Indentation between elements is not data; a leaf's text is stripped (whitespace-only is no
    value) and its inner spaces kept; three repeats make one list; an element with attributes and
    children keeps both."""
    doc = parse_xml(
        b"<Root>\n  <item>\n    one  two\n  </item>\n  <item>   </item>\n  <item/>\n"
        b'  <box kind="k">\n    <in> x </in>\n  </box>\n  <blank a="1">  </blank>\n</Root>\n'
    )
    assert doc == {
        "Root": {
            "item": ["one  two", None, None],
            "box": {"@kind": "k", "in": "x"},
            "blank": {"@a": "1"},
        }
    }
