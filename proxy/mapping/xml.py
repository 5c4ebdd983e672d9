"""XML answers (SOAP/RIVTA) as the plain dicts mappings read."""

from __future__ import annotations

from typing import Any

from lxml import etree

# libxml2 through lxml: about 3.5 times the parse speed of ElementTree's expat builder, which was
# the largest cost of an NPÖ answer (a 140 kB answer: 3.0 ms → 0.8 ms). Nothing is fetched or
# expanded; comments and processing instructions are dropped, as ElementTree does. Whitespace
# between elements (indentation) is dropped while parsing, and XML ids are not collected: neither
# is read, and skipping them makes the parse about 15 % cheaper.
_OPTIONS: dict[str, Any] = {
    "resolve_entities": False,
    "no_network": True,
    "load_dtd": False,
    "huge_tree": False,
    "remove_comments": True,
    "remove_pis": True,
    "remove_blank_text": True,
    "collect_ids": False,
}
_PARSER = etree.XMLParser(**_OPTIONS)
_REFUSED = (b"<!DOCTYPE", b"<!ENTITY")


def parse_xml(body: bytes) -> dict[str, Any]:
    """Parse an XML document into dicts the way mappings expect to read it.

    Namespace-blind: prefixes and namespace URIs are stripped from element and attribute names
    (``soap:Envelope`` → ``Envelope``, ``@xsi:type`` → ``@type``), so a mapping selects
    ``$.Envelope.Body.GetDiagnosisResponse.diagnosis`` whatever prefixes the producer chose.
    Repeated elements become lists, single ones dicts or strings; an element with attributes is a
    dict with ``@name`` keys and its text under ``#text``; text is whitespace-stripped; an empty
    element is None (the shape xmltodict gives, built from the parsed tree in one walk).
    Raises ValueError for malformed XML, and for any document with a DOCTYPE: no entities, no
    external references, nothing to expand.
    """
    if any(marker in body for marker in _REFUSED):
        raise ValueError("malformed XML: DOCTYPE and entity declarations are not accepted")
    try:
        root = etree.fromstring(body, _PARSER)
    except etree.XMLSyntaxError as exc:
        raise ValueError(f"malformed XML: {exc}") from None
    if root is None:  # (an empty document)
        raise ValueError("malformed XML: no root element")
    return {_local(root.tag): _convert(root)}


_LOCAL_NAMES: dict[str, str] = {}  # a few hundred names in practice; bounded against odd input


def _local(name: str) -> str:
    local = _LOCAL_NAMES.get(name)
    if local is None:
        local = name.rpartition("}")[2].rpartition(":")[2]
        if len(_LOCAL_NAMES) < 4096:
            _LOCAL_NAMES[name] = local
    return local


def _convert(element: Any) -> Any:  # an lxml element
    attrib = element.attrib
    out: dict[str, Any] = {"@" + _local(k): v for k, v in attrib.items()} if attrib else {}
    if not len(element):
        text = element.text.strip() if element.text else ""
        if out:
            if text:
                out["#text"] = text
            return out
        return text or None
    local = _LOCAL_NAMES.get
    for child in element:
        if len(child) or child.keys():  # (keys(): the attribute names, without an attrib proxy)
            value = _convert(child)
        else:  # most elements are plain leaves (no children, no attributes): read inline, no call
            text = child.text
            value = (text.strip() or None) if text else None
        tag = child.tag
        key = local(tag) or _local(tag)
        if key not in out:
            out[key] = value
        else:  # a repeated element: a list (only lists made here are lists, so the exact type)
            have = out[key]
            if have.__class__ is list:
                have.append(value)
            else:
                out[key] = [have, value]
    return out


class XmlRecords:
    """The records at one element path of an XML document, each as soon as its element is complete,
    read from the document as it arrives (``feed``, then ``close``) — for an answer too large to
    hold whole. Each record is the value ``parse_xml`` gives that element, and the records are the
    ones a dotted select of ``path`` finds in ``parse_xml``'s document, in document order: a
    document that repeats an element on the way to them (two ``Body`` elements) has none, as there.

    A record's element is dropped from the tree once it has been read (with the siblings before
    it), so what is held is the chunk, the record being read and the elements on the way; the same
    parser options as ``parse_xml`` (libxml2's limits, nothing fetched or expanded, no DOCTYPE).
    Raises ValueError for malformed XML, at the chunk where it shows."""

    __slots__ = ("_depth", "_parents", "_parser", "_path", "_tail", "repeated")

    def __init__(self, path: tuple[str, ...]) -> None:
        self._path = path
        self._depth = len(path) - 1  # of the records' elements (the root's is 0)
        tags = [f"{{*}}{name}" for name in dict.fromkeys(path)]  # any namespace, or none
        self._parser = etree.XMLPullParser(events=("end",), tag=tags, **_OPTIONS)
        self._tail = b""  # the end of the previous chunk: a DOCTYPE may straddle two
        # per depth above the records: the parent of the last element on the path ended there (an
        # element of the path whose parent is that parent again is a repeat)
        self._parents: list[Any] = [None] * self._depth
        self.repeated = False  # an element on the way to the records is repeated: none are read

    def feed(self, chunk: bytes) -> list[Any]:
        """The records completed by ``chunk``."""
        if any(m in chunk or m in self._tail + chunk[: len(m)] for m in _REFUSED):
            raise ValueError("malformed XML: DOCTYPE and entity declarations are not accepted")
        self._tail = chunk[-16:]
        try:
            self._parser.feed(chunk)
        except etree.XMLSyntaxError as exc:
            raise ValueError(f"malformed XML: {exc}") from None
        return self._records()

    def close(self) -> list[Any]:
        """The last records; ValueError when the document is not complete."""
        try:
            self._parser.close()
        except etree.XMLSyntaxError as exc:
            raise ValueError(f"malformed XML: {exc}") from None
        return self._records()

    def _records(self) -> list[Any]:
        out: list[Any] = []
        path, last = self._path, self._depth
        for _, element in self._parser.read_events():
            depth = _on_path(element, path)
            if depth < 0:
                continue
            parent = element.getparent()
            if depth < last:  # an element on the way to the records, complete
                if self._parents[depth] is not None and self._parents[depth] is parent:
                    self.repeated = True
                self._parents[depth] = parent  # (held: the proxy, and so ``is``, stays the same)
                continue
            value = _convert(element)
            if value is not None:  # (as a dotted select drops None)
                out.append(value)
            element.clear(keep_tail=False)  # read: let it and the ones before it go
            if parent is not None:
                while element.getprevious() is not None:
                    del parent[0]
        return out


def _on_path(element: Any, path: tuple[str, ...]) -> int:
    """The element's depth when it and its ancestors are the first names of ``path``; else -1."""
    names = []
    node = element
    while node is not None:
        names.append(_local(node.tag))
        node = node.getparent()
    depth = len(names) - 1
    if depth >= len(path):
        return -1
    names.reverse()
    return depth if tuple(names) == path[: depth + 1] else -1
