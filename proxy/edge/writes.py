"""Writing through the facade (``proxy.pipeline.write``): the HTTP side.

    POST {base}                         a transaction Bundle (a home visit: Encounter, vital signs,
                                        a nursing note, medication given / not given)
    POST {base}/{Type}                  one resource of a writable type: a transaction of one entry
                                        (its ``Idempotency-Key`` header, if any, is its identifier)
    GET  {base}/Task/{id}               the delivery status of a write (only to its writer)

The answer of a write: 200 with a ``transaction-response`` Bundle (one POSTed resource: 201 when
every target has it, else 202, with an OperationOutcome), ``Location`` the Task. Bad input: 400
with every problem; no write scope or policy: 403; another Bundle under the same identifier: 409.
"""

from __future__ import annotations

import uuid

import orjson
from aiohttp import web

from proxy.edge.http import FACADE_KEY, asker, base_url, exchange, fhir_response, pretty
from proxy.fhir.errors import FhirError, bad_request, not_found
from proxy.fhir.ids import is_fhir_id
from proxy.pipeline import write as writing
from proxy.settings import WRITABLE_TYPES
from proxy.types import Query

_JSON_BODIES = {"application/fhir+json", "application/json", "application/json+fhir"}
SINGLE_SYSTEM = "urn:fhir-facade:single-write"  # Bundle.identifier of a one-resource POST


def add_routes(app: web.Application, base: str) -> None:
    app.router.add_post(base, transaction)
    for rtype in WRITABLE_TYPES:
        app.router.add_post(f"{base}/{rtype}", single)
    app.router.add_get(f"{base}/Task/{{id}}", read_task)


async def _body(request: web.Request) -> bytes:
    if request.content_type not in _JSON_BODIES:
        raise FhirError(415, "not-supported", "Send FHIR JSON (application/fhir+json)")
    return await request.read()


async def transaction(request: web.Request) -> web.Response:
    written = await writing.write(request.app[FACADE_KEY], exchange(request), await _body(request))
    resp = fhir_response(written.response, pretty=pretty(request))
    resp.headers["Location"] = _task_url(request, written.task_id)
    return resp


async def single(request: web.Request) -> web.Response:
    rtype = request.path.rsplit("/", 1)[1]
    try:
        resource = orjson.loads(await _body(request))
    except orjson.JSONDecodeError:
        raise bad_request("The body is not valid JSON") from None
    if not isinstance(resource, dict) or resource.get("resourceType") != rtype:
        raise bad_request(f"The body must be a {rtype} resource (the type in the URL)")
    key = request.headers.get("Idempotency-Key")
    if key is None:
        key = uuid.uuid4().hex  # (no key: every POST is a new write)
    elif not (0 < len(key) <= 128 and key.isascii() and key.isprintable()):
        # (never ignored: the client counts on it to make a repeat harmless)
        raise bad_request("Idempotency-Key must be 1 to 128 printable ASCII characters")
    # (the key is the writer's own: proxy.pipeline.write keeps a Bundle.identifier per writer)
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "identifier": {"system": SINGLE_SYSTEM, "value": key},
        "entry": [
            {
                # (from the key: the same resource under the same key is the same Bundle, a repeat)
                "fullUrl": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{SINGLE_SYSTEM}|{key}')}",
                "resource": resource,
                "request": {"method": "POST", "url": rtype},
            }
        ],
    }
    try:
        body = orjson.dumps(bundle)
    except orjson.JSONEncodeError:  # (nested deeper than anything a resource of these types holds)
        raise bad_request("The resource is nested too deeply") from None
    written = await writing.write(request.app[FACADE_KEY], exchange(request), body)
    (entry,) = written.response["entry"]
    outcome = entry["response"].get("outcome") or {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": "information", "code": "informational", "diagnostics": "Delivered to every target"}
        ],
    }
    status = int(entry["response"]["status"].split()[0])
    resp = fhir_response(outcome, status, pretty=pretty(request))
    resp.headers["Location"] = _task_url(request, written.task_id)
    return resp


async def read_task(request: web.Request) -> web.Response:
    facade = request.app[FACADE_KEY]
    principal = asker(request)
    tid = request.match_info["id"]
    txn = await facade.store.outbox_transaction(tid) if facade.store is not None and is_fhir_id(tid) else None
    if txn is None or not writing.written_by(txn, principal):  # (another's: as unknown as none)
        raise not_found("No Task with that id is known")
    patient = facade.ids.resolve(txn.patient)
    if patient is None:
        raise not_found("No Task with that id is known")
    exchange(request).query = Query(interaction="read", resource_types=frozenset({"Task"}), patient=patient)
    return fhir_response(
        writing.task(txn, f"Patient/{txn.patient}", facade.clock.time()), pretty=pretty(request)
    )


def _task_url(request: web.Request, task_id: str) -> str:
    return f"{base_url(request, request.app[FACADE_KEY])}/Task/{task_id}"
