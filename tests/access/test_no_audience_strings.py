"""No product module decides by an audience's name: what an audience is (the patient's own, social
care, emergency access, purpose, display) is an attribute of its ``Audience`` (proxy/audience.py),
built from the config. A comparison of an audience to a string literal would bring the strings
back — and an audience added in the config would silently miss that branch."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from proxy.audience import DEFAULT_AUDIENCES

PROXY = Path(__file__).resolve().parents[2] / "proxy"
# the simulators are stand-ins for the backends, not the product
EXCLUDED = ("simulators",)
# names with no other meaning in the code ("patient" is also a scope context and a search parameter)
ONLY_AUDIENCE_NAMES = frozenset(DEFAULT_AUDIENCES.names) - {"patient"}


def _strings(node: ast.expr) -> list[str]:
    """The string literals an operand is, or holds (a tuple, list or set of them)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [s for e in node.elts for s in _strings(e)]
    return []


def violations(source: str, where: str) -> Iterator[str]:
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        literals = [s for o in operands for s in _strings(o)]
        about_audience = any("audience" in ast.unparse(o).lower() for o in operands if not _strings(o))
        if (about_audience and literals) or set(literals) & ONLY_AUDIENCE_NAMES:
            yield f"{where}:{node.lineno}: {ast.unparse(node)}"


def scan(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.relative_to(root).parts[0] in EXCLUDED:
            continue
        found += violations(path.read_text(encoding="utf-8"), str(path.relative_to(root.parent)))
    return found


def test_no_product_module_compares_an_audience_to_a_string() -> None:
    assert scan(PROXY) == []


def test_the_scan_finds_what_it_looks_for() -> None:
    """(The probe is sound: each way the strings used to be compared is found.)"""
    caught = [
        'principal.audience == "patient"',
        'principal.audience != "patient"',
        'principal.audience.name == "patient"',
        'audience in ("ambulance", "clinician")',
        'role == "homecare"',
        '"clinician" != who',
        'x if principal.audience not in {"patient"} else y',
    ]
    for code in caught:
        assert list(violations(code, "probe")), code
    allowed = [
        "principal.audience.is_patient",
        'scope.context == "patient"',
        'key in ("patient", "subject")',
        "principal.audience.name in register.audiences",
    ]
    for code in allowed:
        assert not list(violations(code, "probe")), code
