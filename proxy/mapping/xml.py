"""XML answers (SOAP/RIVTA) as the plain dicts mappings read."""

from __future__ import annotations

from typing import Any
from xml.parsers.expat import ExpatError

import xmltodict


def parse_xml(body: bytes) -> dict[str, Any]:
    """Parse an XML document into dicts the way mappings expect to read it.

    ``xmltodict.parse`` with entities disabled, then made namespace-blind: prefixes are stripped
    from element and attribute names (``soap:Envelope`` → ``Envelope``, ``@xsi:type`` → ``@type``)
    and namespace declarations (``@xmlns``, ``@xmlns:*``) are dropped, so a mapping selects
    ``$.Envelope.Body.GetDiagnosisResponse.diagnosis`` whatever prefixes the producer chose.
    Repeated elements become lists, single ones dicts or strings; text is whitespace-stripped.
    Raises ValueError for malformed XML (or a document with entity declarations).
    """

    def clean(path: Any, key: str, value: Any) -> tuple[str, Any] | None:
        attr = key.startswith("@")
        name = key[1:] if attr else key
        if attr and (name == "xmlns" or name.startswith("xmlns:")):
            return None
        local = name.rpartition(":")[2]
        return ("@" + local if attr else local), value

    try:
        doc = xmltodict.parse(body, disable_entities=True, postprocessor=clean)
    except ExpatError as exc:
        raise ValueError(f"malformed XML: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("malformed XML: no root element")
    return doc
