"""Write mappings: a FHIR resource rendered into one backend's dialect (issue 22, "document once").

Layout: ``<mappings dir>/<folder>/write/*.yaml`` beside the folder's read mappings (which the read
registry never sees: it reads ``<folder>/*.yaml`` only). A file says which FHIR type it writes
(``resource``), for which resources of that type (``when``: conditions on the FHIR resource, as the
read side's ``where``), the request (``request: {method, path, headers?}``) and the dialect's JSON
(``body``: a template in the read mappings' language, the source record being the FHIR resource).
The same compiler checks it (``validate.SpecCompiler``), with what writing adds:

* ``$format`` on a value, after ``$map``/``$date``/``$as``: a strftime format turns a FHIR dateTime
  *with its zone* into the dialect's Swedish local time; ``decimal-comma`` writes a number with a
  decimal comma; ``base64-text`` decodes an ``Attachment.data`` to its UTF-8 text;
* ``$required: true``: the value must come out (a missing one is refused, not left out) — unless its
  ``$when`` does not hold;
* a ``$map`` (usually a reverse code map, FHIR code → dialect code, in ``terminology/``) that does
  not know a value present in the resource refuses it: the dialect cannot take it.

Anything the dialect cannot take raises ``WriteMappingError(field, reason)`` at render time, before
anything is stored or sent; a broken file raises ``MappingError`` at start-up naming file and key.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from proxy.fhir.ids import ResourceIds
from proxy.mapping.codegen import Builder, Parts, Predicate
from proxy.mapping.coerce import empty, scalar_text, to_decimal
from proxy.mapping.registry import _read_yaml, _rel, load_code_maps
from proxy.mapping.requests import Context, RequestSpec
from proxy.mapping.validate import SpecCompiler
from proxy.timeutil import SWEDEN
from proxy.types import SUPPORTED_TYPES

# What every write's templates may name besides the backend's own ``vars``: the patient, the
# identifier the facade minted for the entry, and the writer (stamped on what is written).
WRITE_CONTEXT = frozenset(
    {
        "pnr",
        "pnr_dash",
        "identifier",
        "writer_hsa_id",
        "writer_unit_hsa_id",
        "writer_provider_hsa_id",
        "writer_name",
    }
)
WRITE_KEYS = frozenset({"resource", "description", "when", "request", "body"})
_REQUEST_KEYS = frozenset({"method", "path", "headers"})
_WRITE_SPEC_KEYS = frozenset({"$format", "$required"})
_METHODS = frozenset({"POST", "PUT"})
# (a write needs no resource ids: no $ref in a write body; the read compiler asks for the key)
_NO_IDS = ResourceIds(b"\0" * 16)


class WriteMappingError(ValueError):
    """A resource the dialect cannot take: ``field`` names the body key path (as in the mapping
    file), ``reason`` why. Raised before anything is stored or sent; carries no record content."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True, slots=True)
