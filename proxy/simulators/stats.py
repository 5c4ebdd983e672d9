"""What a simulator has served, for the benchmark: requests and body bytes, in all and per path.

    GET    /_sim/stats     {"requests": n, "bytes": b, "paths": {path: {"requests", "bytes"}}}
    DELETE /_sim/stats     back to zero

Counted: every request but the control endpoints (``/_sim/...``), with the body bytes of the answer
as sent (after any injected fault). Paths are counted as requested: a Cosmic path names the patient,
so a simulator serving many patients lists many paths.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proxy.simulators.faults import CONTROL_PREFIX, Handler

STATS_KEY = web.AppKey("stats", dict)


def _zero() -> dict[str, Any]:
    return {"requests": 0, "bytes": 0, "paths": {}}


def install(app: web.Application) -> None:
    """Count the app's requests; call before ``faults.install`` (outermost: it sees the bytes sent)."""
    app[STATS_KEY] = _zero()

    @web.middleware
    async def count(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if request.path.startswith(CONTROL_PREFIX):
            return response
        if isinstance(response, web.Response) and response.body is not None:
            sent = len(response.body)  # type: ignore[arg-type]
        else:
            sent = response.content_length or 0
        stats = app[STATS_KEY]
        path = stats["paths"].setdefault(request.path, {"requests": 0, "bytes": 0})
        for where in (stats, path):
            where["requests"] += 1
            where["bytes"] += sent
        return response

    app.middlewares.append(count)

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(app[STATS_KEY])

    async def reset_stats(request: web.Request) -> web.Response:
        app[STATS_KEY].update(_zero())  # (in place: a running app's state is not replaced)
        return web.json_response(app[STATS_KEY])

    app.router.add_get(f"{CONTROL_PREFIX}/stats", get_stats)
    app.router.add_delete(f"{CONTROL_PREFIX}/stats", reset_stats)
