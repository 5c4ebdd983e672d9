"""Load and compile every mapping a deployment uses, once, at start-up.

Layout: ``<mappings dir>/<folder>/*.yaml`` — one file per backend resource kind — and
``<mappings dir>/terminology/*.yaml`` with named code maps shared by all backends. Which folder
belongs to which backend is set in ``config/`` (``backends.<name>.mappings``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from proxy.fhir.ids import ResourceIds
from proxy.hsa import HSA_SYSTEM
from proxy.mapping.compiler import CompiledMapping, compile_mapping
from proxy.mapping.requests import RequestSpec
from proxy.mapping.validate import MappingError
from proxy.pnr import dashed, oid_of
from proxy.settings import load_yaml
from proxy.types import PatientRef

# Context names every request provides to templates, besides the backend's own ``vars``.
REQUEST_CONTEXT = frozenset(
    {"pnr", "pnr_dash", "pnr_system", "pnr_oid", "patient_id", "source", "hsa_system"}
)


def request_context(patient: PatientRef, backend: str, variables: Mapping[str, str]) -> dict[str, str]:
    """The ``{@name}`` values a backend's request and field templates see for one patient."""
    return {
        **variables,
        "pnr": patient.pnr,
        "pnr_dash": dashed(patient.pnr),
        "pnr_system": patient.system,
        "pnr_oid": oid_of(patient.pnr),
        "patient_id": patient.fhir_id,
        "source": backend,
        "hsa_system": HSA_SYSTEM,  # the one system every HSA-id is written in (proxy.hsa)
    }


