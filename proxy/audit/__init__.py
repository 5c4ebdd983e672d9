"""The access log: one AuditEvent (IHE BALP shape) per request that touches patient data, written
durably before the answer leaves.

``events`` (``begun_event``, ``completed``, ``record``, ``patient_view`` and the codes they use);
the events are stored, group-committed, by ``proxy.store``.
"""