class WriteRequest:
    """One request to a backend, ready to send: ``path`` percent-encoded, ``body`` JSON (UTF-8)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True, slots=True)
class WriteMapping:
    """One compiled ``write/*.yaml``: which resources it takes and how it renders them."""

    name: str  # "<backend>/write/<file stem>"
    backend: str
    resource_type: str
    file: str
    when: Predicate | None
    request: RequestSpec
    body: Builder

    def applies(self, resource: Mapping[str, Any]) -> bool:
        """Whether this mapping writes ``resource``: its type, and its ``when`` conditions."""
        if resource.get("resourceType") != self.resource_type:
            return False
        return self.when is None or self.when(resource)

    def render(self, resource: Mapping[str, Any], ctx: Context) -> WriteRequest:
        """The request writing ``resource``; ``ctx`` gives the ``{@name}`` values (``WRITE_CONTEXT``
        and the backend's vars). Raises ``WriteMappingError`` for what the dialect cannot take."""
        missing = sorted(n for n in WRITE_CONTEXT if not ctx.get(n) and n != "writer_name")
        if missing:  # (a programming error of the caller, never the client's: named plainly)
            raise WriteMappingError("(context)", f"missing {missing}")
        ctx = {k: v for k, v in ctx.items() if v not in ("", None)}  # (an empty value is missing)
        body = self.body(resource, ctx)
        if not isinstance(body, dict) or not body:
            raise WriteMappingError("body", "nothing to write")
        rendered = self.request.render(ctx)
        return WriteRequest(
            self.request.method,
            rendered.path,
            {"Content-Type": "application/json", **rendered.headers},
            orjson.dumps(body),
        )


@dataclass(frozen=True, slots=True)
class WriteMappings:
    """Every backend's write mappings, per resource type, in file-name order."""

    by_backend: Mapping[str, tuple[WriteMapping, ...]]

    def for_type(self, resource_type: str) -> dict[str, tuple[WriteMapping, ...]]:
        """backend → its mappings writing ``resource_type`` (backends with none left out)."""
        out = {
            backend: tuple(m for m in ms if m.resource_type == resource_type)
            for backend, ms in self.by_backend.items()
        }
        return {b: ms for b, ms in out.items() if ms}

    def select(self, backend: str, resource: Mapping[str, Any]) -> WriteMapping | None:
        """The one mapping of ``backend`` that writes ``resource`` (None: it cannot take it). Two
        that both apply are ambiguous: refused rather than guessed."""
        found = [m for m in self.by_backend.get(backend, ()) if m.applies(resource)]
        if len(found) > 1:
            raise WriteMappingError("(when)", f"{[m.file for m in found]} all apply")
        return found[0] if found else None

    @property
    def backends(self) -> frozenset[str]:
        return frozenset(b for b, ms in self.by_backend.items() if ms)


# ---- the compiler -------------------------------------------------------------------------------


class WriteSpecCompiler(SpecCompiler):
    """The read compiler, with the write modifiers (``$format``, ``$required``) and refusing code
    maps: a value present in the resource that a ``$map`` does not know is refused at render time."""

    def value_spec(self, spec: dict[str, Any], where: str) -> Parts:
        own = {k: spec[k] for k in _WRITE_SPEC_KEYS if k in spec}
        if "$ref" in spec:
            raise self.fail(where, "$ref belongs to read mappings")
        parts = super().value_spec({k: v for k, v in spec.items() if k not in own}, where)
        steps = parts.steps
        if "$format" in own:
            steps = (*steps, self.format(own["$format"], f"{where}.$format"))
        computed = parts.computed_default
        if "$required" in own:
            if own["$required"] is not True:
                raise self.fail(f"{where}.$required", "expects true (or leave it out)")
            if parts.default is not None:
                raise self.fail(f"{where}.$required", "a constant $default is never missing: drop one")
            computed = _refuse_missing(where, computed)
        return Parts(
            parts.keys,
            parts.template,
            parts.base,
            steps,
            parts.default,
            parts.when,
            parts.otherwise,
            computed,
        )

    def code_map(self, spec: Any, where: str) -> Callable[[Any], Any]:
        lookup = self.code_map_table(spec, where)
        field = where.removesuffix(".$map")

        def mapped(v: Any) -> Any:
            if isinstance(v, dict | list) or empty(v):
                return None
            out = lookup.get(scalar_text(v))
            if out is None:  # (never echoed: a "code" may be free text, a name, a personnummer)
                raise WriteMappingError(field, "the value is not one this target has an equivalent for")
            return out

        return mapped

    def format(self, spec: Any, where: str) -> Callable[[Any], Any]:
        field = where.removesuffix(".$format")
        if spec == "decimal-comma":

            def comma(v: Any) -> Any:
                n = to_decimal(v)
                if n is None or isinstance(v, bool):
                    raise WriteMappingError(field, "not a number")
                return scalar_text(n).replace(".", ",")

            return comma
        if spec == "base64-text":

            def text(v: Any) -> Any:
                try:
                    return base64.b64decode(str(v), validate=True).decode("utf-8")
                except (binascii.Error, UnicodeDecodeError, ValueError):
                    raise WriteMappingError(field, "not base64 of UTF-8 text") from None

            return text
        if not isinstance(spec, str) or "%" not in spec:
            raise self.fail(
                where, "expects a strftime format such as '%Y%m%d%H%M', decimal-comma or base64-text"
            )
        try:
            datetime(2001, 2, 3, 4, 5, 6).strftime(spec)
        except ValueError as exc:  # pragma: no cover - strftime takes nearly anything
            raise self.fail(where, str(exc)) from None
        return lambda v: local_time(v, spec, field)


def local_time(value: Any, fmt: str, field: str) -> str:
    """A FHIR dateTime with its zone → Swedish local time in ``fmt``. A time without a zone (or a
    bare date) is refused: which local time it means cannot be known."""
    text = str(value).strip()
    if len(text) <= 10 or "T" not in text:
        raise WriteMappingError(field, "expects a dateTime with a time and a zone")
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise WriteMappingError(field, "not a FHIR dateTime") from None
    if dt.tzinfo is None:
        raise WriteMappingError(field, "a dateTime without a zone")
    try:
        return dt.astimezone(SWEDEN).strftime(fmt)
    except OverflowError:  # (near year 1 or 9999: no Swedish local time to give)
        raise WriteMappingError(field, "a dateTime out of range") from None


def _refuse_missing(where: str, default: Builder | None) -> Builder:
    """``$required``: the value, else its ``$default`` spec's, else refused."""

    def refuse(rec: Any, ctx: Context) -> Any:
        value = default(rec, ctx) if default is not None else None
        if empty(value):
            raise WriteMappingError(where, "is required by the target and missing (or empty)")
        return value

    return refuse


def compile_write_mapping(
    doc: Any,
    *,
    file: str,
    backend: str,
    name: str,
    code_maps: Mapping[str, Mapping[str, Any]],
    context_names: frozenset[str],
) -> WriteMapping:
    """One parsed ``write/*.yaml``. Raises MappingError naming ``file`` and the key."""
    c = WriteSpecCompiler(
        file, backend, f"{backend}/write/{name}", code_maps, lambda _: None, context_names, _NO_IDS
    )
    if not isinstance(doc, dict):
        raise c.fail("(top)", "a write mapping is a YAML mapping with resource, request, body")
    unknown = set(doc) - WRITE_KEYS
    if unknown:
        raise c.fail("(top)", f"unknown key(s) {sorted(unknown)}; allowed: {sorted(WRITE_KEYS)}")
    for key in ("resource", "request", "body"):
        if key not in doc:
            raise c.fail(key, "is required")
    rtype = doc["resource"]
    if rtype not in SUPPORTED_TYPES:
        raise c.fail("resource", f"{rtype!r} is not one of {sorted(SUPPORTED_TYPES)}")
    when = c.condition(doc["when"], "when") if "when" in doc else None
    request = _compile_request(c, doc["request"])
    body = doc["body"]
    if not isinstance(body, dict) or not body:
        raise c.fail("body", "expects the dialect's JSON object as a mapping")
    return WriteMapping(
        name=f"{backend}/write/{name}",
        backend=backend,
        resource_type=rtype,
        file=file,
        when=when,
        request=request,
        body=c.element(body, "body"),
    )


def _compile_request(c: SpecCompiler, spec: Any) -> RequestSpec:
    if not isinstance(spec, dict):
        raise c.fail("request", "expects {method, path, headers?}")
    unknown = set(spec) - _REQUEST_KEYS
    if unknown:
        raise c.fail("request", f"unknown key(s) {sorted(unknown)}; allowed: {sorted(_REQUEST_KEYS)}")
    method = str(spec.get("method", "")).upper()
    if method not in _METHODS:
        raise c.fail("request.method", f"expects one of {sorted(_METHODS)}")
    path = spec.get("path")
    if not isinstance(path, str) or not path.startswith("/"):
        raise c.fail("request.path", "expects an absolute path such as /api/patients/{@pnr}")
    headers = spec.get("headers", {}) or {}
    if not isinstance(headers, dict):
        raise c.fail("request.headers", "expects a mapping of name: template")
    if any(str(k).lower() in ("idempotency-key", "content-type") for k in headers):
        raise c.fail("request.headers", "Idempotency-Key and Content-Type are set by the facade")
    try:
        rs = RequestSpec(
            method=method,
            path=path,
            query=(),
            body=None,
            headers=tuple((str(k), str(v)) for k, v in headers.items()),
            format="json",
        )
        rs.render({k: "x" for k in c.context_names})
    except (KeyError, ValueError, IndexError) as exc:
        raise c.fail("request", f"template uses an unknown context name or bad braces: {exc}") from None
    return rs


def compile_write_mappings(
    mappings_dir: Path,
    backends: Iterable[tuple[str, str]],
    *,
    variables: Mapping[str, Iterable[str]] | None = None,
) -> WriteMappings:
    """Compile ``<folder>/write/*.yaml`` of each (backend name, folder); a backend without a
    ``write/`` folder writes nothing. ``variables``: per backend, its ``vars`` names (templates may
    name them besides ``WRITE_CONTEXT``). Raises MappingError naming file and key."""
    code_maps = load_code_maps(mappings_dir)
    names = dict(variables or {})
    by_backend: dict[str, tuple[WriteMapping, ...]] = {}
    for backend, folder in backends:
        where = mappings_dir / folder / "write"
        context = WRITE_CONTEXT | frozenset(names.get(backend, ()))
        compiled = [
            compile_write_mapping(
                _read_yaml(path, mappings_dir),
                file=_rel(path, mappings_dir),
                backend=backend,
                name=path.stem,
                code_maps=code_maps,
                context_names=context,
            )
            for path in (sorted(where.glob("*.yaml")) if where.is_dir() else ())
        ]
        by_backend[backend] = tuple(compiled)
    return WriteMappings(by_backend)
