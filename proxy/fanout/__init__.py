"""Fan-out: ask the backends, concurrently, each within its own budget (raw, audience-free answers).

``client`` (``BackendClient``, ``fan_out``: scheduling, budgets, outcomes), ``transport`` (the
``Transport`` seam: aiohttp in production, in memory in unit tests), ``breaker`` (per-backend
circuit breaker), ``engagement`` (which backends hold a patient).
"""