@dataclass(frozen=True, slots=True)
class MappingSet:
    """All compiled mappings, per backend, in file-name order."""

    by_backend: Mapping[str, tuple[CompiledMapping, ...]]
    # backend → the configuration its mappings read besides their YAML (its ``vars``, source URI,
    # priority), as text: part of its cache keys, like the mappings' own digests
    inputs: Mapping[str, str] = field(default_factory=dict)
    # (backend, fetch key) → every mapping that reads that request's answer, whatever it makes
    readers: Mapping[tuple[str, str], tuple[CompiledMapping, ...]] = field(init=False)
    # (backend, fetch key) → its cache key (see ``cache_key``)
    cache_keys: Mapping[tuple[str, str], str] = field(init=False)
    # backend → its patient lookup: the one request that declares ``unknown_patient`` (if any)
    lookups: Mapping[str, RequestSpec] = field(init=False)
    # types asked → with the types they reference (at most one entry per set of the ten types)
    _closures: dict[frozenset[str], frozenset[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        readers: dict[tuple[str, str], list[CompiledMapping]] = {}
        for backend, ms in self.by_backend.items():
            for m in ms:
                readers.setdefault((backend, m.request.fetch_key), []).append(m)
        object.__setattr__(self, "readers", {k: tuple(v) for k, v in readers.items()})
        object.__setattr__(
            self,
            "cache_keys",
            {
                (backend, key): _cache_key(key, ms, self.inputs.get(backend, ""))
                for (backend, key), ms in self.readers.items()
            },
        )
        lookups: dict[str, RequestSpec] = {}
        for backend, ms in self.by_backend.items():
            for m in ms:
                if m.request.unknown_patient is None:
                    continue
                if backend in lookups and lookups[backend].fetch_key != m.request.fetch_key:
                    raise MappingError(
                        f"{m.file}: request.unknown_patient: backend {backend!r} declares it on two "
                        "different requests; declare it on its patient lookup only"
                    )
                if backend in lookups and lookups[backend].unknown_patient != m.request.unknown_patient:
                    raise MappingError(
                        f"{m.file}: request.unknown_patient: differs from the other declaration"
                    )
                lookups[backend] = m.request
        object.__setattr__(self, "lookups", lookups)
        object.__setattr__(self, "_closures", {})

    def cache_key(self, backend: str, fetch_key: str) -> str:
        """The key a backend's mapped answer to one request is cached under (with the patient id,
        ``proxy.cache.entry_key``): ``<contract>.<mappings>`` — 16 hex of the fetch key, and 16 hex
        over the digests of every mapping that reads the answer (their YAML and the code maps they
        use) and the backend's configuration they read. Equal only when the entry was made by the
        same mappings: after a deploy that changes them, the old entries are never served."""
        return self.cache_keys[(backend, fetch_key)]

    def readers_of(self, backend: str, spec: RequestSpec) -> tuple[CompiledMapping, ...]:
        """Every mapping that reads ``spec``'s answer: a narrowed copy's are the whole list's."""
        return self.readers.get((backend, spec.whole_key), ())

    def cache_key_of(self, backend: str, spec: RequestSpec) -> str:
        """``cache_key`` of ``spec``; a narrowed copy (``RequestSpec.narrowed``) has its own contract
        (its fetch key, the range in it) beside the whole list's mappings: a narrowed answer is never
        served as the whole list, nor the whole list as a narrowed one, nor one range as another."""
        if not spec.narrows:
            return self.cache_keys[(backend, spec.fetch_key)]
        return _cache_key(spec.fetch_key, self.readers[(backend, spec.narrows)], self.inputs.get(backend, ""))

    def for_types(self, backend: str, types: Iterable[str]) -> tuple[CompiledMapping, ...]:
        wanted = set(types)
        return tuple(m for m in self.by_backend.get(backend, ()) if m.resource_type in wanted)

    def with_referenced(self, types: Iterable[str]) -> frozenset[str]:
        """``types`` plus every type their mappings may reference, transitively.

        Redaction keeps a reference only when its target is in the answer and visible, so a search
        fetches the referenced types too — to vouch for the references it may keep.
        """
        asked = frozenset(types)
        known = self._closures.get(asked)
        if known is not None:  # (the mappings never change: one walk per set of types)
            return known
        closure = set(asked)
        while True:
            more = {t for m in self.all() if m.resource_type in closure for t in m.references} - closure
            if not more:
                break
            closure |= more
        self._closures[asked] = result = frozenset(closure)
        return result

    @property
    def resource_types(self) -> frozenset[str]:
        return frozenset(m.resource_type for ms in self.by_backend.values() for m in ms)

    def all(self) -> tuple[CompiledMapping, ...]:
        return tuple(m for ms in self.by_backend.values() for m in ms)

    def sources_by_type(self) -> dict[str, tuple[str, ...]]:
        """Per resource type the mappings make, the backends that hold it (in the mappings' order)."""
        out: dict[str, list[str]] = {}
        for backend, ms in self.by_backend.items():
            for rtype in dict.fromkeys(m.resource_type for m in ms):
                out.setdefault(rtype, []).append(backend)
        return {rtype: tuple(backends) for rtype, backends in out.items()}


def _cache_key(fetch_key: str, readers: Iterable[CompiledMapping], inputs: str) -> str:
    contract = hashlib.blake2b(fetch_key.encode(), digest_size=8).hexdigest()
    made_by = hashlib.blake2b(digest_size=8)
    for digest in sorted(m.digest for m in readers):
        made_by.update(digest.encode())
    made_by.update(inputs.encode())
    return f"{contract}.{made_by.hexdigest()}"


def _read_yaml(path: Path, root: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as fh:
            return load_yaml(fh)
    except yaml.YAMLError as exc:
        raise MappingError(f"{_rel(path, root)}: not valid YAML: {exc}") from None


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root.parent))
    except ValueError:
        return path.name


def load_code_maps(mappings_dir: Path) -> dict[str, dict[str, Any]]:
    maps: dict[str, dict[str, Any]] = {}
    term = mappings_dir / "terminology"
    if not term.is_dir():
        return maps
    for path in sorted(term.glob("*.yaml")):
        doc = _read_yaml(path, mappings_dir)
        if not isinstance(doc, dict):
            raise MappingError(f"{_rel(path, mappings_dir)}: expects name: {{local: standard}} tables")
        for name, table in doc.items():
            if not isinstance(table, dict):
                raise MappingError(f"{_rel(path, mappings_dir)}: {name}: expects a {{local: standard}} table")
            if name in maps:
                raise MappingError(f"{_rel(path, mappings_dir)}: {name}: code map defined twice")
            maps[name] = table
    return maps


def load_backend_mappings(
    folder: Path,
    backend: str,
    code_maps: Mapping[str, Mapping[str, Any]],
    context_names: frozenset[str],
    root: Path | None = None,
    *,
    ids: ResourceIds,
    care_documentation: bool = True,
) -> tuple[CompiledMapping, ...]:
    """Compile every ``*.yaml`` in one backend's folder; ``ids`` keys its resource ids.

    A backend that holds PDL care documentation (the default) must say whose record each one is:
    every mapping but Patient (demographics belong to no provider) names ``care_provider``, or the
    PDL rules could not decide who may read its records (fail closed: refused here, at start-up)."""
    root = root or folder.parent
    if not folder.is_dir():
        raise MappingError(f"{_rel(folder, root)}: mapping folder for backend {backend!r} not found")
    docs = {p.stem: (p, _read_yaml(p, root)) for p in sorted(folder.glob("*.yaml"))}
    if not docs:
        raise MappingError(f"{_rel(folder, root)}: no mappings (*.yaml) for backend {backend!r}")
    types = {stem: doc.get("resource") if isinstance(doc, dict) else None for stem, (_, doc) in docs.items()}
    compiled = []
    for stem, (path, doc) in docs.items():
        mapping = compile_mapping(
            doc,
            file=_rel(path, root),
            backend=backend,
            name=stem,
            code_maps=code_maps,
            resolve_ref=types.get,
            context_names=context_names,
            ids=ids,
        )
        if care_documentation and mapping.care_provider is None and mapping.resource_type != "Patient":
            raise MappingError(
                f"{mapping.file}: care_provider: is required for {mapping.resource_type}: whose record it "
                f"is decides who may read it (PDL). A backend that holds no PDL care documentation says so "
                f"in the config: backends.{backend}.care_documentation: false"
            )
        compiled.append(mapping)
    return tuple(compiled)


def load_mappings(
    mappings_dir: Path,
    backends: Mapping[str, tuple[str, frozenset[str]]],
    *,
    ids: ResourceIds,
    without_care_documentation: frozenset[str] = frozenset(),
    inputs: Mapping[str, str] | None = None,
) -> MappingSet:
    """Compile the mappings of each backend: ``{backend: (folder name, its extra context names)}``;
    ``ids`` (from the deployment's key) makes the resource ids. ``without_care_documentation``:
    backends declared as holding no PDL care documentation. ``inputs``: per backend, the
    configuration its mappings read (see ``MappingSet.inputs``)."""
    code_maps = load_code_maps(mappings_dir)
    by_backend = {
        name: load_backend_mappings(
            mappings_dir / folder,
            name,
            code_maps,
            REQUEST_CONTEXT | extra,
            root=mappings_dir,
            care_documentation=name not in without_care_documentation,
            ids=ids,
        )
        for name, (folder, extra) in backends.items()
    }
    return MappingSet(by_backend=by_backend, inputs=dict(inputs or {}))
