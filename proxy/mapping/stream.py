"""An answer too large to hold whole, decoded and mapped as it arrives (``AnswerStream``).

Fan-out reads an answer up to ``facade.max_body_bytes`` whole, and ``proxy.mapping.run.map_answer``
decodes it in one go. A larger answer — a long history — is handed here chunk by chunk instead: the
records its mappings select are cut out of the document as each is complete, mapped at once and let
go, so what is held is the mapped resources (the answer), one chunk and the record being read —
never the whole body, nor its whole decoded tree.

The records, and what each mapping makes of them, are exactly what ``map_answer`` makes of the same
body (tests/mapping/test_stream.py checks it on every simulator answer, cut anywhere, and on
generated JSON). The plan (``plan``) comes from the mappings' ``select`` paths:

* XML (RIVTA): every mapping selects the same dotted path, ``Envelope.Body.<Response>.<record>``:
  ``proxy.mapping.xml.XmlRecords`` reads it with libxml2's incremental parser.
* JSON: every mapping selects the same dotted path to an array (``$.items``), or an element-wise
  path below it (``$.lakemedelslista[*].administreringar[*]``): ``JsonRecords`` cuts that array's
  elements out in batches and decodes each batch with orjson; everything around the array (its
  "skeleton", small) is decoded at the end, which validates the document and reads what a mapping
  selects outside the array (when the path holds an object instead, say).
* Anything else (``select: $``, two different paths): the body is kept and decoded whole at the end,
  as ``map_answer`` would — bounded by ``facade.max_answer_bytes`` like every answer.

Why not a JSON event parser (ijson): its C backend builds each value through per-event callbacks
and still needs the same bookkeeping to follow a path and mirror the dotted-select semantics; orjson
on whole batches of records keeps the per-record cost of the quick path, and adds no dependency.
The scan between batches only visits brackets (one compiled pattern skips strings and scalars).

An answer cut off (``close(complete=False)``: the connection closed, or it passed the answer cap)
keeps the records that arrived whole, and is not readable: it is shown, never cached as complete.
A document that stops being well-formed part way is unreadable and keeps nothing, as when whole.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from proxy.mapping.compiler import CompiledMapping
from proxy.mapping.engine import Shared, map_record, record_id_system
from proxy.mapping.paths import Finder, compile_path, dotted_keys
from proxy.mapping.requests import Context
from proxy.mapping.run import MappedAnswer, map_answer
from proxy.mapping.xml import XmlRecords
from proxy.types import MappedResource

log = logging.getLogger("proxy.mapping.run")  # (where map_answer's warnings go: one logger for both)

# A mapping that reads the answer records the way map_answer would let go of what it made: the
# exceptions map_answer takes for "the answer is not shaped as this mapping expects".
_SHAPE_ERRORS = (TypeError, ValueError, AttributeError, KeyError, IndexError)
_ELEMENTWISE = re.compile(r"^(?:\$\.)?(?P<path>[A-Za-z_][\w\-]*(?:\.[A-Za-z_][\w\-]*)*)\[\*\](?P<rest>.*)$")


@dataclass(frozen=True, slots=True)
class Plan:
    """How an answer is streamed: the path to its records, and per mapping how it finds its own
    records in one of them (None: the record is its record)."""

    path: tuple[str, ...]
    within: tuple[Finder | None, ...]


def plan(mappings: Sequence[CompiledMapping]) -> Plan | None:
    """The plan for the answer the ``mappings`` read, or None when it cannot be streamed (kept whole)."""
    if not mappings:
        return None
    path: tuple[str, ...] | None = None
    within: list[Finder | None] = []
    xml = mappings[0].request.format == "xml"
    for m in mappings:
        keys = dotted_keys(m.select_path)
        finder: Finder | None = None
        if keys is None:
            match = _ELEMENTWISE.match(m.select_path)
            if xml or match is None:  # (XML repeats elements: its paths are plain)
                return None
            keys = tuple(match["path"].split("."))
            rest = match["rest"]
            # the elements themselves ``[*]``, or a path within each: ``$`` + the rest, per element
            finder = compile_path("$" + rest) if rest else compile_path("$")
        if path is None:
            path = keys
        elif keys != path:
            return None
        within.append(finder)
    assert path is not None
    return Plan(path, tuple(within))


class AnswerStream:
    """One request's answer, mapped as it arrives (``feed``, then ``close``); ``answer()`` is the
    ``MappedAnswer`` ``map_answer`` would have made of the whole body, or of what arrived whole when
    it was cut off. ``took_ms``: the time spent decoding and mapping (fan-out learns from it)."""

    __slots__ = (
        "_broken",
        "_closed",
        "_complete",
        "_ctx",
        "_decoder",
        "_kept",
        "_mappings",
        "_out",
        "_priority",
        "_shared",
        "_skipped",
        "_source_uri",
        "_systems",
        "_within",
        "took_ms",
    )

    def __init__(
        self, mappings: Sequence[CompiledMapping], ctx: Context, *, source_uri: str, priority: int
    ) -> None:
        self._mappings = tuple(mappings)
        self._ctx = ctx
        self._source_uri = source_uri
        self._priority = priority
        self._systems = [record_id_system(m.name) for m in self._mappings]
        self._shared: Shared = {}  # (a long answer: its repeated elements shared, engine.SHARE_FROM)
        self._out: list[list[MappedResource] | None] = [[] for _ in self._mappings]  # None: it failed
        self._skipped = 0
        self._broken = False  # the body stopped being a document the mappings can read
        self._closed = False
        self._complete = False
        self._kept: list[bytes] | None = None  # the body, when it is kept whole (no plan)
        self.took_ms = 0.0
        p = plan(self._mappings)
        self._decoder: XmlRecords | JsonRecords | None = None
        self._within: tuple[Finder | None, ...] = ()
        if p is None:
            self._kept = []
        else:
            self._within = p.within
            xml = self._mappings[0].request.format == "xml"
            self._decoder = XmlRecords(p.path) if xml else JsonRecords(p.path)

    def feed(self, chunk: bytes) -> bool:
        """The next part of the body; False once the answer cannot be read (nothing more is wanted)."""
        if self._broken:
            return False
        started = time.perf_counter()
        try:
            if self._kept is not None:
                self._kept.append(chunk)
            elif self._decoder is not None:
                self._map(self._decoder.feed(chunk))
        except ValueError:
            self._broken = True
        self.took_ms += (time.perf_counter() - started) * 1000
        return not self._broken

    def close(self, complete: bool) -> None:
        """The body has ended: all of it (``complete``), or cut off — the records that arrived whole
        are kept, the answer is not readable."""
        if self._closed:
            return
        self._closed = True
        started = time.perf_counter()
        self._complete = complete and not self._broken
        if self._complete:
            try:
                self._finish()
            except ValueError:
                self._complete, self._broken = False, True
        self._shared.clear()  # (mapped: the elements stay shared, the table is not needed)
        self.took_ms += (time.perf_counter() - started) * 1000

    def answer(self) -> MappedAnswer:
        if self._kept is not None:
            return self._whole()
        if self._broken or (isinstance(self._decoder, XmlRecords) and self._decoder.repeated):
            # unreadable keeps nothing (as when whole); a repeated element on the path: no records
            return MappedAnswer([], not self._broken and self._complete)
        if self._skipped:
            log.warning(
                "%s: %d record(s) were skipped (no id or origin, or a value that is not JSON)",
                self._mappings[0].backend,
                self._skipped,
            )
        out = [r for made in self._out if made is not None for r in made]
        readable = self._complete and all(made is not None for made in self._out)
        return MappedAnswer(out, readable)

    # -- what is read ------------------------------------------------------------------------------

    def _finish(self) -> None:
        if isinstance(self._decoder, XmlRecords):
            self._map(self._decoder.close())
        elif isinstance(self._decoder, JsonRecords):
            self._map(self._decoder.close())
            skeleton = self._decoder.skeleton()
            # what the mappings select outside the streamed array (e.g. an object at the path)
            for i, m in enumerate(self._mappings):
                self._run(i, m.select, [skeleton])

    def _map(self, records: list[Any]) -> None:
        for i, within in enumerate(self._within):
            self._run(i, within, records)

    def _run(self, i: int, within: Finder | None, records: list[Any]) -> None:
        """Mapping ``i`` over ``records`` (or what ``within`` finds in each)."""
        out = self._out[i]
        if out is None or not records:
            return
        m = self._mappings[i]
        ctx, uri, priority, system = self._ctx, self._source_uri, self._priority, self._systems[i]
        try:
            selected = records if within is None else [r for record in records for r in within(record)]
            skipped = 0
            for record in selected:
                skipped += map_record(m, record, ctx, uri, priority, system, out, self._shared)
            self._skipped += skipped
        except _SHAPE_ERRORS:
            log.warning("mapping %s could not read the answer from %s", m.name, m.backend)
            self._out[i] = None

    def _whole(self) -> MappedAnswer:
        """No plan: the body was kept, and is decoded whole — when it is whole."""
        assert self._kept is not None
        if not self._complete:
            return MappedAnswer([], False)
        started = time.perf_counter()
        body = b"".join(self._kept)
        self._kept = []
        answer = map_answer(
            body, self._mappings, self._ctx, source_uri=self._source_uri, priority=self._priority
        )
        self.took_ms += (time.perf_counter() - started) * 1000
        return answer


# ---- JSON ---------------------------------------------------------------------------------------

# From where the scan stands, past everything that is not a bracket — strings whole (a bracket in a
# string is text), scalars, separators — to the next bracket (group 1). Possessive: never backtracks,
# so a chunk ending inside a string costs one pass and simply does not match until more arrives.
_TO_BRACKET = re.compile(rb'(?:[^"\[\]{}]++|"(?:[^"\\]++|\\.)*+")*+([\[\]{}])', re.S)
_KEY_BEFORE = re.compile(rb'"((?:[^"\\]|\\.)*)"\s*:\s*\Z', re.S)
_OPEN = {ord("{"), ord("[")}


class JsonRecords:
    """The elements of the array at one dotted path of a JSON document (its records), each batch as
    soon as it is complete, read from the document as it arrives (``feed``, then ``close``; then
    ``skeleton()``: the document with that array empty). Raises ValueError for a document that is
    not JSON, at the chunk where it shows (or at ``close``)."""

    __slots__ = (
        "_batch",
        "_buf",
        "_elements",
        "_first",
        "_inner",
        "_last_end",
        "_path",
        "_pos",
        "_seen_array",
        "_skeleton",
        "_stack",
        "_stack_after_array",
    )

    def __init__(self, path: tuple[str, ...]) -> None:
        self._path = path
        self._buf = b""  # what has arrived and is not yet in the skeleton or a batch
        self._pos = 0  # where the scan stands in _buf
        self._skeleton: list[bytes] = []
        # outside the records: one entry per open container, the path index of an object on the
        # path (-1: off it); inside them: None
        self._stack: list[int] | None = []
        self._elements = False  # inside the records' array
        self._inner = 0  # inside it: how deep within the current element
        self._batch = 0  # inside it: where in _buf the next batch starts
        self._last_end = -1  # inside it: where in _buf the last complete element ended
        self._first = True  # inside it: no batch yet (the next does not start with a comma)
        self._seen_array = False
        self._stack_after_array: list[int] = []  # the stack outside, while inside the records

    def feed(self, chunk: bytes) -> list[Any]:
        self._buf = self._buf + chunk if self._buf else chunk
        return self._scan()

    def close(self) -> list[Any]:
        records = self._scan()
        if self._elements:
            raise ValueError("not valid JSON: the document ends inside its records")
        return records

    def skeleton(self) -> Any:
        """The document, its records' array emptied (decoded; ValueError when it is not JSON)."""
        try:
            return orjson.loads(b"".join(self._skeleton) + self._buf)
        except orjson.JSONDecodeError as exc:
            raise ValueError("not valid JSON") from exc

    def _scan(self) -> list[Any]:
        buf = self._buf
        pos = self._pos
        records: list[Any] = []
        match = _TO_BRACKET.match
        while True:
            m = match(buf, pos)
            if m is None:
                break
            at = m.end() - 1
            pos = m.end()
            bracket = buf[at]
            if self._elements:
                if bracket in _OPEN:
                    self._inner += 1
                elif self._inner:
                    self._inner -= 1
                    if not self._inner:
                        self._last_end = pos
                else:  # the array's own end
                    if bracket != ord("]"):
                        raise ValueError("not valid JSON: unbalanced brackets")
                    records += self._flush(buf, at, last=True)
                    self._elements = False
                    self._skeleton.append(b"[")
                    buf, pos = buf[at:], 1  # (the "]" goes to the skeleton with what follows)
                    self._stack = self._stack_after_array
                continue
            stack = self._stack
            assert stack is not None
            if bracket in _OPEN:
                on = -1
                parent = stack[-1] if stack else None
                if parent is None:
                    on = 0 if bracket == ord("{") and self._path else -1
                elif parent >= 0 and parent < len(self._path):
                    key = _key_before(buf, m.start(), at)
                    if key == self._path[parent]:
                        if parent + 1 == len(self._path):
                            if bracket == ord("["):  # the records' array
                                if self._seen_array:
                                    raise ValueError("not valid JSON for these mappings: two record lists")
                                self._seen_array = True
                                self._skeleton.append(buf[:at])
                                self._stack_after_array = stack
                                self._stack = None
                                buf, pos = buf[at + 1 :], 0
                                self._elements, self._inner, self._first = True, 0, True
                                self._batch, self._last_end = 0, -1
                                continue
                        elif bracket == ord("{"):
                            on = parent + 1
                stack.append(on)
            else:
                if not stack:
                    raise ValueError("not valid JSON: unbalanced brackets")
                stack.pop()
        if self._elements:
            # a batch of the elements complete so far; what follows stays for the next chunk
            if self._last_end > self._batch:
                records += self._flush(buf, self._last_end, last=False)
                buf, pos = buf[self._last_end :], pos - self._last_end
                self._batch, self._last_end = 0, -1
        elif pos:  # (outside the records, what has been scanned is the skeleton's)
            self._skeleton.append(buf[:pos])
            buf, pos = buf[pos:], 0
        self._buf, self._pos = buf, pos
        return records

    def _flush(self, buf: bytes, end: int, *, last: bool) -> list[Any]:
        """The elements in buf[_batch:end], decoded (dotted-select semantics: None dropped)."""
        text = buf[self._batch : end].strip()
        if not self._first:
            if not text:
                return []
            if not text.startswith(b","):  # elements are separated by commas
                raise ValueError("not valid JSON: a missing comma")
            text = text[1:]
            if not text.strip():  # a comma before the end: "[..., ]"
                raise ValueError("not valid JSON: a trailing comma")
        elif not text:
            return []
        try:
            decoded = orjson.loads(b"[" + text + b"]")
        except orjson.JSONDecodeError as exc:
            raise ValueError("not valid JSON") from exc
        self._first = False
        return [e for e in decoded if e is not None]


def _key_before(buf: bytes, start: int, at: int) -> str | None:
    """The object key just before ``at`` (a bracket) in ``buf[start:at]``, or None."""
    m = _KEY_BEFORE.search(buf, start, at)
    if m is None:
        return None
    raw = m.group(1)
    if b"\\" in raw:
        try:
            key = orjson.loads(b'"' + raw + b'"')
        except orjson.JSONDecodeError:
            return None
        return key if isinstance(key, str) else None
    return raw.decode("utf-8", "replace")
