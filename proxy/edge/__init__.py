"""The HTTP edge's windows: one aiohttp middleware per job, outermost first.

    request_id    X-Request-ID on every answer (errors too), the request's Trace for the backends
    cors          the configured origins' preflights (no token needed) and response headers
    compression   gzip when the client accepts it, above a small size
    health        /healthz and /readyz, at the server root: answered here, outside the FHIR
                  middlewares below (no negotiation, no token, no audit), patient-free
    observe       /metrics, and the RequestFinished event (access log, metrics) of every request
    admission     at most so many requests in flight per worker, a short queue; beyond: 503
                  throttled with Retry-After, before any token or patient is read
    (proxy.edge.routes) fhir_errors, audited: content negotiation, authentication, OperationOutcomes,
                  the access log

``proxy.app.create_app`` lists them in this order. Errors aiohttp answers below every middleware
(a request it cannot parse) carry a request id too: ``proxy.edge.server``.
"""
