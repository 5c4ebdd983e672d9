"""The request a mapping reads: a template (``RequestSpec``) rendered with the request's context
into one backend call (``Rendered``), and the answer that positively says "unknown patient"
(``UnknownPatient``). The ``request:`` section of a mapping is checked in ``validate.py``."""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, NamedTuple
from urllib.parse import quote, urlencode
from xml.sax.saxutils import escape as xml_escape

import orjson

from proxy.mapping.xml import parse_xml
from proxy.timeutil import SWEDEN

Context = Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class UnknownPatient:
    """How a backend's patient lookup says, positively, "this patient is unknown here": an answer
    with this HTTP ``status`` whose body (in the request's format) holds ``equals`` at ``path``
    (dotted keys). Only such an answer means "holds nothing"; any other non-2xx is a failure."""

    status: int
    path: tuple[str, ...]
    equals: str

    def says_unknown(self, status: int, body: bytes, fmt: str) -> bool:
        """True only when the answer carries the declared status and body marker."""
        if status != self.status:
            return False
        try:
            if fmt == "xml":
                node: Any = parse_xml(body)
            else:
                node = orjson.loads(body)
        except ValueError:
            return False
        for step in self.path:
            if not isinstance(node, dict) or step not in node:
                return False
            node = node[step]
        return isinstance(node, str | int) and not isinstance(node, bool) and str(node) == self.equals


@dataclass(frozen=True, slots=True)
class DateFilter:
    """A date range the backend applies to this request (``request.filters.<param>``), bound to a
    date search parameter of the resources its mappings make (``param``): the bounds go out as query
    parameters ``start``/``end`` (either may be absent) or, for a request with a body, as the
    ``body`` fragment (``{@from}``, ``{@to}``) put where the body writes ``{@filters}``. Dates in
    ``format`` (strftime), Swedish local days, both inclusive."""

    param: str  # the search parameter (a date one of the type the mappings make)
    start: str | None
    end: str | None
    format: str
    body: str | None = None


# a bound the facade does not have, for a body fragment that needs both (the simulators and RIVTA
# accept these as "no limit" in effect: nothing is dated before or after them)
_EARLIEST = datetime(1900, 1, 1)
_LATEST = datetime(9998, 12, 31)


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """How to fetch the raw answer a mapping reads. Several mappings may share one request."""

    method: str
    path: str
    query: tuple[tuple[str, str], ...]
    body: str | None
    headers: tuple[tuple[str, str], ...]
    format: str  # "json" | "xml"
    # declared on a backend's patient lookup only: the answer that says "unknown patient" (see
    # UnknownPatient); never part of the request's identity
    unknown_patient: UnknownPatient | None = field(default=None, compare=False)
    # the date range the backend can apply (``DateFilter``); None: it is always asked for the whole list
    date_filter: DateFilter | None = field(default=None, compare=False)
    # a narrowed copy (``narrowed``): the fetch key of the whole-list request it narrows — its readers
    # and mapping digests are that request's; "" for a request as the mapping declares it
    narrows: str = field(default="", compare=False)
    # The fetch key: the identity of the backend call. Mappings with equal fetch keys are served by
    # one call, and it indexes what is per call within one process: the answers of a run, the
    # mappings that read each answer (``MappingSet.readers``), the requests asked. Derived once here;
    # it is read several times per request and per backend call. It is *not* the cache key: an
    # entry also depends on the mappings that made it (``MappingSet.cache_key``: fetch key + their
    # digest), so that a deploy never serves the old mappings' output.
    fetch_key: str = field(init=False, compare=False)
    _path: str = field(init=False, compare=False, repr=False)  # the path template, percent-encoded

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "fetch_key", f"{self.method} {self.path} {self.query} {self.headers} {self.body}"
        )
        object.__setattr__(self, "_path", _encoded_path_template(self.path))

    @property
    def whole_key(self) -> str:
        """The fetch key of the whole-list request: this one's, or the one a narrowed copy narrows."""
        return self.narrows or self.fetch_key

    def narrowed(self, lo: float | None, hi: float | None) -> RequestSpec:
        """A copy asking the backend only for records dated in ``[lo, hi)`` (epoch seconds; None:
        open), as whole Swedish local days widened by one day on each side: never narrower than the
        FHIR semantics, whatever zone the search or the record is written in. The bounds are literal
        parts of the copy, so its fetch key (and from it its cache and learning keys) differs from
        the whole list's and from any other range's."""
        f = self.date_filter
        assert f is not None and not self.narrows and (lo is not None or hi is not None)
        first = _local_day(lo) - timedelta(days=1) if lo is not None else None
        # (the range is half-open: its last instant is a second before ``hi``)
        last = _local_day(hi - 1) + timedelta(days=1) if hi is not None else None
        if f.body is not None:
            assert self.body is not None
            fragment = f.body.replace("{@from}", (first or _EARLIEST).strftime(f.format)).replace(
                "{@to}", (last or _LATEST).strftime(f.format)
            )
            return replace(self, body=self.body.replace("{@filters}", fragment), narrows=self.fetch_key)
        query = list(self.query)
        if first is not None and f.start is not None:
            query.append((f.start, first.strftime(f.format)))
        if last is not None and f.end is not None:
            query.append((f.end, last.strftime(f.format)))
        return replace(self, query=tuple(query), narrows=self.fetch_key)

    @property
    def key(self) -> str:
        """The fetch key (its older name)."""
        return self.fetch_key

    @property
    def learning_key(self) -> str:
        """What the learnt cost of handling an answer is kept under (``BackendClient.handled``): the
        fetch key — per process, the mappings reading one call's answer are fixed, so the cost of
        mapping it is a property of the call; nothing learnt outlives the process. A narrowed copy's
        is its whole list's marked as narrowed: a narrowed answer costs little beside the whole
        list, but one key per range asked would grow without bound (the ranges are the askers')."""
        return f"{self.narrows} (narrowed)" if self.narrows else self.fetch_key

    def render(self, ctx: Context) -> Rendered:
        """Path, query, headers and body with the request's context filled in.

        Values are escaped for where they go: the path is percent-encoded (a context value as one
        segment), and an XML body gets XML escaping (context values come from validated identifiers
        and config, but a config value must not be able to break an envelope either).
        """
        plain = _ContextView(ctx)
        path = self._path.format_map(_ContextView(ctx, _segment))
        query = [(k, v.format_map(plain)) for k, v in self.query]
        headers = {k: v.format_map(plain) for k, v in self.headers}
        body = None
        if self.body is not None:
            escape = xml_escape if self.format == "xml" else None
            body = self.body.replace("{@filters}", "").format_map(_ContextView(ctx, escape)).encode()
        return Rendered(path, query, headers, body)


