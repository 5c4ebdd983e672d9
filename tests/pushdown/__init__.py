"""Filters pushed down to the backends (issue 21)."""
