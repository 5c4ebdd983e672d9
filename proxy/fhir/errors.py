"""FHIR errors: an exception carrying an HTTP status and an OperationOutcome issue.

Messages say what is wrong with the request in terms the client sent; they never echo tokens or
identity numbers back, and never say anything about what the facade may know or hide.
"""

from __future__ import annotations

from proxy.types import FhirDict


class FhirError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        severity: str = "error",
        issues: tuple[FhirDict, ...] = (),
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code  # an IssueType code: invalid, not-found, not-supported, exception ...
        self.message = message
        self.severity = severity
        # every problem, as OperationOutcome issues (a write refused: each one listed); else the one
        self.issues = issues

    def outcome(self) -> FhirDict:
        if self.issues:
            return outcome(list(self.issues))
        return operation_outcome((self.severity, self.code, self.message))


def operation_outcome(*issues: tuple[str, str, str]) -> FhirDict:
    """An OperationOutcome from (severity, code, text) triples."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": s, "code": c, "diagnostics": t} for s, c, t in issues],
    }


def bad_request(message: str) -> FhirError:
    return FhirError(400, "invalid", message)


def not_found(message: str = "Resource not found") -> FhirError:
    return FhirError(404, "not-found", message)


def issue(code: str, text: str, *, expression: str | None = None, severity: str = "error") -> FhirDict:
    """One OperationOutcome issue; ``expression``: the FHIRPath of the element it is about."""
    out: FhirDict = {"severity": severity, "code": code, "diagnostics": text}
    if expression is not None:
        out["expression"] = [expression]
    return out


def outcome(issues: list[FhirDict]) -> FhirDict:
    """An OperationOutcome of issues made by ``issue``."""
    return {"resourceType": "OperationOutcome", "issue": issues}
