"""The incremental decode (``proxy.mapping.stream``) makes exactly what the whole decode makes.

Every simulator answer for every demo and generated person, each distinct request, fed in chunks
of every size from one byte up: ``AnswerStream`` gives the resources ``map_answer`` gives the whole
body, in the same order, with the same readability. Generated JSON (hypothesis: strings holding
brackets, quotes and escapes, nulls, nested lists, scalars among the records, the path holding an
object or nothing) gives the records a dotted select gives; a document that is not JSON is refused
as the whole decode refuses it. A cut answer keeps the records that arrived whole, and is unreadable.
"""

from __future__ import annotations

import random
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.mapping.compiler import CompiledMapping
from proxy.mapping.paths import compile_path
from proxy.mapping.run import MappedAnswer, map_answer
from proxy.mapping.stream import AnswerStream, JsonRecords, plan
from proxy.mapping.xml import XmlRecords, parse_xml
from proxy.simulators import population as pop
from tests import contract

PEOPLE = {
    "cosmic": contract.PEOPLE["cosmic"],
    "viva": [*pop.DEMO_PEOPLE, *pop.generated_people(8)],
    "npo": contract.PEOPLE["npo"],
}


def readers(backend: contract.Backend) -> dict[str, tuple[CompiledMapping, ...]]:
    """Each distinct request's key → every mapping that reads its answer (as the facade groups them)."""
    out: dict[str, list[CompiledMapping]] = {}
    for m in backend.mappings:
        out.setdefault(m.request.fetch_key, []).append(m)
    return {k: tuple(v) for k, v in out.items()}


async def answers(
    backend: contract.Backend,
) -> list[tuple[tuple[CompiledMapping, ...], dict[str, str], bytes]]:
    """(readers, context, raw body) of every 2xx answer the simulator gives its people."""
    out = []
    async with contract.simulator(backend, PEOPLE[backend.name]) as client:
        for person in PEOPLE[backend.name]:
            ctx = backend.context(person)
            for group in readers(backend).values():
                path, query, headers, body = group[0].request.render(dict(ctx))
                resp = await client.request(
                    group[0].request.method, path, params=query, data=body, headers=headers
                )
                raw = await resp.read()
                if resp.status == 200:
                    out.append((group, ctx, raw))
    return out


def streamed(
    group: tuple[CompiledMapping, ...],
    ctx: dict[str, str],
    raw: bytes,
    sizes: list[int],
    *,
    cut: int | None = None,
) -> MappedAnswer:
    stream = AnswerStream(group, dict(ctx), source_uri="urn:test", priority=1)
    at, end = 0, len(raw) if cut is None else cut
    i = 0
    while at < end:
        size = sizes[i % len(sizes)]
        i += 1
        if not stream.feed(raw[at : min(at + size, end)]):
            break
        at += size
    stream.close(complete=cut is None)
    return stream.answer()


def same(a: MappedAnswer, b: MappedAnswer) -> None:
    assert a.readable == b.readable
    assert [orjson.dumps(r.resource) for r in a.resources] == [orjson.dumps(r.resource) for r in b.resources]
    assert [r._replace(resource=None) for r in a.resources] == [
        r._replace(resource=None) for r in b.resources
    ]


@pytest.mark.parametrize("backend", ["cosmic", "viva", "npo"])
async def test_every_simulator_answer_streamed_in_any_chunks_maps_as_when_whole(backend: str) -> None:
    b = contract.BACKENDS[backend]
    got = await answers(b)
    assert got
    rng = random.Random(backend)
    records = 0
    for group, ctx, raw in got:
        whole = map_answer(raw, group, dict(ctx), source_uri="urn:test", priority=1)
        records += len(whole.resources)
        for sizes in ([1], [7, 1, 3], [64], [rng.randint(1, 4096) for _ in range(5)], [len(raw)]):
            same(streamed(group, ctx, raw, sizes), whole)
    assert records > 50  # (the answers hold records to compare)


def test_the_shipped_mappings_are_all_streamed_but_a_whole_document_select() -> None:
    """Every request of the shipped mappings has a plan, but Cosmic's patient (``select: $``: the
    document is the record, decoded whole at the end)."""
    unplanned = [
        group[0].request.path
        for b in contract.BACKENDS.values()
        for group in readers(b).values()
        if plan(group) is None
    ]
    assert unplanned == ["/cosmic/api/v1/patients/{@pnr_dash}"]


