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

Here the document's top level is checked and its parts wired: ``validate`` checks and compiles
each spec, ``codegen`` turns element trees into Python functions, ``coerce`` holds the value
coercions, ``requests`` the request templates, ``ids`` the resource ids.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy import __version__
from proxy.fhir.ids import ResourceIds
from proxy.mapping.codegen import Builder, Predicate
from proxy.mapping.ids import stable_id
from proxy.mapping.paths import Finder
from proxy.mapping.requests import RequestSpec
from proxy.mapping.validate import TOP_KEYS, SpecCompiler, compile_request
from proxy.types import SUPPORTED_TYPES


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
    # the ``select`` path as written: what the incremental decoder plans from (proxy.mapping.stream)
    select_path: str = ""
    # the keys an answer must hold for an empty selection to mean "no records" (``answer_keys``)
    required: tuple[str, ...] = ()

    def stable_id(self, patient_id: str, record_id: str) -> str:
        return stable_id(self.ids, patient_id, self.backend, self.name, record_id)


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
    c = SpecCompiler(file, backend, f"{backend}/{name}", code_maps, resolve_ref, context_names, ids)
    if not isinstance(doc, dict):
        raise c.fail("(top)", "a mapping is a YAML mapping with resource, request, select, fields")
    unknown = set(doc) - TOP_KEYS
    if unknown:
        raise c.fail("(top)", f"unknown key(s) {sorted(unknown)}; allowed: {sorted(TOP_KEYS)}")
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

    request = compile_request(c, doc["request"], rtype)
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
        select_path=doc["select"].strip() if isinstance(doc["select"], str) else "",
        required=answer_keys(doc["select"], request.format),
    )


def answer_keys(select: Any, fmt: str) -> tuple[str, ...]:
    """What an answer must hold for an empty selection to be "no records" rather than a broken
    answer: the select path's leading dotted keys. A JSON dialect says "none" with the list there
    and empty, so all of them; in XML zero repetitions of an element are no element, so all but the
    record element itself (its parent, e.g. the RIVTA response element, must be there)."""
    if not isinstance(select, str):
        return ()
    head = select.strip().removeprefix("$").removeprefix(".")
    cut = min((i for i in (head.find("["), head.find("..")) if i >= 0), default=-1)
    whole = cut < 0
    keys = tuple(k for k in (head if whole else head[:cut]).split(".") if k)
    return keys[:-1] if fmt == "xml" and whole else keys


def mapping_digest(backend: str, name: str, doc: Any, code_maps: Mapping[str, Any]) -> str:
    """16 hex of BLAKE2b over what a mapping's output depends on besides its input: the facade's
    version, the mapping's name, its document and the code maps it uses (canonical JSON)."""
    canonical = orjson.dumps(
        [__version__, backend, name, doc, code_maps],
        option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS,
        default=repr,
    )
    return hashlib.blake2b(canonical, digest_size=8).hexdigest()
