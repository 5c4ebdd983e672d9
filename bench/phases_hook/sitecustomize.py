"""Instrumentation for ``bench/phases.py``: where a request's time goes, in the facade and the baseline.

Python imports ``sitecustomize`` at start-up from the path; ``bench/phases.py`` puts this directory
on ``PYTHONPATH`` and names an output directory in ``FHIR_FACADE_BENCH_PHASES``. Without that
variable, or in any process that is not the facade (``fhir-facade … serve``) or the baseline
(``bench/baseline.py``), it does nothing. Bench-only.

Per ``$everything`` request (facade) or ``/everything/`` request (baseline) it records, in
``time.perf_counter`` seconds (one monotonic clock for every process on the machine):

    a   the handler chain starts (after aiohttp has read and parsed the request)
    s   the first backend request is begun
    r   the last backend body has been read (``ClientResponse.read``: the facade reads a body with
        a Content-Length and no Content-Encoding that way, as the simulators send them; a request
        whose bodies all came otherwise is left out of the figures)
    d   the handler chain has returned (the response is ready to be written)

These four wrap aiohttp (the server's ``Application._handle``, the client's ``_request`` and
``read``): the baseline has no hooks, and no facade event marks them. The facade's own phases come
from its hook bus, with no wrapping: ``phases.py`` names ``sitecustomize:subscribe`` in
``FHIR_FACADE_HOOK_SUBSCRIBERS``, so ``create_app`` calls ``subscribe(hooks)`` at start-up, which
records, between ``a`` and ``d``:

    end:<stage>  each stage of the walk finished (``StageFinished``: proxy/pipeline/walk.py)
    settled      the first backend's share settled (``SourceAnswered``/``SourceFailed``): fan-out
                 has returned and the answers the slack had not mapped yet are mapped
"""

from __future__ import annotations

import atexit
import contextvars
import json
import os
import sys
import time
from typing import Any

_OUT = os.environ.get("FHIR_FACADE_BENCH_PHASES")
_ROLE = (
    "facade"
    if "serve" in sys.argv[1:] and os.path.basename(sys.argv[0]).startswith("fhir-facade")
    else "baseline"
    if sys.argv and sys.argv[0].endswith("baseline.py")
    else None
)
_RECORDS: list[dict[str, Any]] = []
_LIMIT = 200_000
_CURRENT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("phases", default=None)


def _dump() -> None:
    if _OUT and _RECORDS:
        path = os.path.join(_OUT, f"{_ROLE}-{os.getpid()}.json")
        with open(path + ".tmp", "w") as f:
            json.dump(_RECORDS, f)
        os.replace(path + ".tmp", path)


def _install() -> None:
    import aiohttp.client
    import aiohttp.client_reqrep
    import aiohttp.web_app

    handle = aiohttp.web_app.Application._handle

    async def timed_handle(self: Any, request: Any) -> Any:
        if "everything" not in request.path:
            return await handle(self, request)
        rec: dict[str, Any] = {"a": time.perf_counter(), "s": None, "r": None}
        _CURRENT.set(rec)
        try:
            return await handle(self, request)
        finally:
            rec["d"] = time.perf_counter()
            if len(_RECORDS) < _LIMIT:
                _RECORDS.append(rec)
                if len(_RECORDS) % 500 == 0:  # (a process stopped by a signal may never reach atexit)
                    _dump()

    aiohttp.web_app.Application._handle = timed_handle  # type: ignore[method-assign]

    send = aiohttp.client.ClientSession._request

    async def timed_request(self: Any, *args: Any, **kwargs: Any) -> Any:
        rec = _CURRENT.get()
        if rec is not None and rec["s"] is None:
            rec["s"] = time.perf_counter()
        return await send(self, *args, **kwargs)

    aiohttp.client.ClientSession._request = timed_request  # type: ignore[method-assign]

    read = aiohttp.client_reqrep.ClientResponse.read

    async def timed_read(self: Any) -> bytes:
        body = await read(self)
        rec = _CURRENT.get()
        if rec is not None:
            rec["r"] = time.perf_counter()
        return body

    aiohttp.client_reqrep.ClientResponse.read = timed_read  # type: ignore[method-assign]

    atexit.register(_dump)


def subscribe(hooks: Any) -> None:
    """Called by the facade's ``create_app`` (``FHIR_FACADE_HOOK_SUBSCRIBERS``) with its hook bus."""
    if not (_OUT and _ROLE == "facade"):
        return
    from proxy.hooks import SourceAnswered, SourceFailed, StageFinished

    def stage_finished(event: StageFinished) -> None:
        rec = _CURRENT.get()
        if rec is not None:
            rec[f"end:{event.stage}"] = time.perf_counter()

    def settled(event: Any) -> None:
        rec = _CURRENT.get()
        if rec is not None and "settled" not in rec:
            rec["settled"] = time.perf_counter()

    hooks.subscribe(StageFinished, stage_finished)
    hooks.subscribe(SourceAnswered, settled)
    hooks.subscribe(SourceFailed, settled)


if _OUT and _ROLE is not None:
    _install()
