"""XML answers (SOAP/RIVTA) as the plain dicts mappings read."""

from __future__ import annotations

from typing import Any
from xml.etree.ElementTree import Element, ParseError, fromstring


def parse_xml(body: bytes) -> dict[str, Any]:
    """Parse an XML document into dicts the way mappings expect to read it.

    Namespace-blind: prefixes and namespace URIs are stripped from element and attribute names
    (``soap:Envelope`` → ``Envelope``, ``@xsi:type`` → ``@type``), so a mapping selects
    ``$.Envelope.Body.GetDiagnosisResponse.diagnosis`` whatever prefixes the producer chose.
    Repeated elements become lists, single ones dicts or strings; an element with attributes is a
    dict with ``@name`` keys and its text under ``#text``; text is whitespace-stripped; an empty
    element is None. (The shape xmltodict gives; ElementTree's C parser builds it about 1.5× faster.)
    Raises ValueError for malformed XML, and for any document with a DOCTYPE: no entities, no
    external references, nothing to expand.
    """
    if b"<!DOCTYPE" in body or b"<!ENTITY" in body:
        raise ValueError("malformed XML: DOCTYPE and entity declarations are not accepted")
    try:
        root = fromstring(body)
    except ParseError as exc:
        raise ValueError(f"malformed XML: {exc}") from None
    return {_local(root.tag): _convert(root)}


_LOCAL_NAMES: dict[str, str] = {}  # a few hundred names in practice; bounded against odd input


def _local(name: str) -> str:
    local = _LOCAL_NAMES.get(name)
    if local is None:
        local = name.rpartition("}")[2].rpartition(":")[2]
        if len(_LOCAL_NAMES) < 4096:
            _LOCAL_NAMES[name] = local
    return local


def _convert(element: Element) -> Any:
    attrs = {"@" + _local(k): v for k, v in element.attrib.items()}
    children = list(element)
    if not children:
        text = (element.text or "").strip()
        if attrs:
            if text:
                attrs["#text"] = text
            return attrs
        return text or None
    out: dict[str, Any] = attrs
    for child in children:
        key = _local(child.tag)
        value = _convert(child)
        if key not in out:
            out[key] = value
        elif isinstance(out[key], list):
            out[key].append(value)
        else:
            out[key] = [out[key], value]
    return out
