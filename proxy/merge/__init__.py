"""Merge: the sources' resources into one deduplicated, deterministically ordered list.

``facts`` (``merge``: one fact per origin, the Patient merge, provenance tags and the order),
``lookalike`` (resources that look alike across sources without sharing an origin).
"""
