"""Compile one mapping YAML document into a frozen, callable ``CompiledMapping``.

The mapping language is documented in ``mappings/README.md``. In short, a FHIR element tree whose
leaves are:

* plain scalars — constants; a string containing ``{...}`` is a template
  (``{a.b}`` reads the record, ``{@name}`` reads the request context);
* ``{$path: <JSONPath>}`` — the first match in the record;
* ``{$const: ...}`` / ``{$template: ...}`` — explicit forms;
* ``{$each: <JSONPath>, $build: <tree>}`` — one element per match, built relative to the match;
* ``{$ref: {mapping: <name>, id: <template>}}`` — a reference to another mapping's resource;

with modifiers on ``$path``/``$template`` values, applied in this order: ``$map`` (code map),
``$date`` (strptime format or ``iso``), ``$as`` (boolean/integer/decimal/string/code/base64),
``$default``; and ``$when`` (a condition) on any spec or element object, with ``$else`` (a constant
scalar for when it does not hold) on a spec.

Everything is validated here, once, at start-up: a broken mapping raises ``MappingError`` naming
the file and the key. Nothing is parsed per request.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
import string
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple
from urllib.parse import quote, urlencode
from xml.sax.saxutils import escape as xml_escape

import orjson

from proxy import __version__
from proxy.fhir.ids import ResourceIds
from proxy.mapping.paths import Finder, First, PathError, compile_first, compile_path, dotted_keys
from proxy.mapping.xml import parse_xml
from proxy.timeutil import SWEDEN, LocalTime, format_kind, iso_local_to_fhir, local_to_fhir, localize

Context = Mapping[str, Any]
Builder = Callable[[Any, Context], Any]
Predicate = Callable[[Any], bool]

SUPPORTED_TYPES = frozenset(
    {
        "Patient",
        "Condition",
        "MedicationStatement",
        "MedicationAdministration",
        "Procedure",
        "Flag",
        "AllergyIntolerance",
        "Observation",
        "Immunization",
        "Encounter",
        "CarePlan",
        "DocumentReference",
    }
)

_SPEC_KEYS = frozenset(
    {"$path", "$const", "$template", "$each", "$build", "$ref", "$map", "$date", "$as", "$default", "$when"}
) | {"$else"}
_TOP_KEYS = frozenset(
    {
        "resource",
        "description",
        "request",
        "select",
        "where",
        "id",
        "origin",
        "care_provider",
        "care_unit",
        "security",
        "fields",
    }
)
_REQUEST_KEYS = frozenset({"method", "path", "query", "body", "headers", "format", "unknown_patient"})
_CONDITION_OPS = frozenset(
    {"equals", "not_equals", "in", "not_in", "exists", "before_now", "not_before_now", "mapped", "unmapped"}
)
_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


def now() -> datetime:
    """The wall clock in Swedish time, for ``before_now`` (module-level: a test may set it)."""
    return datetime.now(SWEDEN)


class MappingError(ValueError):
    """A mapping that cannot be compiled. The message names the file and the key path."""


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
    def key(self) -> str:
        """The fetch key (its older name)."""
        return self.fetch_key

    @property
    def learning_key(self) -> str:
        """What the learnt cost of handling an answer is kept under (``BackendClient.handled``): the
        fetch key — per process, the mappings reading one call's answer are fixed, so the cost of
        mapping it is a property of the call; nothing learnt outlives the process."""
        return self.fetch_key

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
            body = self.body.format_map(_ContextView(ctx, escape)).encode()
        return Rendered(path, query, headers, body)


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


@dataclass(frozen=True, slots=True)
class SecurityRule:
    when: Predicate | None
    label: dict[str, str]


@dataclass(frozen=True, slots=True)
class CompiledMapping:
    """A mapping ready to run: select records from a raw answer, build one FHIR resource each."""

    name: str  # "<backend>/<file stem>"
    backend: str
    resource_type: str
    request: RequestSpec
    select: Finder
    where: Predicate | None
    record_id: Builder | None  # None for Patient: the facade's patient id is used
    origin: Builder | None
    care_provider: Builder | None  # HSA-id of the care provider whose record this is (PDL decisions)
    care_unit: Builder | None  # HSA-id of the care unit
    security: tuple[SecurityRule, ...]
    fields: Builder
    file: str
    ids: ResourceIds = field(repr=False, compare=False)  # the deployment's keyed id hash
    references: frozenset[str] = frozenset()  # resource types its $refs point at
    # what this mapping makes from an answer depends on: its document and the code maps it names
    # (16 hex of BLAKE2b, computed once here); part of every cache key of its request's answers
    digest: str = field(default="", compare=False)

    def stable_id(self, patient_id: str, record_id: str) -> str:
        return stable_id(self.ids, patient_id, self.backend, self.name, record_id)


def stable_id(ids: ResourceIds, patient_id: str, backend: str, mapping_name: str, record_id: str) -> str:
    """The FHIR id of a mapped resource: ``<patient id>-<backend>-<16 hex of keyed BLAKE2b>``.

    Stable for (patient, source, record) under the deployment's key, and not computable without
    it; it starts with the patient id so that a read by id knows whom to ask the backends about
    (see proxy.fhir.ids).
    """
    return f"{patient_id}-{backend}-{ids.digest(mapping_name, record_id)}"


# ----------------------------------------------------------------------------------------------
# Compilation


class _Compiler:
    def __init__(
        self,
        file: str,
        backend: str,
        name: str,
        code_maps: Mapping[str, Mapping[str, Any]],
        resolve_ref: Callable[[str], str | None],
        context_names: frozenset[str],
        ids: ResourceIds,
    ) -> None:
        self.ids = ids
        self.context_names = context_names
        self.ref_types: set[str] = set()  # resource types this mapping's $refs point at
        self.file = file
        self.backend = backend
        self.name = name
        self.code_maps = code_maps
        self.code_maps_used: set[str] = set()  # (named ones: they are part of the mapping's digest)
        self.resolve_ref = resolve_ref  # mapping name in this backend -> its resource type

    def fail(self, where: str, message: str) -> MappingError:
        return MappingError(f"{self.file}: {where}: {message}")

    # ---- paths, templates, conditions ----------------------------------------------------

    def path(self, expr: Any, where: str) -> Finder:
        try:
            return compile_path(expr)
        except PathError as exc:
            raise self.fail(where, str(exc)) from None

    def first(self, expr: Any, where: str) -> First:
        try:
            return compile_first(expr)
        except PathError as exc:
            raise self.fail(where, str(exc)) from None

    def template(self, text: str, where: str) -> tuple[str | _Placeholder, ...]:
        """``"Patient/{@patient_id}"``: literal text and placeholders (record paths and context
        names), in order, without empty literals. ``_TreeSource.template`` makes the code."""
        parts: list[str | _Placeholder] = []
        pos = 0
        for m in _PLACEHOLDER.finditer(text):
            parts.append(text[pos : m.start()])
            name = m.group(1).strip()
            if not name:
                raise self.fail(where, f"empty placeholder in template {text!r}")
            if name.startswith("@"):
                if name[1:] not in self.context_names:
                    raise self.fail(
                        where, f"unknown context name {name!r}; known: {sorted(self.context_names)}"
                    )
                parts.append(_Placeholder(ctx=name[1:]))
            else:
                parts.append(_Placeholder(first=self.first(name, where), keys=dotted_keys(name)))
            pos = m.end()
        parts.append(text[pos:])
        return tuple(p for p in parts if p != "")

    def condition(self, spec: Any, where: str) -> Predicate:
        """``{path: x, equals: v}`` (or a list of such, all of which must hold)."""
        if isinstance(spec, list):
            preds = [self.condition(s, f"{where}[{i}]") for i, s in enumerate(spec)]
            return lambda rec: all(p(rec) for p in preds)
        if not isinstance(spec, dict) or "path" not in spec:
            raise self.fail(where, "a condition is {path: <JSONPath>, <op>: <value>}")
        ops = set(spec) - {"path"}
        if len(ops) != 1 or not ops <= _CONDITION_OPS:
            raise self.fail(where, f"a condition needs exactly one of {sorted(_CONDITION_OPS)}")
        (op,) = ops
        find = self.path(spec["path"], f"{where}.path")
        arg = spec[op]
        if op in ("in", "not_in"):
            if not isinstance(arg, list):
                raise self.fail(f"{where}.{op}", "expects a list")
            allowed = frozenset(scalar_text(a) for a in arg)
            if op == "in":
                return lambda rec: any(scalar_text(v) in allowed for v in find(rec))
            return lambda rec: not any(scalar_text(v) in allowed for v in find(rec))
        if op in ("mapped", "unmapped"):
            # a code map (by name, or inline) knows the value / a value is there that it does not know
            known = frozenset(self.code_map_table(arg, f"{where}.{op}"))

            def values(rec: Any) -> list[str]:
                return [scalar_text(v) for v in find(rec) if not _empty(v) and not isinstance(v, dict | list)]

            if op == "mapped":
                return lambda rec: any(v in known for v in values(rec))
            return lambda rec: (vs := values(rec)) != [] and not any(v in known for v in vs)
        if op == "exists":
            want = bool(arg)
            return lambda rec: bool(find(rec)) is want
        if op in ("before_now", "not_before_now"):
            # a local time (strptime format) at or before now; not_before_now: missing, unreadable
            # or later — so a validity end proves an end only when it is readable and has passed
            if not isinstance(arg, str) or "%" not in arg:
                raise self.fail(f"{where}.{op}", "expects the value's strptime format, e.g. '%Y%m%d%H%M%S'")

            def passed(rec: Any) -> bool:
                for v in find(rec):
                    try:  # by the local-time rule (proxy.timeutil.localize); instants compared
                        when = localize(datetime.strptime(str(v).strip(), arg))[0].timestamp()
                    except ValueError:
                        continue
                    if when <= now().timestamp():
                        return True
                return False

            return passed if op == "before_now" else lambda rec: not passed(rec)
        target = scalar_text(arg)
        if op == "equals":
            return lambda rec: any(scalar_text(v) == target for v in find(rec))
        return lambda rec: not any(scalar_text(v) == target for v in find(rec))

    # ---- element trees ---------------------------------------------------------------------
    #
    # An element tree — objects and lists down to the leaves — compiles to one Python function,
    # generated by ``_TreeSource``: nested objects and lists are built inline, without a call per
    # node; a leaf that reads a dotted path or renders a template is inline code too, and any other
    # leaf ($each, $ref, a full JSONPath, a $map/$date/$as step …) a compiled closure that the
    # function calls. A subtree with no leaf that reads the record or the context is built once, at
    # compile time, and shared by every resource: mapped resources are never modified afterwards
    # (they are cached and shared by requests as it is). Only the object ``fields`` returns is
    # always its own: the engine takes its meta out.

    def node(self, spec: Any, where: str) -> Builder:
        return _TreeSource(self).function(spec, where)

    def element(self, spec: dict[str, Any], where: str) -> Builder:
        """An element object (``fields``): its members may not be $-specs."""
        return _TreeSource(self).function(spec, where, element=True)

    def value_spec(self, spec: dict[str, Any], where: str) -> _Parts:
        unknown = set(spec) - _SPEC_KEYS
        if unknown:
            raise self.fail(where, f"unknown key(s) {sorted(unknown)}; allowed: {sorted(_SPEC_KEYS)}")
        sources = [k for k in ("$path", "$const", "$template", "$each", "$ref") if k in spec]
        if len(sources) != 1:
            raise self.fail(where, "needs exactly one of $path, $const, $template, $each, $ref")
        (src,) = sources
        keys: tuple[str, ...] | None = None
        template: tuple[str | _Placeholder, ...] | None = None
        base: Builder | None = None
        if src == "$const":
            const = spec["$const"]
            base = lambda rec, ctx: const  # noqa: E731
        elif src == "$template":
            if not isinstance(spec["$template"], str):
                raise self.fail(f"{where}.$template", "expects a string")
            template = self.template(spec["$template"], f"{where}.$template")
        elif src == "$path":
            first = self.first(spec["$path"], f"{where}.$path")
            keys = dotted_keys(spec["$path"])  # read inline by the generated code
            base = None if keys is not None else lambda rec, ctx: first(rec)
        elif src == "$each":
            if "$build" not in spec:
                raise self.fail(where, "$each needs $build")
            find = self.path(spec["$each"], f"{where}.$each")
            item = self.node(spec["$build"], f"{where}.$build")

            def each(rec: Any, ctx: Context) -> Any:
                out = [v for v in (item(m, ctx) for m in find(rec)) if not _empty(v)]
                return out or None

            base = each
        else:
            base = self.reference(spec["$ref"], f"{where}.$ref")
        if "$build" in spec and src != "$each":
            raise self.fail(where, "$build belongs with $each")

        steps: list[Callable[[Any], Any]] = []
        if "$map" in spec:
            steps.append(self.code_map(spec["$map"], f"{where}.$map"))
        if "$date" in spec:
            steps.append(self.date(spec["$date"], f"{where}.$date"))
        if "$as" in spec:
            steps.append(self.cast(spec["$as"], f"{where}.$as"))
        when = self.condition(spec["$when"], f"{where}.$when") if "$when" in spec else None
        otherwise = spec.get("$else")
        if "$else" in spec and (when is None or isinstance(otherwise, (dict, list)) or otherwise is None):
            raise self.fail(
                f"{where}.$else", "a constant scalar, beside a $when: the value when it does not hold"
            )
        default = spec.get("$default")
        computed = None  # a $default that is itself a value spec (e.g. a $const with $when/$else)
        if isinstance(default, dict) and any(k in default for k in ("$path", "$const", "$template", "$ref")):
            computed, default = self.node(default, f"{where}.$default"), None
        return _Parts(keys, template, base, tuple(steps), default, when, otherwise, computed)

    def reference(self, spec: Any, where: str) -> Builder:
        if not isinstance(spec, dict) or set(spec) != {"mapping", "id"}:
            raise self.fail(where, "expects {mapping: <mapping name in this backend>, id: <template>}")
        target = spec["mapping"]
        target_type = self.resolve_ref(target)
        if target_type is None:
            raise self.fail(f"{where}.mapping", f"no mapping {target!r} in backend {self.backend!r}")
        target_name = f"{self.backend}/{target}"
        self.ref_types.add(target_type)
        record_id = self.node(spec["id"], f"{where}.id")
        backend, ids = self.backend, self.ids

        def ref(rec: Any, ctx: Context) -> str | None:
            rid = record_id(rec, ctx)
            if rid is None:
                return None
            target_id = stable_id(ids, ctx["patient_id"], backend, target_name, scalar_text(rid))
            return f"{target_type}/{target_id}"

        return ref

    def code_map_table(self, spec: Any, where: str) -> dict[str, Any]:
        """A code map (a name in terminology/*.yaml, or an inline table), keyed by FHIR text."""
        if isinstance(spec, str):
            if spec not in self.code_maps:
                raise self.fail(where, f"unknown code map {spec!r} (mappings/terminology/*.yaml)")
            table = self.code_maps[spec]
            self.code_maps_used.add(spec)
        elif isinstance(spec, dict):
            table = spec
        else:
            raise self.fail(where, "expects a code map name or an inline {local: standard} table")
        return {scalar_text(k): v for k, v in table.items()}

    def code_map(self, spec: Any, where: str) -> Callable[[Any], Any]:
        lookup = self.code_map_table(spec, where)
        return lambda v: lookup.get(scalar_text(v))

    def date(self, spec: Any, where: str) -> Callable[[Any], Any]:
        if spec == "iso":

            def iso(v: Any) -> str | None:
                try:
                    return iso_local_to_fhir(str(v))
                except ValueError:
                    return None

            return iso
        if not isinstance(spec, str) or "%" not in spec:
            raise self.fail(where, "expects a strptime format such as '%Y%m%d%H%M', or 'iso'")
        kind = format_kind(spec)
        try:
            local_to_fhir("2001-02-03 04:05:06", "%Y-%m-%d %H:%M:%S", kind)
        except ValueError as exc:  # pragma: no cover - the sample always parses
            raise self.fail(where, str(exc)) from None

        def convert(v: Any) -> str | None:
            try:
                return local_to_fhir(str(v), spec, kind)
            except ValueError:
                return None  # an unreadable date is left out, never guessed

        return convert

    def cast(self, spec: Any, where: str) -> Callable[[Any], Any]:
        casts: dict[str, Callable[[Any], Any]] = {
            "boolean": _to_bool,
            "integer": _to_int,
            "decimal": _to_decimal,
            "string": scalar_text,
            "code": _to_code,
            "base64": lambda v: base64.b64encode(scalar_text(v).encode()).decode("ascii"),
        }
        if spec not in casts:
            raise self.fail(where, f"expects one of {sorted(casts)}")
        return casts[spec]


def _is_tree(spec: Any) -> bool:
    """An element object (no $-keys, or only a ``$when`` beside its members) or a list."""
    if isinstance(spec, list):
        return True
    if not isinstance(spec, dict):
        return False
    dollar = {k for k in spec if isinstance(k, str) and k.startswith("$")}
    return not dollar or (dollar == {"$when"} and len(spec) > 1)


def _is_constant(spec: Any) -> bool:
    """Nothing in ``spec`` reads the record or the context."""
    if isinstance(spec, dict):
        return all(
            not (isinstance(k, str) and k.startswith("$")) and _is_constant(v) for k, v in spec.items()
        )
    if isinstance(spec, list):
        return all(_is_constant(v) for v in spec)
    if isinstance(spec, str):
        return not _PLACEHOLDER.search(spec)
    return spec is not None


@dataclass(frozen=True, slots=True)
class _Placeholder:
    """A template's ``{@name}`` (``ctx``) or ``{record path}`` (``first``; ``keys`` if dotted)."""

    ctx: str | None = None
    first: First | None = None
    keys: tuple[str, ...] | None = None


@dataclass(frozen=True, slots=True)
class _Parts:
    """A compiled value spec: its source — a dotted path or a template (both read inline), or a
    builder — and what is applied to what it gives."""

    keys: tuple[str, ...] | None  # a dotted $path
    template: tuple[str | _Placeholder, ...] | None  # a $template
    base: Builder | None  # any other source
    steps: tuple[Callable[[Any], Any], ...]  # $map, $date, $as: applied while there is a value
    default: Any  # $default (None: none)
    when: Predicate | None  # $when: else no value (and no default) ...
    otherwise: Any = None  # ... or $else, a constant scalar
    computed_default: Builder | None = None  # a $default that is a value spec of its own


@dataclass(frozen=True, slots=True)
class _Value:
    """Where the generated code holds a node's value: a local name, or a constant bound by name."""

    name: str
    kind: str  # "dict" (a non-empty dict or None), "list" (a non-empty list or None), "any"
    constant: bool = False  # a compile-time value, never None or empty


_ELEMENT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _TreeSource:
    """The Python source of one element tree's builder, ``build(rec, ctx)``; see ``_Compiler.node``.

    The semantics are the language's: an empty value (None, "", whitespace, [] or {}) is left out,
    an object or list left empty is None, and a leaf's list value ($each) in a list contributes its
    items. Leaves are compiled by the ``_Compiler`` (which names file and key in every error)."""

    def __init__(self, compiler: _Compiler) -> None:
        self.c = compiler
        self.lines: list[str] = []
        self.env: dict[str, Any] = {
            "_empty": _empty,
            "_text": scalar_text,
            "_NO_RECORD": _NO_RECORD,
            "_LocalTime": LocalTime,
        }
        self.count = 0
        self.reads_record = False  # the function starts with ``rd``: the record if it is a dict

    def function(self, spec: Any, where: str, *, element: bool = False) -> Builder:
        if element:
            return self._compile(self.element(spec, where, 1), where)
        if _is_constant(spec) and not _is_tree(spec):  # a scalar, as it is (an id may be "0")
            return lambda rec, ctx: spec
        return self._compile(self.value(spec, where, 1), where)

    def _compile(self, value: _Value | None, where: str) -> Builder:
        result = "None" if value is None else value.name
        prelude = "    rd = rec if isinstance(rec, dict) else _NO_RECORD\n" if self.reads_record else ""
        source = "def build(rec, ctx):\n" + prelude + "".join(self.lines) + f"    return {result}\n"
        exec(compile(source, f"<mapping {self.c.file}: {where}>", "exec"), self.env)
        build: Builder = self.env["build"]
        return build

    def _name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def _put(self, depth: int, line: str) -> None:
        self.lines.append("    " * depth + line + "\n")

    def _bind(self, value: Any) -> str:
        name = self._name("k")
        self.env[name] = value
        return name

    def value(self, spec: Any, where: str, depth: int) -> _Value | None:
        """Lines computing ``spec``'s value; None when it is a constant that is empty."""
        if _is_constant(spec):  # built now, once; a constant tree through code of its own
            value = spec
            if _is_tree(spec):
                once = _TreeSource(self.c)
                value = once._compile(once.tree(spec, where, 1), where)(None, {})
            if _empty(value):
                return None
            kind = "dict" if isinstance(value, dict) else "list" if isinstance(value, list) else "any"
            return _Value(self._bind(value), kind, constant=True)
        if _is_tree(spec):
            return self.tree(spec, where, depth)
        var = self._name("v")
        if isinstance(spec, dict):
            self.leaf(self.c.value_spec(spec, where), var, depth)
        elif isinstance(spec, str):  # (a constant string was handled above: this is a template)
            self.template(self.c.template(spec, where), var, depth)
        else:
            raise self.c.fail(where, "null is not a value; leave the element out")
        return _Value(var, "any")

    def leaf(self, parts: _Parts, var: str, depth: int) -> None:
        """``$when``, then the source, then each step while there is a value, then ``$default``."""
        at = depth
        if parts.when is not None:
            self._put(depth, f"if {self._bind(parts.when)}(rec):")
            at = depth + 1
        if parts.keys is not None:
            self.read(parts.keys, var, at)
        elif parts.template is not None:
            self.template(parts.template, var, at)
        else:
            self._put(at, f"{var} = {self._bind(parts.base)}(rec, ctx)")
        for step in parts.steps:
            self._put(at, f"if {var} is not None:")
            self._put(at + 1, f"{var} = {self._bind(step)}({var})")
        if parts.default is not None:
            self._put(at, f"if {var} is None:")
            self._put(at + 1, f"{var} = {self._bind(parts.default)}")
        elif parts.computed_default is not None:
            self._put(at, f"if {var} is None:")
            self._put(at + 1, f"{var} = {self._bind(parts.computed_default)}(rec, ctx)")
        if parts.when is not None:
            self._put(depth, "else:")
            self._put(depth + 1, f"{var} = {self._bind(parts.otherwise)}")

    def read(self, keys: tuple[str, ...], var: str, depth: int) -> None:
        """A dotted path's first value, as ``paths.compile_first`` reads it."""
        self.reads_record = True
        self._put(depth, f"{var} = rd.get({keys[0]!r})")
        for key in keys[1:]:
            self._put(depth, f"{var} = {var}.get({key!r}) if isinstance({var}, dict) else None")
        self._put(depth, f"if isinstance({var}, list):")
        self._put(depth + 1, f"{var} = next((x for x in {var} if x is not None), None)")

    def template(self, parts: tuple[str | _Placeholder, ...], var: str, depth: int) -> None:
        """A lone placeholder keeps its value's own type; otherwise the text, with each value as
        FHIR text (``scalar_text``), or None as soon as one is missing or not a scalar."""
        if len(parts) == 1 and isinstance(parts[0], _Placeholder):
            self.placeholder(parts[0], var, depth)
            return
        self._put(depth, f"{var} = None")
        terms: list[str] = []
        at = depth
        for part in parts:
            if isinstance(part, str):
                terms.append(repr(part))
                continue
            t = self._name("t")
            self.placeholder(part, t, at)
            self._put(at, f"if {t} is not None and not isinstance({t}, (dict, list)):")
            at += 1
            terms.append(f"({t} if {t}.__class__ is str else _text({t}))")
        self._put(at, f"{var} = {' + '.join(terms) or repr('')}")

    def placeholder(self, part: _Placeholder, var: str, depth: int) -> None:
        if part.ctx is not None:
            self._put(depth, f"{var} = ctx.get({part.ctx!r})")
        elif part.keys is not None:
            self.read(part.keys, var, depth)
        else:
            self._put(depth, f"{var} = {self._bind(part.first)}(rec)")

    def tree(self, spec: Any, where: str, depth: int) -> _Value:
        if isinstance(spec, list):
            return self.sequence(spec, where, depth)
        if "$when" not in spec:
            return self.element(spec, where, depth)
        when = self._bind(self.c.condition(spec["$when"], f"{where}.$when"))
        var = self._name("v")
        self._put(depth, f"if {when}(rec):")
        inner = self.element({k: v for k, v in spec.items() if k != "$when"}, where, depth + 1)
        self._put(depth + 1, f"{var} = {inner.name}")
        self._put(depth, "else:")
        self._put(depth + 1, f"{var} = None")
        return _Value(var, "dict")

    def element(self, spec: dict[str, Any], where: str, depth: int) -> _Value:
        var = self._name("v")
        self._put(depth, f"{var} = {{}}")
        filled = False  # a constant member: never empty
        for key, sub in spec.items():
            if not isinstance(key, str) or not _ELEMENT_NAME.match(key):
                raise self.c.fail(where, f"{key!r} is not a FHIR element name")
            v = self.value(sub, f"{where}.{key}", depth)
            if v is None:
                continue
            if v.constant:
                self._put(depth, f"{var}[{key!r}] = {v.name}")
                filled = True
            elif v.kind == "any":
                self._put(depth, f"if {v.name} is not None and {_full(v.name)}:")
                self._put(depth + 1, f"{var}[{key!r}] = {v.name}")
                if isinstance(sub, dict) and "$date" in sub:  # a resolved local time: flagged beside it
                    self._put(depth + 1, f"if {v.name}.__class__ is _LocalTime:")
                    self._put(depth + 2, f"{var}[{key!r}] = str.__str__({v.name})")
                    self._put(depth + 2, f"{var}[{'_' + key!r}] = {{'extension': [{v.name}.flag()]}}")
            else:
                self._put(depth, f"if {v.name} is not None:")
                self._put(depth + 1, f"{var}[{key!r}] = {v.name}")
        if not filled:
            self._put(depth, f"if not {var}:")
            self._put(depth + 1, f"{var} = None")
        return _Value(var, "dict")

    def sequence(self, spec: list[Any], where: str, depth: int) -> _Value:
        var = self._name("v")
        self._put(depth, f"{var} = []")
        for i, sub in enumerate(spec):
            v = self.value(sub, f"{where}[{i}]", depth)
            if v is None:
                continue
            add = "extend" if v.kind == "list" else "append"  # a list's items are non-empty already
            if v.constant:
                self._put(depth, f"{var}.{add}({v.name})")
            elif v.kind != "any":
                self._put(depth, f"if {v.name} is not None:")
                self._put(depth + 1, f"{var}.{add}({v.name})")
            else:  # a leaf: an $each contributes its elements
                self._put(depth, f"if isinstance({v.name}, list):")
                self._put(depth + 1, f"{var}.extend([x for x in {v.name} if not _empty(x)])")
                self._put(depth, f"elif {_full(v.name)}:")
                self._put(depth + 1, f"{var}.append({v.name})")
        self._put(depth, f"if not {var}:")
        self._put(depth + 1, f"{var} = None")
        return _Value(var, "list")


_NO_RECORD: dict[str, Any] = {}  # what generated code reads a record that is not an object as (never written)


def _full(var: str) -> str:
    """Generated code: ``not _empty(var)``, without the call for the common case, a string."""
    return f"({var}.strip() if {var}.__class__ is str else not _empty({var}))"


def _empty(v: Any) -> bool:
    """FHIR has no empty values: None, "", [] and {} are left out (whitespace-only strings too)."""
    if v is None:
        return True
    if isinstance(v, str):
        return not v.strip()
    return isinstance(v, list | dict) and not v


def scalar_text(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _to_bool(v: Any) -> bool | None:
    if isinstance(v, bool):
        return v
    text = scalar_text(v).strip().lower()
    if text in ("true", "1", "j", "ja", "y", "yes"):
        return True
    if text in ("false", "0", "n", "nej", "no"):
        return False
    return None


def _to_code(v: Any) -> str | None:
    """FHIR ``code`` text (no leading or trailing whitespace, single spaces inside): a source's code
    echoed as it came (e.g. in an unmapped-code mark) must not make the resource invalid."""
    if isinstance(v, dict | list):
        return None
    return " ".join(scalar_text(v).split()) or None


def _to_int(v: Any) -> int | None:
    """A FHIR integer: 32-bit signed; a value outside that range is left out, never guessed."""
    try:
        n = int(scalar_text(v).strip())
    except ValueError:
        return None
    return n if -(2**31) <= n < 2**31 else None


_PLAIN_INTEGER = re.compile(r"[+-]?[0-9]+")
_PLAIN_DECIMAL = re.compile(r"[+-]?[0-9]+[.,][0-9]+")


def _to_decimal(v: Any) -> int | float | None:
    """A FHIR decimal: a whole number written without a decimal point or comma is an int, any
    other a float ("7.0" too: the decimals written are kept in FHIR's sense). The plain forms most
    values have are read directly; any other goes through ``Decimal`` (same results). A value JSON
    cannot carry as a number (a whole number beyond 64 bits, a float that overflows) is left out."""
    if v.__class__ is int:
        return _representable(v)
    text = scalar_text(v).strip()
    if _PLAIN_INTEGER.fullmatch(text):
        return _representable(int(text))
    if _PLAIN_DECIMAL.fullmatch(text):
        return _representable(float(text.replace(",", ".")))
    return _decimal(text)


_MAX_EXPONENT = sys.float_info.max_10_exp  # 308: a larger decimal exponent is no finite float


def _decimal(text: str) -> int | float | None:
    try:
        d = Decimal(text.replace(",", "."))  # Swedish decimal comma
    except InvalidOperation:
        return None
    if not d.is_finite():
        return None
    if d and d.adjusted() > _MAX_EXPONENT:  # past every float (and 64-bit integer): JSON cannot
        return None  # carry it; and turning 1E100000 into an int would hold the loop for 0.3 s
    whole = d == d.to_integral_value() and "." not in text and "," not in text
    return _representable(int(d) if whole else float(d))


def _representable(n: int | float) -> int | float | None:
    """``n`` if JSON output can carry it exactly as written: a 64-bit integer, a finite float."""
    if n.__class__ is int:
        return n if -(2**63) <= n < 2**63 else None
    return n if math.isfinite(n) else None


def compile_mapping(
    doc: Any,
    *,
    file: str,
    backend: str,
    name: str,
    code_maps: Mapping[str, Mapping[str, Any]],
    resolve_ref: Callable[[str], str | None],
    context_names: frozenset[str],
    ids: ResourceIds,
) -> CompiledMapping:
    """Compile one parsed YAML mapping document. Raises MappingError naming ``file`` and the key.

    ``context_names`` are the ``{@name}`` values a request provides (patient identity plus the
    backend's configured ``vars``); any other name is an error here rather than a gap at run time.
    ``ids`` makes the resource ids (the mapping's own and its ``$ref`` targets') under the
    deployment's key.
    """
    c = _Compiler(file, backend, f"{backend}/{name}", code_maps, resolve_ref, context_names, ids)
    if not isinstance(doc, dict):
        raise c.fail("(top)", "a mapping is a YAML mapping with resource, request, select, fields")
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise c.fail("(top)", f"unknown key(s) {sorted(unknown)}; allowed: {sorted(_TOP_KEYS)}")
    for key in ("resource", "request", "select", "fields"):
        if key not in doc:
            raise c.fail(key, "is required")
    rtype = doc["resource"]
    if rtype not in SUPPORTED_TYPES:
        raise c.fail("resource", f"{rtype!r} is not one of {sorted(SUPPORTED_TYPES)}")
    if rtype != "Patient":
        for key in ("id", "origin"):
            if key not in doc:
                raise c.fail(key, f"is required for {rtype} (Patient mappings use the request's patient)")

    request = _compile_request(c, doc["request"])
    select = c.path(doc["select"], "select")
    where = c.condition(doc["where"], "where") if "where" in doc else None

    record_id = origin = None
    if rtype != "Patient":
        record_id = c.node(doc["id"], "id")
        origin = c.node(doc["origin"], "origin")

    security: list[SecurityRule] = []
    rules = doc.get("security", [])
    if not isinstance(rules, list):
        raise c.fail("security", "expects a list of {when?, label: {system, code}}")
    for i, rule in enumerate(rules):
        w = f"security[{i}]"
        if not isinstance(rule, dict) or "label" not in rule or set(rule) - {"when", "label"}:
            raise c.fail(w, "expects {when?: <condition>, label: {system, code, display?}}")
        label = rule["label"]
        if (
            not isinstance(label, dict)
            or not {"system", "code"} <= set(label)
            or set(label)
            - {
                "system",
                "code",
                "display",
            }
        ):
            raise c.fail(f"{w}.label", "expects {system, code, display?}")
        security.append(
            SecurityRule(
                when=c.condition(rule["when"], f"{w}.when") if "when" in rule else None,
                label={k: str(v) for k, v in label.items()},
            )
        )

    fields_spec = doc["fields"]
    if not isinstance(fields_spec, dict):
        raise c.fail("fields", "expects the FHIR element tree as a mapping")
    for reserved in ("resourceType", "id"):
        if reserved in fields_spec:
            raise c.fail(f"fields.{reserved}", "is set by the engine (see 'resource' and 'id')")
    fields = c.element(fields_spec, "fields")

    return CompiledMapping(
        name=f"{backend}/{name}",
        backend=backend,
        resource_type=rtype,
        request=request,
        select=select,
        where=where,
        record_id=record_id,
        origin=origin,
        care_provider=c.node(doc["care_provider"], "care_provider") if "care_provider" in doc else None,
        care_unit=c.node(doc["care_unit"], "care_unit") if "care_unit" in doc else None,
        security=tuple(security),
        fields=fields,
        file=file,
        ids=ids,
        references=frozenset(c.ref_types),
        digest=mapping_digest(backend, name, doc, {n: code_maps[n] for n in c.code_maps_used}),
    )


def mapping_digest(backend: str, name: str, doc: Any, code_maps: Mapping[str, Any]) -> str:
    """16 hex of BLAKE2b over what a mapping's output depends on besides its input: the facade's
    version, the mapping's name, its document and the code maps it uses (canonical JSON)."""
    canonical = orjson.dumps(
        [__version__, backend, name, doc, code_maps],
        option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS,
        default=repr,
    )
    return hashlib.blake2b(canonical, digest_size=8).hexdigest()


def _compile_request(c: _Compiler, spec: Any) -> RequestSpec:
    if not isinstance(spec, dict):
        raise c.fail("request", "expects {path, method?, query?, body?, headers?, format?, unknown_patient?}")
    unknown = set(spec) - _REQUEST_KEYS
    if unknown:
        raise c.fail("request", f"unknown key(s) {sorted(unknown)}; allowed: {sorted(_REQUEST_KEYS)}")
    path = spec.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise c.fail("request.path", "expects an absolute path such as /api/patients/{@pnr}")
    method = str(spec.get("method", "GET")).upper()
    if method not in ("GET", "POST"):
        raise c.fail("request.method", "expects GET or POST")
    fmt = spec.get("format", "json")
    if fmt not in ("json", "xml"):
        raise c.fail("request.format", "expects json or xml")
    body = spec.get("body")
    if body is not None and not isinstance(body, str):
        raise c.fail("request.body", "expects a string template")
    query = spec.get("query", {}) or {}
    headers = spec.get("headers", {}) or {}
    if not isinstance(query, dict) or not isinstance(headers, dict):
        raise c.fail("request", "query and headers expect mappings of name: template")
    try:
        rs = RequestSpec(
            method=method,
            path=path,
            query=tuple((str(k), str(v)) for k, v in query.items()),
            body=body,
            headers=tuple((str(k), str(v)) for k, v in headers.items()),
            format=fmt,
            unknown_patient=_compile_unknown_patient(c, spec.get("unknown_patient")),
        )
        rs.render({k: "x" for k in c.context_names})
    except (KeyError, ValueError, IndexError) as exc:
        raise c.fail("request", f"template uses an unknown context name or bad braces: {exc}") from None
    return rs


def _compile_unknown_patient(c: _Compiler, spec: Any) -> UnknownPatient | None:
    """``unknown_patient: {status: 404, body: {path: errorCode, equals: PATIENT_NOT_FOUND}}``: a
    status alone is not enough — a 404 can mean a moved endpoint as well as an unknown patient."""
    if spec is None:
        return None
    where = "request.unknown_patient"
    if not isinstance(spec, dict) or set(spec) != {"status", "body"}:
        raise c.fail(where, "expects {status: <4xx or 200>, body: {path: <dotted key>, equals: <value>}}")
    status = spec["status"]
    if not isinstance(status, int) or isinstance(status, bool) or not (status == 200 or 400 <= status < 500):
        raise c.fail(f"{where}.status", "expects 200 or a 4xx status")
    body = spec["body"]
    if not isinstance(body, dict) or set(body) != {"path", "equals"}:
        raise c.fail(f"{where}.body", "expects {path: <dotted key>, equals: <value>} (a positive marker)")
    path, equals = body["path"], body["equals"]
    if not isinstance(path, str) or not path or any(not step for step in path.split(".")):
        raise c.fail(f"{where}.body.path", "expects a dotted key such as errorCode or fel.kod")
    if not isinstance(equals, str | int) or isinstance(equals, bool) or str(equals) == "":
        raise c.fail(f"{where}.body.equals", "expects a non-empty string or number")
    return UnknownPatient(status, tuple(path.split(".")), str(equals))
