"""One request, one straight walk: Query → access → fan-out → mapping → PDL → merge → redact →
filter → Answer. Read ``walk.py`` top to bottom: its ``PATIENT_READ`` tuple IS the walk.

    exchange  ``Exchange``: the one request object the edge makes and every stage reads and writes
    facade    ``Facade`` (what a request is given, built at start-up) and ``Answer``
    walk      the ordered stages, and the runner (``run``; ``collect`` for callers without a request)
    stages    each stage a small adapter into access/, audit/, fanout/, mapping/, merge/, redact/
    fetch     cache → engagement index → fan-out → mapping in the slack → stale fallback → outcomes
    audit     the AuditEvent from the exchange: begun before the backends are asked, completed after

Around it: ``fhir/params`` parses the request into a Query (400/404 before any backend), ``auth/``
makes the token a Principal (401), both at the edge (``proxy.edge``), which also renders the
Answer (page, Bundle, bytes) and lets it leave only once the access is durably logged.
"""
