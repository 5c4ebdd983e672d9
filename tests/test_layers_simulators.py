"""The product does not import the simulators: only the CLI's ``demo``/``simulate``/``mappings check``
(``proxy/cli.py``) starts them. A module anywhere else under ``proxy/`` that imports
``proxy.simulators`` (absolute or relative, at module level or inside a function) fails here, so a
deployment's code path never carries the stand-ins and their synthetic patients.
"""

from __future__ import annotations

import ast
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


def offenders() -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path in ALLOWED or (PACKAGE / "simulators") in path.parents:
            continue
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        is_package = path.name == "__init__.py"
        module = ".".join(("proxy", *(parts[:-1] if is_package else parts)))
        names = imported(module, is_package, path.read_text(encoding="utf-8"))
        hits = sorted(m for m in names if m == "proxy.simulators" or m.startswith("proxy.simulators."))
        found += [f"{path.relative_to(PACKAGE.parent)} imports {m}" for m in hits]
    return found


def test_nothing_in_the_product_imports_the_simulators() -> None:
    assert offenders() == []


def test_the_scan_sees_relative_nested_and_package_imports() -> None:
    """The scanner itself: relative imports from a module and from a package, and one in a function."""
    source = "def f():\n    from ..simulators import population\n"
    assert "proxy.simulators.population" in imported("proxy.fhir.server", False, source)
    assert "proxy.simulators" in imported("proxy.auth", True, "from ..simulators import faults\n")
    assert "proxy.simulators.faults" in imported("proxy.x", False, "import proxy.simulators.faults\n")
    assert "proxy.simulators" not in imported("proxy.x", False, "from proxy import simulation\n")
