"""Reading the per-source status block of an answer, as a client would (README "Source status")."""

from __future__ import annotations

import copy
import re
from typing import Any

from proxy.fhir.bundle import LATENCY_URL, SOURCE_STATUS_SYSTEM, SOURCE_SYSTEM


def source_issues(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{source name: its outcome issue}, for every source the answer names (exactly one issue each)."""
    out: dict[str, dict[str, Any]] = {}
    for e in bundle.get("entry", []):
        # (a $summary document has no search modes: its source outcomes are plain entries)
        mode = e["search"]["mode"] if bundle["type"] != "document" else e["resource"]["resourceType"]
        if mode not in ("outcome", "OperationOutcome"):
            continue
        for issue in e["resource"]["issue"]:
            codings = {c["system"]: c["code"] for c in issue["details"].get("coding", [])}
            if SOURCE_SYSTEM not in codings:
                continue
            name = codings[SOURCE_SYSTEM]
            assert name not in out, f"source {name} named twice"
            assert SOURCE_STATUS_SYSTEM in codings, issue
            assert any(x["url"] == LATENCY_URL for x in issue.get("extension", [])), issue
            out[name] = issue
    return out


def status_of(issue: dict[str, Any]) -> str:
    (code,) = [c["code"] for c in issue["details"]["coding"] if c["system"] == SOURCE_STATUS_SYSTEM]
    return str(code)


def statuses(bundle: dict[str, Any]) -> dict[str, str]:
    """{source name: answered | cached | stale | failed | not-asked}"""
    return {name: status_of(issue) for name, issue in source_issues(bundle).items()}


def degraded(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """{source: its issue} for the sources whose data is or may be missing (stale, failed)."""
    return {n: i for n, i in source_issues(bundle).items() if status_of(i) in ("stale", "failed")}


def status_block(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    """Every source's outcome issue, latency values and cache ages normalised: what must not
    depend on records the asker cannot see."""
    block = []
    for name, issue in sorted(source_issues(bundle).items()):
        issue = copy.deepcopy(issue)
        for x in issue.get("extension", []):
            if x["url"] == LATENCY_URL:
                x["valueDecimal"] = 0
        issue["details"]["text"] = re.sub(r"\b\d+ s\b", "N s", issue["details"]["text"])
        block.append({"source": name, "issue": issue})
    return block