@pytest.mark.parametrize("backend", ["cosmic", "viva", "npo"])
async def test_a_cut_answer_keeps_what_arrived_whole_and_is_unreadable(backend: str) -> None:
    b = contract.BACKENDS[backend]
    for group, ctx, raw in await answers(b):
        whole = map_answer(raw, group, dict(ctx), source_uri="urn:test", priority=1)
        if len(whole.resources) < 2 or plan(group) is None:
            continue
        want = [orjson.dumps(r.resource) for r in whole.resources]
        for cut in (len(raw) // 3, len(raw) - 2):
            partial = streamed(group, ctx, raw, [97], cut=cut)
            assert not partial.readable
            got = [orjson.dumps(r.resource) for r in partial.resources]
            assert set(got) <= set(want)  # records that arrived whole, mapped as when whole
            if cut < len(raw) // 2:
                assert len(got) < len(want)  # (the last record ends near the end)


def test_xml_a_repeated_element_on_the_path_has_no_records_as_when_whole() -> None:
    doc = b"<E><B><R><x>1</x><x>2</x></R></B><B><R><x>3</x></R></B></E>"
    path = ("E", "B", "R", "x")
    assert compile_path(".".join(path))(parse_xml(doc)) == []
    records = XmlRecords(path)
    got = records.feed(doc) + records.close()
    assert records.repeated and got  # (read, and flagged: the stream keeps none of them)


def test_xml_refuses_a_doctype_even_split_across_chunks() -> None:
    records = XmlRecords(("E", "x"))
    records.feed(b"<?xml version='1.0'?><!DOC")
    with pytest.raises(ValueError, match="DOCTYPE"):
        records.feed(b"TYPE E [<!ENTITY a 'b'>]><E><x>&a;</x></E>")


# ---- JSON, generated ----------------------------------------------------------------------------

_text = st.text(alphabet=st.sampled_from(list('ab{}[]",:\\ é\n\t')), max_size=12)
_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False),
    _text,
)
_value = st.recursive(
    _scalar,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_text, inner, max_size=4)),
    max_leaves=12,
)
_records = st.lists(st.one_of(st.dictionaries(_text, _value, max_size=5), _value), max_size=12)
_document = st.one_of(
    st.builds(lambda rs, extra: {**extra, "items": rs}, _records, st.dictionaries(_text, _value, max_size=3)),
    st.builds(lambda rs, extra: {"items": rs, **extra}, _records, st.dictionaries(_text, _value, max_size=3)),
    st.builds(lambda r: {"items": r}, st.dictionaries(_text, _value, max_size=3)),  # an object at the path
    st.builds(lambda v: {"a": {"items": v}, "items": None}, _records),  # nothing at the path
    _value,  # anything at all
)


def json_records(raw: bytes, path: tuple[str, ...], sizes: list[int]) -> list[Any]:
    """The records JsonRecords cuts out of ``raw`` fed in ``sizes``, with what a dotted select
    finds in its skeleton (as AnswerStream reads them)."""
    records = JsonRecords(path)
    out: list[Any] = []
    at, i = 0, 0
    while at < len(raw):
        size = sizes[i % len(sizes)]
        i += 1
        out += records.feed(raw[at : at + size])
        at += size
    out += records.close()
    return out + compile_path(".".join(path))(records.skeleton())


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=_document, sizes=st.lists(st.integers(1, 40), min_size=1, max_size=5), pretty=st.booleans())
def test_json_records_are_what_a_dotted_select_finds(doc: Any, sizes: list[int], pretty: bool) -> None:
    raw = orjson.dumps(doc, option=orjson.OPT_INDENT_2 if pretty else 0)
    want = compile_path("$.items")(orjson.loads(raw))
    assert json_records(raw, ("items",), sizes) == want


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=_document, sizes=st.lists(st.integers(1, 40), min_size=1, max_size=5), data=st.data())
def test_json_that_is_not_json_is_refused(doc: Any, sizes: list[int], data: st.DataObject) -> None:
    """A document cut short, or with a byte changed, is refused when the whole decode refuses it."""
    raw = orjson.dumps(doc)
    at = data.draw(st.integers(0, len(raw) - 1))
    broken = (
        raw[:at]
        if data.draw(st.booleans())
        else raw[:at] + data.draw(st.sampled_from([b",", b"]", b"}", b'"', b"x"])) + raw[at + 1 :]
    )
    try:
        want = compile_path("$.items")(orjson.loads(broken))
    except orjson.JSONDecodeError:
        with pytest.raises(ValueError):
            json_records(broken, ("items",), sizes)
    else:
        assert json_records(broken, ("items",), sizes) == want


def test_json_a_trailing_comma_or_a_missing_one_is_refused() -> None:
    for raw in (b'{"items": [{"a": 1},]}', b'{"items": [{"a": 1} {"a": 2}]}', b'{"items": [,{"a": 1}]}'):
        with pytest.raises(ValueError):
            json_records(raw, ("items",), [3])


def test_json_two_record_lists_at_the_path_are_refused() -> None:
    with pytest.raises(ValueError):
        json_records(b'{"items": [{"a": 1}], "items": [{"a": 2}]}', ("items",), [5])


def test_json_an_escaped_key_on_the_path_is_read() -> None:
    assert json_records(b'{"it\\u0065ms": [{"a": 1}]}', ("items",), [4]) == [{"a": 1}]
