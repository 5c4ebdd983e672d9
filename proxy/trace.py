"""One request's identity on the wire: its X-Request-ID and its W3C Trace Context (``traceparent``).

The HTTP edge (``proxy.edge.request_id``) makes a ``Trace`` for each request — the client's
X-Request-ID when it is sane, else a new one; the client's ``traceparent`` trace-id when it is
valid, else a new one (the minted request id itself, so the two can be matched) — and sets it as
the current trace for the request's task. Fan-out (``proxy.fanout``) sends ``outgoing()`` with
each backend call: the same X-Request-ID, and a ``traceparent`` (version 00) continuing the trace
with a fresh parent-id per call, flags 01 (sampled).

A context variable rather than an argument through the walk (``proxy.pipeline``: ``run →
fetch_and_map → ask``) and ``fan_out → BackendClient.start → _ask → _one``: a signature each for a
value nothing between the edge and the wire reads. asyncio copies the context into the tasks
fan-out starts, so each backend call sees its request's trace; outside a request (the CLI's
``mappings check``, the bench's direct calls) there is none and nothing is added.

Nothing here is sensitive: ids are random or the client's own token of a conservative charset.
"""

from __future__ import annotations

import contextvars
import os
import random
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

# a client's X-Request-ID is echoed, logged and stored in the access log: printable, short, plain
_REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
# ... and never holds what could be a personnummer (10 or 12 digits): such an id is replaced, and a
# minted one is drawn again (a random 32-hex id has a run of ten digits about once in twenty)
_DIGIT_RUN = re.compile(r"[0-9]{10}")
# W3C Trace Context §3.2: version-traceid-parentid-flags, lower-case hex; a later version may append
# fields after a "-" (parsed as version 00), version ff is invalid, all-zero ids are invalid
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
_ZERO_TRACE, _ZERO_PARENT = "0" * 32, "0" * 16

# A parent-id names one backend call of a trace; W3C asks for it to be random, not secret. Drawn
# from a generator seeded once from the OS, not from the OS each time: a getrandom call per backend
# call (23 an ``$everything``) cost more than the rest of making the headers.
# (Re-seeded in a forked worker, as the random module's own generator is: workers forked from one
# parent must not draw the same ids.)
_PARENT_IDS = random.Random()
_NONE: Mapping[str, str] = MappingProxyType({})
os.register_at_fork(after_in_child=_PARENT_IDS.seed)


@dataclass(frozen=True, slots=True)
class Trace:
    request_id: str
    trace_id: str  # 32 lower-case hex, never all zeros

    def outgoing(self, headers: Mapping[str, str] = _NONE) -> dict[str, str]:
        """``headers`` and the trace's for one backend call: a fresh parent-id each time."""
        bits = _PARENT_IDS.getrandbits(64)
        while not bits:  # (1 in 2**64)
            bits = _PARENT_IDS.getrandbits(64)
        traceparent = f"00-{self.trace_id}-{bits:016x}-01"
        return {**headers, "X-Request-ID": self.request_id, "traceparent": traceparent}


def sane_request_id(given: str | None) -> str | None:
    """The client's X-Request-ID if it is a plain token (1-128 of A-Z a-z 0-9 . _ : -, starting with
    a letter or digit, with no run of ten digits), else None."""
    if given is None or not _REQUEST_ID.match(given) or _DIGIT_RUN.search(given):
        return None
    return given


def mint_request_id() -> str:
    """A new request id: 32 lower-case hex (a valid trace-id too), never with a run of ten digits."""
    for _ in range(64):  # (each draw fails about once in twenty)
        minted = uuid.uuid4().hex
        if not _DIGIT_RUN.search(minted):
            return minted
    raise RuntimeError("no request id without a digit run in 64 draws")  # (never: 1 in 20**64)


def trace_id_of(traceparent: str | None) -> str | None:
    """The trace-id of a valid ``traceparent`` header, else None (a new trace is started)."""
    if traceparent is None:
        return None
    m = _TRACEPARENT.match(traceparent.strip())
    if m is None:
        return None
    version, trace_id, parent_id, _, rest = m.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_PARENT:
        return None
    return trace_id


def new_trace(request_id_header: str | None, traceparent_header: str | None) -> Trace:
    """The request's trace from its headers (each replaced when it is absent or not usable)."""
    minted = mint_request_id()
    request_id = sane_request_id(request_id_header) or minted
    return Trace(request_id, trace_id_of(traceparent_header) or minted)


CURRENT: contextvars.ContextVar[Trace | None] = contextvars.ContextVar("fhir_facade_trace", default=None)


def outgoing_headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    """A backend call's ``headers`` with the current request's (as they are outside a request)."""
    trace = CURRENT.get()
    return trace.outgoing(headers) if trace is not None else headers
