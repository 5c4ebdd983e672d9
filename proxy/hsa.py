"""HSA-ids: the Swedish directory's ids of people, care units and care providers.

``SE``, the organisation number (ten digits), a hyphen and up to 31 capital letters and digits, as
HSA writes them. The access rules compare them exactly — a token's unit with the records' and the
consents' — so every HSA-id the facade takes in (tokens, consents, configuration) must be written
this one way: a near miss (small letters, a space, a line break) would match nothing and make a
block or a consent silently apply to no one.
"""

from __future__ import annotations

import re

_HSA_ID = re.compile(r"SE[0-9]{10}-[0-9A-Z]{1,31}")


def is_hsa_id(value: object) -> bool:
    return isinstance(value, str) and _HSA_ID.fullmatch(value) is not None
