"""Paging from snapshots (proxy/paging.py): later pages read from the first page's answer."""
