"""The facade's durable state: the access log (AuditEvents) and the patients' consents and blocks.

``base`` (the ``Store`` interface, group-committed audit writes, ``AuditRecord``, ``ConsentRow``,
``StoreUnavailable``, ``open_store``), ``sqlite`` (``SqliteStore``, the embedded default),
``postgres`` (``PostgresStore``, for several workers or hosts).
"""
