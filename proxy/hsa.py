"""HSA-ids: the Swedish directory's ids of people, care units and care providers.

``SE``, the organisation number (ten digits), a hyphen and up to 31 capital letters and digits, as
HSA writes them. The access rules compare them exactly — a token's unit with the records' and the
consents' — so every HSA-id the facade takes in (tokens, consents, configuration) must be written
this one way: a near miss (small letters, a space, a line break) would match nothing and make a
block or a consent silently apply to no one.

**Their identifier system.** The facade writes every HSA-id it emits (mapped resources, the access
log, stored Consents) in HL7 Sweden's base profiles' system, ``HSA_SYSTEM``. RIVTA / NTjP clients
write the same ids under the RIVTA OID, ``RIVTA_HSA_SYSTEM``: the facade accepts that one on input
(a Consent's actors) and stores and answers it as ``HSA_SYSTEM``. No other system is an HSA-id's.
"""

from __future__ import annotations

import re

HSA_SYSTEM = "urn:oid:1.2.752.29.4.19"  # HL7 Sweden (SE base profiles): written everywhere
RIVTA_HSA_SYSTEM = "urn:oid:1.2.752.129.2.1.4.1"  # RIVTA / NTjP: accepted on input, never written
HSA_SYSTEMS_ACCEPTED = frozenset({HSA_SYSTEM, RIVTA_HSA_SYSTEM})

_HSA_ID = re.compile(r"SE[0-9]{10}-[0-9A-Z]{1,31}")


def is_hsa_id(value: object) -> bool:
    return isinstance(value, str) and _HSA_ID.fullmatch(value) is not None


def hsa_system(system: object) -> str | None:
    """The system an HSA-id is written in, from one a client sent: ``HSA_SYSTEM`` for either accepted
    system (compared exactly, as every HSA-id is), None for anything else."""
    return HSA_SYSTEM if isinstance(system, str) and system in HSA_SYSTEMS_ACCEPTED else None
