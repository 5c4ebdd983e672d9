"""Redaction: what each audience may see of the merged resources.

``policy`` (``compile_policy``: the configured policy; ``redact``: withhold by security label and
audience, scrub identity elements, drop references to what was withheld).
"""