def _local_day(t: float) -> datetime:
    """The Swedish local day (midnight, naive) instant ``t`` falls on."""
    return datetime.fromtimestamp(t, SWEDEN).replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)


class Rendered(NamedTuple):
    """One request, ready to send."""

    path: str  # percent-encoded
    query: list[tuple[str, str]]  # as the template gives it (not yet encoded)
    headers: dict[str, str]
    body: bytes | None

    @property
    def target(self) -> str:
        """Path and query string, percent-encoded: what follows the backend's base URL."""
        return f"{self.path}?{urlencode(self.query, quote_via=quote)}" if self.query else self.path


# what a path may hold as it is: unreserved characters, sub-delimiters, ":", "@", "/" (RFC 3986
# §3.3), and "%" (the configured path may be percent-encoded already)
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"


_LONE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")  # a "%" that does not start an escape


def _segment(value: str) -> str:
    if value in (".", ".."):  # a value is one segment, never a step up the path
        return value.replace(".", "%2E")
    return quote(value, safe="")


def _encoded_path_template(template: str) -> str:
    """The path template with its own characters percent-encoded where the URL syntax needs it (a
    space, a non-ASCII letter); the ``{@name}`` fields are kept for ``format_map``."""
    out = []
    for literal, name, spec, conversion in string.Formatter().parse(template):
        out.append(quote(_LONE_PERCENT.sub("%25", literal), safe=_PATH_SAFE))
        if name is not None:
            fmt = name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "")
            out.append("{" + fmt + "}")
    return "".join(out)


class _ContextView:
    """``str.format_map`` over the context, where request templates write ``{@pnr}``; a value is
    escaped only when a template uses it."""

    __slots__ = ("ctx", "escape")

    def __init__(self, ctx: Context, escape: Callable[[str], str] | None = None) -> None:
        self.ctx = ctx
        self.escape = escape

    def __getitem__(self, key: str) -> Any:
        if not key.startswith("@") or key[1:] not in self.ctx:
            raise KeyError(key)
        value = self.ctx[key[1:]]
        return self.escape(str(value)) if self.escape else value
