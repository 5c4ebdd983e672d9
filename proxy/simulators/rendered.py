"""A simulator's long answers, kept once rendered (``simulators.render_cache_bytes``; off by default).

A simulator renders every answer anew: for the long-history patient one list is megabytes of JSON or
XML, tens of milliseconds in the simulator's one event loop, during which its other requests wait.
A real backend runs elsewhere; on one machine, a benchmark of the facade beside long histories
(``bench/headofline.py --sim-render-cache``) would otherwise measure the simulators' own head-of-line
blocking as well as the facade's. With a budget, an answer of ``MIN_BYTES`` or more to a read is kept
(least recently used first out, the budget in bytes) and given again to the same request — the same
method, path, query, headers (but tracing's) and body; the fault injection
(``proxy.simulators.faults``) still applies on top.
Anything that could change what a read answers — a request that is not a read, or one to the control
endpoints — empties it first.
"""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from cachetools import LRUCache

MIN_BYTES = 64 * 1024
# request headers that differ from call to call (tracing, the connection's): not part of the key
_PER_CALL = frozenset(
    {"x-request-id", "traceparent", "tracestate", "idempotency-key", "content-length", "connection", "host"}
)


def render_cache(budget_bytes: int, *, reads_by_post: bool) -> Middleware:
    """The middleware; ``reads_by_post``: the dialect reads with POST (RIVTA's SOAP calls: NPÖ,
    which takes no writes)."""
    kept: LRUCache[tuple[str, str, tuple[tuple[str, str], ...], bytes], web.Response] = LRUCache(
        maxsize=budget_bytes,
        getsizeof=lambda r: len(r.body),  # type: ignore[arg-type]
    )
    reads = ("GET", "POST") if reads_by_post else ("GET",)

    @web.middleware
    async def cached(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method not in reads or request.path.startswith("/_sim"):
            # a write, or the control endpoints: what is kept may be wrong now — and once it is done
            # (a read answered while the write waited for its body would be kept from before it)
            kept.clear()
            try:
                return await handler(request)
            finally:
                kept.clear()
        body = await request.read()  # (the bytes read before, too: can_read_body is False then)
        # every header but the ones that differ per call: a dialect could name the patient in one
        # (these name it in the path, the query or the SOAP body), and an answer is never given to
        # another request than its own
        headers = tuple(
            sorted((k.lower(), v) for k, v in request.headers.items() if k.lower() not in _PER_CALL)
        )
        key = (request.method, request.path_qs, headers, body)
        hit = kept.get(key)
        if hit is not None:
            # (its content type only: the first answer's Date, Server or Connection are not this one's)
            return web.Response(
                body=hit.body, status=hit.status, content_type=hit.content_type, charset=hit.charset
            )
        response = await handler(request)
        if (
            isinstance(response, web.Response)
            and response.status == 200
            and isinstance(response.body, bytes)
            and MIN_BYTES <= len(response.body) <= budget_bytes
        ):
            kept[key] = response
        return response

    return cached
