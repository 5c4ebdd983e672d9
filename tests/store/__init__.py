"""The facade's store (proxy/store): the outbox of accepted writes, on SQLite and PostgreSQL."""
