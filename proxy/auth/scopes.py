"""SMART scopes: what a token's ``scope`` claim grants.

Scopes (``scope``, space-separated) become ``Scope`` grants (``proxy.types``): SMART v2
``patient|user/<Type|*>.<cruds subset>`` grants each letter's permission (``r`` read by id, ``s``
search, ``c`` create, ``u`` update, ``d`` delete); SMART v1 ``.read`` grants ``r`` and ``s``,
``.write`` ``c``, ``u`` and ``d``, ``.*`` all five. Anything else (``openid``, ``launch/patient``,
``system/…``, v2 scopes with a ``?param=value`` restriction — which the facade cannot enforce — …)
grants nothing. A token without any scope is still a valid identity; it just may do nothing.
"""

from __future__ import annotations

import re

from proxy.types import Permission, Scope

_SCOPE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]{0,63})\.([a-z*]+)$")
_V2_PERMISSIONS = re.compile(r"^c?r?u?d?s?$")

_V1_PERMISSIONS: dict[str, tuple[Permission, ...]] = {
    "read": ("r", "s"),
    "write": ("c", "u", "d"),
    "*": ("c", "r", "u", "d", "s"),
}


def parse_scopes(scope: str) -> frozenset[Scope]:
    """What the SMART scopes in a space-separated ``scope`` string grant, one ``Scope`` per
    (context, type or "*", permission). v2 ``.cruds`` letters each grant their permission; v1
    ``.read`` grants r and s, ``.write`` c, u and d, ``.*`` all five. Anything else grants nothing."""
    granted: set[Scope] = set()
    for item in scope.split():
        m = _SCOPE.match(item)
        if not m:
            continue  # openid, fhirUser, launch/…, v2 scopes with a ?query restriction, garbage
        context, resource_type, perms = m.groups()
        if context == "system":
            continue  # backend-service scopes: no audience here is a system client
        letters: tuple[Permission, ...]
        if perms in _V1_PERMISSIONS:
            letters = _V1_PERMISSIONS[perms]
        elif _V2_PERMISSIONS.match(perms):
            letters = tuple(perms)  # type: ignore[arg-type]  # (the pattern admits only c r u d s)
        else:
            continue
        granted.update(Scope(context, resource_type, p) for p in letters)
    return frozenset(granted)
