"""What the Viva and Cosmic stand-ins share to accept writes (issue 22): the written records, kept
apart from the generated ones (a patient's generated entry may be dropped from the lazy cache and
made again; what was written must stay), the idempotency keys seen, and the checks of a body.

A write is checked whole before anything is kept (``Refused`` carries the dialect's status, code and
message, naming the field, never its value). ``Idempotency-Key``: a key seen before answers exactly
as the first time and writes nothing again; the same key with another body is refused (422).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from proxy.demo_org import UNITS

HSA_ID = re.compile(r"SE[0-9]{10}-[A-Za-z0-9]{1,31}")
_UNIT_NAMES = dict(UNITS.values())


class Refused(Exception):
    """A write the simulated system refuses: ``status`` (400 malformed, 404/422 as the dialect says),
    its error ``code`` and a message naming the field."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass
class Written:
    """One simulator's written records (personnummer → kind → records, newest first) and the
    answers it gave per ``Idempotency-Key`` (with the SHA-256 of the body it answered)."""

    records: dict[str, dict[str, list[dict[str, Any]]]] = field(default_factory=dict)
    answers: dict[str, tuple[bytes, int, bytes]] = field(default_factory=dict)
    count: int = 0

    def of(self, pnr: str, kind: str) -> list[dict[str, Any]]:
        return self.records.get(pnr, {}).get(kind, [])

    def add(self, pnr: str, kind: str, record: dict[str, Any]) -> None:
        self.records.setdefault(pnr, {}).setdefault(kind, []).insert(0, record)

    def next_number(self) -> int:
        self.count += 1
        return self.count

    def find(self, pnr: str, kind: str, key: str, value: Any) -> dict[str, Any] | None:
        return next((r for r in self.of(pnr, kind) if r.get(key) == value), None)


Handle = Callable[[dict[str, Any]], tuple[int, dict[str, Any]]]
Error = Callable[[int, str, str], web.Response]


def endpoint(
    written: Written,
    handle: Callable[[web.Request, dict[str, Any]], tuple[int, dict[str, Any]]],
    error: Error,
    reused: str,
    malformed: str,
) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An aiohttp POST handler: the idempotency key, the JSON body, then ``handle`` (which checks
    the body whole, keeps the record and returns the answer, or raises ``Refused``)."""

    async def post(request: web.Request) -> web.Response:
        raw = await request.read()
        key = request.headers.get("Idempotency-Key")
        digest = hashlib.sha256(raw).digest()
        if key is not None and key in written.answers:
            seen, status, body = written.answers[key]
            if seen != digest:
                return error(422, reused, "Idempotency-Key already used for another request")
            return web.Response(body=body, status=status, content_type="application/json")
        try:
            doc = orjson.loads(raw)
            if not isinstance(doc, dict):
                raise Refused(400, malformed, "the body must be a JSON object")
            status, answer = handle(request, doc)
            response = web.Response(body=orjson.dumps(answer), status=status, content_type="application/json")
        except orjson.JSONDecodeError:
            response = error(400, malformed, "the body is not JSON")
        except Refused as refused:
            response = error(refused.status, refused.code, refused.message)
        if key is not None:
            assert isinstance(response.body, bytes)
            written.answers[key] = (digest, response.status, response.body)
        return response

    return post


# ---- checks of a body (the code names are the dialect's) ----------------------------------------


@dataclass(frozen=True)
class Codes:
    """A dialect's error codes for the checks below."""

    missing: str  # 400: a required field is missing or empty
    invalid: str  # 400: a field has the wrong format
    unknown_code: str  # 422: a code the system does not know


def text(
    doc: dict[str, Any], name: str, codes: Codes, *, required: bool = True, limit: int = 20_000
) -> str | None:
    value = _at(doc, name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise Refused(400, codes.missing, f"{name} is required")
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise Refused(400, codes.invalid, f"{name} must be text of at most {limit} characters")
    return value


def timestamp(doc: dict[str, Any], name: str, fmt: str, codes: Codes, *, required: bool = True) -> str | None:
    value = text(doc, name, codes, required=required, limit=64)
    if value is None:
        return None
    try:
        datetime.strptime(value, fmt)
    except ValueError:
        raise Refused(400, codes.invalid, f"{name} must be a local time in the form {fmt}") from None
    return value


def code(
    doc: dict[str, Any], name: str, known: Collection[str], codes: Codes, *, required: bool = True
) -> str | None:
    value = text(doc, name, codes, required=required, limit=64)
    if value is not None and value not in known:
        raise Refused(422, codes.unknown_code, f"{name}: unknown code")
    return value


def decimal(
    doc: dict[str, Any], name: str, codes: Codes, *, comma: bool, required: bool = True
) -> str | None:
    """A decimal written as text, with a decimal comma (``comma``) or point."""
    value = text(doc, name, codes, required=required, limit=32)
    if value is None:
        return None
    sep = "," if comma else r"\."
    if not re.fullmatch(rf"-?[0-9]+(?:{sep}[0-9]+)?", value):
        raise Refused(
            400, codes.invalid, f"{name} must be a decimal written with a {'comma' if comma else 'point'}"
        )
    return value


def hsa_id(doc: dict[str, Any], name: str, codes: Codes, *, required: bool = True) -> str | None:
    value = text(doc, name, codes, required=required, limit=64)
    if value is not None and not HSA_ID.fullmatch(value):
        raise Refused(400, codes.invalid, f"{name} must be an HSA-id")
    return value


def unit_name(hsa: str) -> str:
    """The care unit's name as the system's organisation register knows it (else its HSA-id)."""
    return _UNIT_NAMES.get(hsa, hsa)


def _at(doc: dict[str, Any], name: str) -> Any:
    node: Any = doc
    for step in name.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(step)
    return node
