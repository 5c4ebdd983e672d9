"""The house's walls, checked on the source (``lint-imports`` checks the layer contract in
``pyproject.toml``; these run with the tests):

- no two packages of ``proxy/`` import each other, directly (a two-way dependency);
- every package and module of ``proxy/`` has its place in the layer contract, so a new one cannot
  sit outside the house unchecked;
- the layers from ``proxy.fhir`` down (the core and FHIR layers) are exactly the modules mypy checks
  with ``--strict``'s flags (the override in ``pyproject.toml``);
- the product does not import the simulators: only the CLI's ``demo``/``simulate``/``mappings check``
(``proxy/cli.py``) starts them. A module anywhere else under ``proxy/`` that imports
``proxy.simulators`` (absolute or relative, at module level or inside a function) fails here, so a
deployment's code path never carries the stand-ins and their synthetic patients.
"""

from __future__ import annotations

import ast
import tomllib
from collections import defaultdict
from pathlib import Path

import proxy

PACKAGE = Path(proxy.__file__).resolve().parent
ALLOWED = {PACKAGE / "cli.py"}


def imported(module: str, is_package: bool, source: str) -> set[str]:
    """The fully qualified modules ``source`` (module ``module``) imports, relative ones resolved."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            out.add(target)
            out.update(f"{target}.{a.name}" for a in node.names)
    return out


def modules() -> list[tuple[Path, str, set[str]]]:
    """Every module under ``proxy/``: its path, its dotted name, and what it imports."""
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        is_package = path.name == "__init__.py"
        module = ".".join(("proxy", *(parts[:-1] if is_package else parts)))
        out.append((path, module, imported(module, is_package, path.read_text(encoding="utf-8"))))
    return out


def room(module: str) -> str | None:
    """The package or top-level module of ``proxy`` a module belongs to (None: ``proxy`` itself)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else None


def two_way(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((a, b) for a, targets in graph.items() for b in targets if a < b and a in graph.get(b, ()))


def package_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = defaultdict(set)
    for _path, module, names in modules():
        here = room(module)
        for name in names:
            there = room(name) if name.startswith("proxy.") else None
            if here is not None and there is not None and there != here and there in ROOMS:
                graph[here].add(there)
    return graph


ROOMS = {
    f"proxy.{p.stem if p.is_file() else p.name}"
    for p in PACKAGE.iterdir()
    if (p.suffix == ".py" and p.name != "__init__.py") or (p / "__init__.py").exists()
}


def test_no_two_packages_import_each_other() -> None:
    assert two_way(package_graph()) == []


def test_the_two_way_check_sees_a_cycle() -> None:
    assert two_way({"proxy.fhir": {"proxy.pipeline"}, "proxy.pipeline": {"proxy.fhir", "proxy.types"}}) == [
        ("proxy.fhir", "proxy.pipeline")
    ]


def test_every_room_has_its_layer_in_the_contract() -> None:
    config = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text(encoding="utf-8"))
    (house,) = [c for c in config["tool"]["importlinter"]["contracts"] if c["id"] == "house"]
    placed = [name.strip() for layer in house["layers"] for name in layer.split("|")]
    assert len(placed) == len(set(placed)), "a room is named in two layers"
    unplaced = ROOMS - set(placed) - {"proxy._build"}  # (setup-time only: builds the wheel's data)
    assert unplaced == set(), "every package and module of proxy/ belongs in a layer of the house"


def offenders() -> list[str]:
    found = []
    for path, _module, names in modules():
        if path in ALLOWED or (PACKAGE / "simulators") in path.parents:
            continue
        hits = sorted(m for m in names if m == "proxy.simulators" or m.startswith("proxy.simulators."))
        found += [f"{path.relative_to(PACKAGE.parent)} imports {m}" for m in hits]
    return found


def test_nothing_in_the_product_imports_the_simulators() -> None:
    assert offenders() == []


def test_the_scan_sees_relative_nested_and_package_imports() -> None:
    """The scanner itself: relative imports from a module and from a package, and one in a function."""
    source = "def f():\n    from ..simulators import population\n"
    assert "proxy.simulators.population" in imported("proxy.edge.server", False, source)
    assert "proxy.simulators" in imported("proxy.auth", True, "from ..simulators import faults\n")
    assert "proxy.simulators.faults" in imported("proxy.x", False, "import proxy.simulators.faults\n")
    assert "proxy.simulators" not in imported("proxy.x", False, "from proxy import simulation\n")


# What `mypy --strict` turns on, as per-module options (`strict` itself is global-only in mypy's
# config; warn_redundant_casts is global-only too).
STRICT_FLAGS = {
    "disallow_any_generics": True,
    "disallow_subclassing_any": True,
    "disallow_untyped_calls": True,
    "disallow_untyped_defs": True,
    "disallow_incomplete_defs": True,
    "check_untyped_defs": True,
    "disallow_untyped_decorators": True,
    "warn_unused_ignores": True,
    "warn_return_any": True,
    "implicit_reexport": False,
    "strict_equality": True,
    "extra_checks": True,
}


def test_the_core_and_fhir_layers_are_type_checked_strictly() -> None:
    """The mypy override with the strict flags names exactly the rooms of the layers from
    ``proxy.fhir`` down (a package with its modules), so a new core module cannot slip in unchecked."""
    config = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text(encoding="utf-8"))
    (house,) = [c for c in config["tool"]["importlinter"]["contracts"] if c["id"] == "house"]
    core = house["layers"][house["layers"].index("proxy.fhir") :]
    expected: set[str] = set()
    for name in (n.strip() for layer in core for n in layer.split("|")):
        is_package = (PACKAGE / name.removeprefix("proxy.") / "__init__.py").exists()
        expected.add(f"{name}.*" if is_package else name)  # (`pkg.*` is the package and its modules)
    assert {"proxy.types", "proxy.settings", "proxy.loop", "proxy.fhir.*"} <= expected  # (the scan itself)
    strict = [o for o in config["tool"]["mypy"].get("overrides", []) if STRICT_FLAGS.items() <= o.items()]
    assert len(strict) == 1, "one mypy override sets every flag of mypy --strict"
    (override,) = strict
    modules = override["module"]
    assert len(modules) == len(set(modules))
    assert set(modules) == expected
