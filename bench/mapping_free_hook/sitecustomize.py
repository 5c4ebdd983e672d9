"""An upper bound for ``bench/compare.py``: the facade with its mapping stage made almost free.

    python bench/compare.py --variant "" \
      --variant "PYTHONPATH=$PWD/bench/mapping_free_hook,FHIR_FACADE_BENCH_MAPPING_FREE=1"

Python imports ``sitecustomize`` at start-up from the path. With ``FHIR_FACADE_BENCH_MAPPING_FREE``
set, in the facade process (``fhir-facade … serve``) and nowhere else, this wraps
``proxy.pipeline.fetch.map_answer`` in a memo keyed by everything its result depends on — the answer's
bytes, the mappings that read it, the request context, the source — so each distinct answer is
mapped once and the same answer again costs a dict look-up. The simulators send the same bytes for
the same patient, so once every bench patient has been asked, the mapping stage costs next to
nothing while all the rest — fan-out, merge, PDL, redaction, the Bundle, the access log — runs as
usual. The latency gap of this variant is one that no speed-up of the mapping stage, nor moving it
to another process, can go below. Bench-only: it keeps every distinct answer (bounded by
``_LIMIT``). Not combinable with ``bench/phases.py`` (Python imports one ``sitecustomize``).
"""

from __future__ import annotations

import os
import sys
from typing import Any

_LIMIT = 100_000


def _install() -> None:
    import proxy.pipeline.fetch as pipeline

    real = pipeline.map_answer
    memo: dict[tuple[Any, ...], Any] = {}

    def remembered(raw: Any, mappings: Any, ctx: Any, *, source_uri: str, priority: int) -> Any:
        key = (raw, id(mappings), tuple(ctx.items()), source_uri, priority)
        found = memo.get(key)
        if found is None:
            found = real(raw, mappings, ctx, source_uri=source_uri, priority=priority)
            if len(memo) < _LIMIT:
                memo[key] = found  # (a MappedAnswer is shared unchanged, as the facade's cache does)
        return found

    pipeline.map_answer = remembered  # type: ignore[assignment]


if (
    os.environ.get("FHIR_FACADE_BENCH_MAPPING_FREE")
    and "serve" in sys.argv[1:]
    and os.path.basename(sys.argv[0]).startswith("fhir-facade")
):
    _install()
