"""Instrumentation for ``bench/phases.py``: where a request's time goes, in the facade and the baseline.

Python imports ``sitecustomize`` at start-up from the path; ``bench/phases.py`` puts this directory
on ``PYTHONPATH`` and names an output directory in ``FHIR_FACADE_BENCH_PHASES``. Without that
variable, or in any process that is not the facade (``fhir-facade … serve``) or the baseline
(``bench/baseline.py``), it does nothing. Bench-only: it wraps aiohttp and pipeline functions.

Per ``$everything`` request (facade) or ``/everything/`` request (baseline) it records, in
``time.perf_counter`` seconds (one monotonic clock for every process on the machine):

    a   the handler chain starts (after aiohttp has read and parsed the request)
    s   the first backend request is begun
    r   the last backend body has been read (``ClientResponse.read``: the facade reads a body with
        a Content-Length and no Content-Encoding that way, as the simulators send them; a request
        whose bodies all came otherwise is left out of the figures)
    d   the handler chain has returned (the response is ready to be written)

and in the facade, between ``r`` and ``d``: ``fo`` fan-out returned, ``fm`` every answer mapped
(``fetch_and_map`` returned), ``co`` ``collect`` returned, ``b0``/``b1`` the Bundle built.
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

    if _ROLE == "facade":
        import proxy.edge.routes as routes
        import proxy.pipeline as pipeline

        def stamp_return(module: Any, name: str, key: str) -> None:
            original = getattr(module, name)

            async def stamped(*args: Any, **kwargs: Any) -> Any:
                try:
                    return await original(*args, **kwargs)
                finally:
                    rec = _CURRENT.get()
                    if rec is not None:
                        rec[key] = time.perf_counter()

            setattr(module, name, stamped)

        stamp_return(pipeline, "fan_out", "fo")
        stamp_return(pipeline, "fetch_and_map", "fm")
        stamp_return(routes, "collect", "co")
        bundle = routes.FhirRoutes._bundle

        def stamped_bundle(self: Any, *args: Any, **kwargs: Any) -> Any:
            rec = _CURRENT.get()
            if rec is not None:
                rec["b0"] = time.perf_counter()
            try:
                return bundle(self, *args, **kwargs)
            finally:
                if rec is not None:
                    rec["b1"] = time.perf_counter()

        routes.FhirRoutes._bundle = stamped_bundle  # type: ignore[method-assign]
    atexit.register(_dump)


if _OUT and _ROLE is not None:
    _install()
