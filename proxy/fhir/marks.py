"""The facade's own marks on the resources it returns, read by more than the stage that sets them."""

from __future__ import annotations

# a resource that looks like another producer's record of the same fact (proxy/merge/lookalike.py):
# the tag's system (code: the other source) and the extension's url (valueReference: the look-alike)
POSSIBLE_DUPLICATE = "urn:fhir-facade:possible-duplicate"
