"""The resources the facade keeps itself (proxy/store), not fetched from any backend:

    POST {base}/Consent                 register a consent (care staff) or place a block (the patient)
    PUT  {base}/Consent/{id}            revoke it / lift it: the same resource with status inactive
    GET  {base}/Consent?patient={id}    (status=active|inactive)     GET {base}/Consent/{id}
    GET  {base}/AuditEvent?patient={id} the access log: the patient's own view, or an auditor's

Who revokes: the patient any consent or block about themselves; care staff the consents given to
their own provider or unit. Who sees which Consent: the patient all of their own; care staff the
consents registered for their own care provider or unit (not the patient's blocks: the answer's
hint says that blocked information exists, never where). Who reads the access log: the patient their own, in
``patient_view`` form; users configured as auditors (``access.auditors``) every patient's, whole.
Everyone else: 403. Every one of these requests is itself audited.

Scopes (``proxy.access.require``): creating a Consent needs ``c`` on Consent, revoking one ``u``,
reading one by id ``r``, searching ``s``; reading the access log ``s`` on AuditEvent (v1 ``write``
grants c and u, ``read`` r and s). A read or update by id is refused (403) before the lookup when
the scopes grant the permission for no patient at all, and answers 404, as for an unknown id, when
they grant it only for another patient (``patient/`` scopes: the launch patient).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import orjson
from aiohttp import web

from proxy.access import consent, probing, require
from proxy.audit.events import patient_view
from proxy.edge.http import (
    FACADE_KEY,
    STORE_KEY,
    asker,
    base_url,
    exchange,
    fhir_response,
    pretty,
    strict,
)
from proxy.fhir import params as parse
from proxy.fhir.bundle import page_links, searchset
from proxy.fhir.errors import FhirError, bad_request, not_found
from proxy.fhir.ids import is_fhir_id
from proxy.pipeline import audit
from proxy.store.base import ConsentRow
from proxy.types import FhirDict, PatientRef, Permission, Principal, Query

_JSON_BODIES = {"application/fhir+json", "application/json", "application/json+fhir"}
_STATUSES = frozenset({"active", "inactive"})


def add_routes(app: web.Application, base: str) -> None:
    app.router.add_post(f"{base}/Consent", create_consent)
    app.router.add_get(f"{base}/Consent", search_consents)
    app.router.add_get(f"{base}/Consent/{{id}}", read_consent)
    app.router.add_put(f"{base}/Consent/{{id}}", update_consent)
    app.router.add_get(f"{base}/AuditEvent", search_audit)


# ---- Consent ------------------------------------------------------------------------------------


def _mine(principal: Principal) -> set[str]:
    return {principal.care_provider_hsa_id, principal.care_unit_hsa_id} - {None}  # type: ignore[return-value]


def _visible(principal: Principal, row: ConsentRow) -> bool:
    if principal.audience.is_patient:
        return row.patient_pnr == principal.patient_pnr
    terms = consent.terms(row.resource)
    return terms.permit and terms.recipient in _mine(principal)


def _may_write(principal: Principal, patient_pnr: str, terms: consent.Terms) -> None:
    if principal.audience.is_patient:
        if patient_pnr != principal.patient_pnr:
            raise FhirError(
                403, "forbidden", "A patient manages consents and blocks for their own record only"
            )
        if terms.permit:
            raise FhirError(
                403,
                "forbidden",
                "A consent is registered by the care provider it is given to, not by the patient",
            )
        return
    if not terms.permit:
        raise FhirError(403, "forbidden", "A block (spärr) is placed or lifted by the patient")
    if terms.recipient not in _mine(principal):
        raise FhirError(
            403,
            "forbidden",
            "A consent can be registered only for the asker's own care provider or care unit",
        )


def _may_revoke(principal: Principal, row: ConsentRow) -> None:
    """The patient revokes any consent and lifts any block about themselves (whoever registered
    it); care staff revoke the consents given to their own provider or unit, and lift no block."""
    if principal.audience.is_patient and row.patient_pnr == principal.patient_pnr:
        return
    _may_write(principal, row.patient_pnr, consent.terms(row.resource))


async def _body(request: web.Request) -> Any:
    if request.content_type not in _JSON_BODIES:
        raise FhirError(415, "not-supported", "Send the Consent as application/fhir+json")
    try:
        return orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        raise bad_request("The body is not valid JSON") from None


def _patient_of(request: web.Request, body: FhirDict) -> PatientRef:
    ref = body["patient"]["reference"].removeprefix("Patient/")
    patient = request.app[FACADE_KEY].ids.resolve(ref) if is_fhir_id(ref) else None
    if patient is None:
        raise bad_request("Consent.patient does not reference a Patient of this server")
    return patient


def _audited(request: web.Request, interaction: str, patient: PatientRef) -> None:
    exchange(request).query = Query(
        interaction=interaction, resource_types=frozenset({"Consent"}), patient=patient
    )


def _one(resource: FhirDict, status: int = 200, *, request: web.Request) -> web.Response:
    resp = fhir_response(resource, status, pretty=pretty(request))
    resp.headers["ETag"] = f'W/"{resource["meta"]["versionId"]}"'
    resp.headers["Last-Modified"] = resource["meta"]["lastUpdated"]
    return resp


async def create_consent(request: web.Request) -> web.Response:
    principal = asker(request)
    body = consent.validate(consent.inert(await _body(request)))
    patient = _patient_of(request, body)
    _audited(request, "create", patient)
    require(principal, "c", "Consent", patient.pnr)
    _may_write(principal, patient.pnr, consent.terms({**body, "id": ""}))
    resource = consent.stored(body)
    await request.app[STORE_KEY].add_consent(
        ConsentRow(resource["id"], patient.pnr, resource["status"], 1, resource)
    )
    await _in_force(request, patient)
    exchange(request).resource = f"Consent/{resource['id']}/_history/1"
    resp = _one(resource, 201, request=request)
    url = f"{base_url(request, request.app[FACADE_KEY])}/Consent/{resource['id']}"
    resp.headers["Location"] = f"{url}/_history/1"
    return resp


async def _row(request: web.Request, permission: Permission) -> ConsentRow:
    """The stored Consent the URL names, if the asker may see it (else 404, as if there were none)
    and its scopes grant ``permission`` on it (for no patient at all: 403, before the lookup)."""
    principal = asker(request)
    require(principal, permission, "Consent", principal.launch_pnr)  # (user/ scopes or its own patient)
    cid = request.match_info["id"]
    row = await request.app[STORE_KEY].consent(cid) if is_fhir_id(cid) else None
    if (
        row is None
        or not _visible(principal, row)
        or not principal.may(permission, "Consent", row.patient_pnr)
    ):
        raise not_found("No Consent with that id is known")
    return row


async def read_consent(request: web.Request) -> web.Response:
    row = await _row(request, "r")
    _audited(request, "read", request.app[FACADE_KEY].ids.patient(row.patient_pnr))
    return _one(consent.normalised(row.resource), request=request)


async def update_consent(request: web.Request) -> web.Response:
    """Revoking a consent or lifting a block: the stored resource with ``status: inactive``."""
    principal = asker(request)
    row = await _row(request, "u")
    body = await _body(request)
    patient = request.app[FACADE_KEY].ids.patient(row.patient_pnr)
    _audited(request, "update", patient)
    body = consent.inert(body)  # (no narrative, no contained resources: see proxy.access.consent)
    if not isinstance(body, dict) or body.get("resourceType") != "Consent":
        raise bad_request("The body must be a FHIR Consent resource (resourceType Consent)")
    if body.get("id") != row.id:
        raise bad_request("The Consent's id must be the id in the URL")
    if body.get("status") not in _STATUSES:
        raise bad_request("Consent.status must be inactive (to revoke a consent or lift a block)")
    if not consent.only_status_changed(row.resource, body):
        raise bad_request(
            "Only Consent.status can change (to inactive); register a new Consent for different terms"
        )
    if row.status == "inactive" and body["status"] == "active":
        raise bad_request("A revoked consent or lifted block stays inactive; register a new one")
    _may_revoke(principal, row)
    match = request.headers.get("If-Match")
    if match is not None and match.strip() != f'W/"{row.version}"':
        raise FhirError(412, "conflict", "The Consent has changed since that version (If-Match)")
    if body["status"] == row.status:  # (a repeat after a 503: the snapshots are dropped again)
        await _in_force(request, patient)
        return _one(consent.normalised(row.resource), request=request)
    resource = consent.stored(
        {**consent.normalised(row.resource), "status": body["status"]},
        consent_id=row.id,
        version=row.version + 1,
    )
    updated = ConsentRow(row.id, row.patient_pnr, resource["status"], row.version + 1, resource)
    if not await request.app[STORE_KEY].update_consent(updated, expected_version=row.version):
        raise FhirError(409, "conflict", "The Consent was changed by another request; read it and try again")
    exchange(request).resource = f"Consent/{row.id}/_history/{row.version + 1}"  # the revocation, logged
    await _in_force(request, patient)
    return _one(resource, request=request)


async def _in_force(request: web.Request, patient: PatientRef) -> None:
    """A consent or block written: the patient's page snapshots (``proxy.paging``), made under the
    old terms, are dropped — in the shared store, so on every worker and host at once. If that
    fails, the request fails (503): the write is stored, and repeating it drops them."""
    pages = request.app[FACADE_KEY].pages
    if pages is not None:
        await pages.drop_snapshots(patient.fhir_id)


async def search_consents(request: web.Request) -> web.Response:
    principal = asker(request)
    query, wanted = _search_params(request, "Consent", {"status": _STATUSES})
    exchange(request).query = query
    require(principal, "s", "Consent", query.patient.pnr if query.patient else None)
    # another patient's consents are not even read: the asker is answered as for an unknown patient
    mine = query.patient is not None and not probing(principal, query.patient.pnr)
    rows = await request.app[STORE_KEY].consents(query.patient.pnr) if query.patient and mine else []
    statuses = wanted.get("status", _STATUSES)
    found = [consent.normalised(r.resource) for r in rows if r.status in statuses and _visible(principal, r)]
    exchange(request).disclosed = Counter({"facade": len(found)})
    return _bundle(request, query, found[query.offset :], len(found), "Consent")


# ---- AuditEvent ---------------------------------------------------------------------------------


async def search_audit(request: web.Request) -> web.Response:
    facade = request.app[FACADE_KEY]
    principal = asker(request)
    query, _ = _search_params(request, "AuditEvent", {})
    exchange(request).query = query  # a refused attempt is logged too
    require(principal, "s", "AuditEvent", query.patient.pnr if query.patient else None)
    is_patient = principal.audience.is_patient
    if not is_patient and principal.user_hsa_id not in facade.settings.access.auditors:
        raise FhirError(403, "forbidden", "Only the patient and configured auditors may read the access log")
    own = query.patient is not None and (not is_patient or query.patient.pnr == principal.patient_pnr)
    if not own or query.patient is None:  # another patient's log reads as an unknown patient's
        return _bundle(request, query, [], 0, "AuditEvent")
    total, events = await request.app[STORE_KEY].audit_events(
        query.patient.pnr,
        limit=0 if query.summary_count else query.count,
        offset=query.offset,
        as_patient=is_patient,  # no other patient's attempt on the record, as "Du själv" or at all
    )
    exchange(request).disclosed = Counter({"facade": len(events)})
    if is_patient:
        names = dict(facade.settings.access.directory)
        events = [patient_view(e, names, facade.settings.audiences) for e in events]
    return _bundle(request, query, events, total, "AuditEvent")


def _search_params(
    request: web.Request, rtype: str, codes: dict[str, frozenset[str]]
) -> tuple[Query, dict[str, frozenset[str]]]:
    facade = request.app[FACADE_KEY]
    params = list(request.query.items())
    try:
        return parse.parse_stored_search(
            rtype, params, facade.ids, facade.settings.facade, codes=codes, strict=strict(request)
        )
    except FhirError:  # refused as malformed: logged against the patient it names, if any
        audit.unparsed(
            exchange(request),
            "search-type",
            frozenset({rtype}),
            parse.named_patient(rtype, params, facade.ids),
        )
        raise


def _bundle(request: web.Request, query: Query, page: list[FhirDict], total: int, rtype: str) -> web.Response:
    facade = request.app[FACADE_KEY]
    base = base_url(request, facade)
    count = 0 if query.summary_count else query.count
    bundle = searchset(
        page[:count],
        total=total,
        base_url=base,
        links=page_links(f"{base}/{rtype}", query.used_params, query.offset, count, total),
    )
    return fhir_response(bundle, pretty=pretty(request))
