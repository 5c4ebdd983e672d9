"""The facade's durable state: the access log (AuditEvents), the patients' consents and blocks, and
the outbox of accepted writes until each target has them.

``base`` (the ``Store`` interface, group-committed audit writes, ``AuditRecord``, ``ConsentRow``,
``StoreUnavailable``, ``open_store``; the outbox's ``OutboxTransaction``, ``OutboxPart``,
``PartRequest`` and ``backoff``), ``sqlite`` (``SqliteStore``, the embedded default),
``postgres`` (``PostgresStore``, for several workers or hosts).
"""
