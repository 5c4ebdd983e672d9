"""Merge: the sources' resources into one deduplicated, deterministically ordered list.

``facts`` (``merge``: one fact per origin, the Patient merge, provenance tags and the order),
``lookalike`` (look-alike records from different producers: signposted, never merged).
"""
