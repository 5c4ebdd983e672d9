"""The audience policy: what each asker may see, applied to merged, audience-free data.

Redaction *removes*, it does not mark. For an audience, a resource is visible only when every
security label on it is one the policy knows and grants that audience (a label the policy does not
know hides the resource from everyone: fail closed). Then, in what stays visible:

* a Reference survives only if its target is in the answer and visible (or is the request's own
  patient); any other — to a hidden resource, or to one this answer did not fetch and so cannot
  vouch for — is removed, ``display`` and all, and an element left empty by that is removed too;
* contained resources are judged like top-level ones (a hidden one is dropped with its ``#id``
  references);
* narrative ``text`` is dropped from every resource (it was written before redaction and could
  describe what was removed);
* the Patient of a protected identity (labelled with the policy's protected-identity label) loses
  its name, address, telecom, contact and photo for every audience not listed as needing them.

Totals, paging and read-by-id are computed after this stage, so they cannot hint at a removal.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from proxy.audience import DEFAULT_AUDIENCES
from proxy.merge.facts import DISAGREEMENT_EXTENSION
from proxy.settings import ConfigError
from proxy.slack import Steps, at_once, in_turns, slice_ends
from proxy.types import FhirDict, MappedResource

Label = tuple[str, str]  # (system, code)

# Labels with no restricting meaning: every audience may see what carries them.
ALWAYS_VISIBLE: frozenset[Label] = frozenset(
    ("http://terminology.hl7.org/CodeSystem/v3-Confidentiality", c) for c in ("U", "L", "M", "N")
)
DEFAULT_IDENTITY_ELEMENTS = ("name", "address", "telecom", "contact", "photo")


@dataclass(frozen=True, slots=True)
class Policy:
    grants: Mapping[str, frozenset[Label]]  # audience → labels it may see
    known: frozenset[Label]  # every label the policy names
    identity_label: Label | None
    identity_elements: tuple[str, ...]
    identity_disclosed_to: frozenset[str]

    def visible(self, resource: FhirDict, audience: str) -> bool:
        granted = self.grants.get(audience, frozenset())
        for label in _labels(resource):
            if label in ALWAYS_VISIBLE:
                continue
            if label not in self.known or label not in granted:
                return False
        return True


def _labels(resource: FhirDict) -> Iterable[Label]:
    for s in resource.get("meta", {}).get("security", ()):
        yield (s.get("system", ""), s.get("code", ""))


def _label(text: Any, names: Mapping[str, Label], where: str) -> Label:
    if isinstance(text, str) and text in names:
        return names[text]
    if isinstance(text, str) and "|" in text:
        system, _, code = text.rpartition("|")
        if system and code:
            return (system, code)
    raise ConfigError(f"{where}: expects a label name from policy.labels or 'system|code'")


def compile_policy(
    section: Mapping[str, Any], audience_names: Collection[str] = DEFAULT_AUDIENCES.names
) -> Policy:
    """Compile the ``policy`` section of the config (see config/facade.yaml) for the audiences
    named ``audience_names`` (the configured ones: ``Settings.audiences.names``). Raises ConfigError."""
    labels_doc = section.get("labels", {}) or {}
    if not isinstance(labels_doc, dict):
        raise ConfigError("policy.labels: expects name: 'system|code'")
    names: dict[str, Label] = {}
    for name, text in labels_doc.items():
        names[str(name)] = _label(text, {}, f"policy.labels.{name}")

    audiences = section.get("audiences", {}) or {}  # an audience not listed sees no labelled resource
    if not isinstance(audiences, dict) or set(audiences) - set(audience_names):
        raise ConfigError(f"policy.audiences: expects some of {', '.join(audience_names)}")
    grants: dict[str, frozenset[Label]] = {}
    for audience, spec in audiences.items():
        where = f"policy.audiences.{audience}"
        if not isinstance(spec, dict) or set(spec) - {"sees"}:
            raise ConfigError(f"{where}: expects {{sees: [label, ...]}}")
        sees = spec.get("sees", []) or []
        if not isinstance(sees, list):
            raise ConfigError(f"{where}.sees: expects a list of labels")
        grants[audience] = frozenset(_label(s, names, f"{where}.sees[{i}]") for i, s in enumerate(sees))

    identity = section.get("protected_identity", {}) or {}
    if not isinstance(identity, dict) or set(identity) - {"label", "elements", "disclosed_to"}:
        raise ConfigError("policy.protected_identity: expects {label, elements, disclosed_to}")
    identity_label = _label(identity["label"], names, "policy.protected_identity.label") if identity else None
    disclosed = identity.get("disclosed_to", []) or []
    if not isinstance(disclosed, list) or set(disclosed) - set(audience_names):
        raise ConfigError(
            f"policy.protected_identity.disclosed_to: expects audiences of {tuple(audience_names)}"
        )
    elements = tuple(identity.get("elements", DEFAULT_IDENTITY_ELEMENTS))
    known = frozenset(names.values()) | frozenset(lbl for g in grants.values() for lbl in g)
    if identity_label is not None:
        known |= {identity_label}
    return Policy(
        grants=grants,
        known=known,
        identity_label=identity_label,
        identity_elements=elements,
        identity_disclosed_to=frozenset(disclosed),
    )


def redact(
    resources: Iterable[MappedResource], policy: Policy, audience: str, *, subject: str | None = None
) -> list[FhirDict]:
    """What ``audience`` may see of ``resources``, with every trace of the rest removed.

    References survive only when they point at a resource that is itself in the answer and visible
    (or at ``subject``, the request's own ``Patient/<id>``): a reference to something hidden, or to
    something this answer did not fetch and so cannot vouch for, is removed (fail closed). The input
    is not modified (it may be shared, e.g. cached): changed resources are copies.
    """
    return at_once(_redact(resources, policy, audience, subject))


async def redact_in_turns(
    resources: Iterable[MappedResource], policy: Policy, audience: str, *, subject: str | None = None
) -> list[FhirDict]:
    """``redact``, giving the event loop a turn between slices of a long history (``proxy.slack``)."""
    return await in_turns(_redact(resources, policy, audience, subject))


def _redact(
    resources: Iterable[MappedResource], policy: Policy, audience: str, subject: str | None
) -> Steps[list[FhirDict]]:
    shown = []
    for n, r in enumerate(resources):
        if slice_ends(n):
            yield
        if policy.visible(r.resource, audience):
            shown.append(r)
    allowed = {f"{r.resource['resourceType']}/{r.resource['id']}" for r in shown}
    if subject is not None:
        allowed.add(subject)
    out = []
    for n, r in enumerate(shown):
        if slice_ends(n):
            yield
        out.append(_scrub(r, policy, audience, allowed))
    return out


def _scrub(mapped: MappedResource, policy: Policy, audience: str, allowed: set[str]) -> FhirDict:
    r = mapped.resource
    if "text" in r:
        r = {k: v for k, v in r.items() if k != "text"}
    local = allowed
    if "contained" in r:
        r = dict(r)
        kept = [
            {k: v for k, v in c.items() if k != "text"} for c in r["contained"] if policy.visible(c, audience)
        ]
        local = allowed | {f"#{c.get('id', '')}" for c in kept}
        if kept:
            r["contained"] = kept
        else:
            del r["contained"]
    # The references were read when the resource was mapped; most answers hold none to remove, and
    # the resource, which may be shared with the cache, is then used as it is.
    if not local.issuperset(mapped.refs):  # the rare case: copy, leaving the offending objects out
        r = _keep_references(r, local)
    if (
        r["resourceType"] == "Patient"
        and policy.identity_label is not None
        and audience not in policy.identity_disclosed_to
        and policy.identity_label in set(_labels(r))
    ):
        r = _withhold_identity(r, policy.identity_elements)
    return r


DATA_ABSENT_REASON = "http://hl7.org/fhir/StructureDefinition/data-absent-reason"
# What stands for a withheld name: one HumanName holding nothing but the reason (R4: name is a list of
# HumanName, and an element with an extension is not empty).


def _withhold_identity(r: FhirDict, elements: tuple[str, ...]) -> FhirDict:
    """A protected Patient without its identity elements (every source's, as merged) and without a
    merge disagreement about one of them; the name, when withheld, says ``masked`` — whether or not
    a source had one, so its absence tells nothing."""
    out = {k: v for k, v in r.items() if k not in elements and k.removeprefix("_") not in elements}
    if "extension" in out:
        ext = [e for e in out["extension"] if not _about(e, elements)]
        if ext:
            out["extension"] = ext
        else:
            del out["extension"]
    if "name" in elements:
        out["name"] = [{"extension": [{"url": DATA_ABSENT_REASON, "valueCode": "masked"}]}]
    return out


def _about(extension: Any, elements: tuple[str, ...]) -> bool:
    """Whether a merge disagreement (proxy.merge) names one of ``elements`` (or cannot be read)."""
    if not isinstance(extension, dict) or extension.get("url") != DISAGREEMENT_EXTENSION:
        return False
    for sub in extension.get("extension", []):
        if isinstance(sub, dict) and sub.get("url") == "element":
            key = str(sub.get("valueString", ""))
            return any(key == e or key.removeprefix("_").startswith(e) for e in elements)
    return True  # no element named: withhold (fail closed)


_GONE = object()


def _keep_references(node: Any, allowed: set[str]) -> Any:
    """Remove every object whose ``reference`` is not allowed, and whatever that leaves empty.

    (FHIR has no empty elements, so an empty object or list here can only come from a removal.)
    """
    if isinstance(node, dict):
        ref = node.get("reference")
        if isinstance(ref, str) and ref not in allowed:
            return _GONE
        out = {k: nv for k, v in node.items() if (nv := _keep_references(v, allowed)) is not _GONE}
        return out if out else _GONE
    if isinstance(node, list):
        items = [x for x in (_keep_references(v, allowed) for v in node) if x is not _GONE]
        return items if items else _GONE
    return node
