"""What the mapping engine reads beside each resource: the references redaction checks."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.mapping.engine import references
from tests.conftest import RESOURCE_IDS


def test_references_are_found_at_any_depth_once_each_in_order() -> None:
    resource = {
        "resourceType": "Encounter",
        "id": "e",
        "subject": {"reference": "Patient/p"},
        "reasonReference": [{"reference": "Condition/c", "display": "x"}, {"reference": "Patient/p"}],
        "extension": [{"url": "u", "extension": [{"url": "v", "valueReference": {"reference": "Flag/f"}}]}],
        "contained": [{"resourceType": "Observation", "id": "o", "hasMember": [{"reference": "#o2"}]}],
        "note": [[{"reference": "Observation/nested"}]],  # not FHIR, but a list in a list is walked too
    }
    assert references(resource) == ("Patient/p", "Condition/c", "Flag/f", "#o2", "Observation/nested")


def _walk(node: Any, found: dict[str, None]) -> None:
    """The oracle: every string under a ``reference`` key, visiting members in document order."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "reference" and isinstance(value, str):
                found[value] = None
            _walk(value, found)
    elif isinstance(node, list | tuple):
        for value in node:
            _walk(value, found)


# keys and texts that try to look like a reference key from inside a string
_TRICKY = st.sampled_from(
    [
        "reference",
        'x"reference',
        '"reference',
        "reference\\",
        '{"reference":"',
        ',"reference":"Patient/evil"',
        '\\"reference\\":\\"',
        "\\",
        '"',
        "Patient/p",
        "Patient/ö\u2028",
        "",
    ]
)
_TEXT = st.one_of(_TRICKY, st.text(max_size=8), st.lists(_TRICKY, max_size=3).map("".join))
_KEYS = st.one_of(st.sampled_from(["reference", "reference", "subject", "display"]), _TEXT)
_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False), _TEXT),
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(_KEYS, inner, max_size=4)),
    max_leaves=30,
)


@settings(max_examples=500)
@given(st.dictionaries(_KEYS, _JSON, max_size=5))
def test_references_read_from_json_are_those_a_walk_finds(resource: dict[str, Any]) -> None:
    """The scan of the serialised form finds exactly the reference strings, in document order,
    whatever the keys and strings around them hold (quotes, backslashes, look-alike keys)."""
    found: dict[str, None] = {}
    _walk(resource, found)
    assert references(resource) == tuple(found)


def test_a_resource_that_is_not_json_is_refused() -> None:
    with pytest.raises(TypeError):
        references({"resourceType": "Basic", "id": "b", "valueInteger": 2**64})
    with pytest.raises(TypeError):
        references({"resourceType": "Basic", "id": "b", "extension": [{"valueBase64Binary": b"raw"}]})


def test_only_text_references_count() -> None:
    assert references({"resourceType": "Basic", "id": "b", "reference": 5, "code": {"text": "t"}}) == ()


def test_subclasses_of_dict_and_list_are_walked_too() -> None:
    """The walk skips plain scalars by their exact type; anything else is looked into, so a dict
    or list subclass (an OrderedDict, say) cannot hide a reference from redaction."""
    from collections import OrderedDict

    class Items(list[object]):
        pass

    resource = {
        "resourceType": "Encounter",
        "id": "e",
        "subject": OrderedDict(reference="Patient/p"),
        "reasonReference": Items([OrderedDict(reference="Condition/c"), 3, None, True, 1.5]),
    }
    assert references(resource) == ("Patient/p", "Condition/c")


def test_a_search_fetches_the_types_its_references_point_at_and_the_closure_is_per_set() -> None:
    """Encounters reference Conditions, DocumentReferences reference Flags (bundled mappings):
    the closure is per set of types asked, the same each time it is asked (it is kept)."""
    from proxy.app import compile_mappings
    from proxy.settings import load_settings

    mappings = compile_mappings(load_settings(), RESOURCE_IDS)
    assert mappings.with_referenced(["Encounter"]) == {"Encounter", "Condition"}
    assert mappings.with_referenced({"DocumentReference"}) == {"DocumentReference", "Flag"}
    assert mappings.with_referenced(("Encounter",)) == {"Encounter", "Condition"}
    assert mappings.with_referenced({"Observation"}) == {"Observation"}
    both = mappings.with_referenced({"Encounter", "DocumentReference"})
    assert both == {"Encounter", "Condition", "DocumentReference", "Flag"}
