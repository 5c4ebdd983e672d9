"""What the mapping engine reads beside each resource: the references redaction checks."""

from __future__ import annotations

from proxy.mapping.engine import references


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

    mappings = compile_mappings(load_settings())
    assert mappings.with_referenced(["Encounter"]) == {"Encounter", "Condition"}
    assert mappings.with_referenced({"DocumentReference"}) == {"DocumentReference", "Flag"}
    assert mappings.with_referenced(("Encounter",)) == {"Encounter", "Condition"}
    assert mappings.with_referenced({"Observation"}) == {"Observation"}
    both = mappings.with_referenced({"Encounter", "DocumentReference"})
    assert both == {"Encounter", "Condition", "DocumentReference", "Flag"}
