"""The checks of a mapping document, key by key, and the compilation of what they check.

Every spec (``$path``, ``$template``, a condition, ``$map``, ``$date``, ``$as``, ``$ref``, the
``request:`` section) is checked here, once, at start-up, and compiled to the closure the check
has proven sound; a broken one raises ``MappingError`` naming the file and the key path. Element
trees go to ``codegen.TreeSource``; values are coerced by ``coerce``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from proxy.fhir.ids import ResourceIds
from proxy.fhir.searchparams import BY_TYPE
from proxy.mapping.codegen import PLACEHOLDER, Builder, Parts, Placeholder, Predicate, TreeSource
from proxy.mapping.coerce import CASTS, empty, iso_date, local_date, scalar_text
from proxy.mapping.ids import stable_id
from proxy.mapping.paths import Finder, First, PathError, compile_first, compile_path, dotted_keys
from proxy.mapping.requests import Context, DateFilter, RequestSpec, UnknownPatient
from proxy.timeutil import SWEDEN, localize

_SPEC_KEYS = frozenset(
    {"$path", "$const", "$template", "$each", "$build", "$ref", "$map", "$date", "$as", "$default", "$when"}
) | {"$else"}
TOP_KEYS = frozenset(
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
_REQUEST_KEYS = frozenset(
    {"method", "path", "query", "body", "headers", "format", "unknown_patient", "filters"}
)
_CONDITION_OPS = frozenset(
    {"equals", "not_equals", "in", "not_in", "exists", "before_now", "not_before_now", "mapped", "unmapped"}
)


def now() -> datetime:
    """The wall clock in Swedish time, for ``before_now`` (module-level: a test may set it)."""
    return datetime.now(SWEDEN)


class MappingError(ValueError):
    """A mapping that cannot be compiled. The message names the file and the key path."""


class SpecCompiler:
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

    def template(self, text: str, where: str) -> tuple[str | Placeholder, ...]:
        """``"Patient/{@patient_id}"``: literal text and placeholders (record paths and context
        names), in order, without empty literals. ``TreeSource.template`` makes the code."""
        parts: list[str | Placeholder] = []
        pos = 0
        for m in PLACEHOLDER.finditer(text):
            parts.append(text[pos : m.start()])
            name = m.group(1).strip()
            if not name:
                raise self.fail(where, f"empty placeholder in template {text!r}")
            if name.startswith("@"):
                if name[1:] not in self.context_names:
                    raise self.fail(
                        where, f"unknown context name {name!r}; known: {sorted(self.context_names)}"
                    )
                parts.append(Placeholder(ctx=name[1:]))
            else:
                parts.append(Placeholder(first=self.first(name, where), keys=dotted_keys(name)))
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
                return [scalar_text(v) for v in find(rec) if not empty(v) and not isinstance(v, dict | list)]

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

    # ---- element trees (compiled to one function each: see codegen.py) ----------------------

    def node(self, spec: Any, where: str) -> Builder:
        return TreeSource(self).function(spec, where)

    def element(self, spec: dict[str, Any], where: str) -> Builder:
        """An element object (``fields``): its members may not be $-specs."""
        return TreeSource(self).function(spec, where, element=True)

    def value_spec(self, spec: dict[str, Any], where: str) -> Parts:
        unknown = set(spec) - _SPEC_KEYS
        if unknown:
            raise self.fail(where, f"unknown key(s) {sorted(unknown)}; allowed: {sorted(_SPEC_KEYS)}")
        sources = [k for k in ("$path", "$const", "$template", "$each", "$ref") if k in spec]
        if len(sources) != 1:
            raise self.fail(where, "needs exactly one of $path, $const, $template, $each, $ref")
        (src,) = sources
        keys: tuple[str, ...] | None = None
        template: tuple[str | Placeholder, ...] | None = None
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
                out = [v for v in (item(m, ctx) for m in find(rec)) if not empty(v)]
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
        return Parts(keys, template, base, tuple(steps), default, when, otherwise, computed)

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
            return iso_date
        if not isinstance(spec, str) or "%" not in spec:
            raise self.fail(where, "expects a strptime format such as '%Y%m%d%H%M', or 'iso'")
        try:
            return local_date(spec)
        except ValueError as exc:  # pragma: no cover - the sample always parses
            raise self.fail(where, str(exc)) from None

    def cast(self, spec: Any, where: str) -> Callable[[Any], Any]:
        if spec not in CASTS:
            raise self.fail(where, f"expects one of {sorted(CASTS)}")
        return CASTS[spec]


def compile_request(c: SpecCompiler, spec: Any, rtype: str) -> RequestSpec:
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
            date_filter=_compile_filters(c, spec.get("filters"), body, rtype),
        )
        rs.render({k: "x" for k in c.context_names})
    except (KeyError, ValueError, IndexError) as exc:
        raise c.fail("request", f"template uses an unknown context name or bad braces: {exc}") from None
    return rs


def _compile_filters(c: SpecCompiler, spec: Any, body: str | None, rtype: str) -> DateFilter | None:
    """``filters: {date: {from: fromDate, to: toDate, format: "%Y-%m-%d"}}`` (query parameters), or
    for a request with a body ``{date: {body: "<timePeriod>…{@from}…{@to}…", format: "%Y%m%d"}}``,
    the fragment put where the body writes ``{@filters}``. The key is one date search parameter of
    the type the mapping makes (``proxy.fhir.searchparams``): the one whose elements the backend's
    range goes by."""
    if spec is None:
        return None
    where = "request.filters"
    dates = sorted(p.name for p in BY_TYPE.get(rtype, ()) if p.kind == "date")
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in dates:
        raise c.fail(where, f"expects {{<one of {dates}>: {{from?, to?, body?, format}}}} for {rtype}")
    param = next(iter(spec))
    date = spec[param]
    where = f"{where}.{param}"
    allowed = {"from", "to", "format"} if body is None else {"body", "format"}
    if not isinstance(date, dict) or not set(date) <= allowed or "format" not in date:
        shape = "{from?: <query name>, to?: <query name>, format}" if body is None else "{body, format}"
        raise c.fail(where, f"expects {shape} for a request {'with' if body else 'without'} a body")
    fmt = date["format"]
    if not isinstance(fmt, str) or "%Y" not in fmt or "%d" not in fmt:
        raise c.fail(f"{where}.format", "expects a strftime date format such as '%Y-%m-%d'")
    if body is not None:
        fragment = date.get("body")
        if not isinstance(fragment, str) or "{@from}" not in fragment or "{@to}" not in fragment:
            raise c.fail(f"{where}.body", "expects a template fragment writing {@from} and {@to}")
        if "{@filters}" not in body:
            raise c.fail(f"{where}.body", "the request's body must write {@filters} where it goes")
        return DateFilter(param, None, None, fmt, fragment)
    start, end = date.get("from"), date.get("to")
    for name, value in (("from", start), ("to", end)):
        if value is not None and (not isinstance(value, str) or not value or "{" in value):
            raise c.fail(f"{where}.{name}", "expects a query parameter name")
    if start is None and end is None:
        raise c.fail(where, "expects from and/or to")
    return DateFilter(param, start, end, fmt)


def _compile_unknown_patient(c: SpecCompiler, spec: Any) -> UnknownPatient | None:
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
