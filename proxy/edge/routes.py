"""The FHIR REST surface: routes, content negotiation, and errors as OperationOutcome.

    GET  {base}/metadata
    GET  {base}/Patient?identifier=<system>|<personnummer>     (or _id)
    GET  {base}/Patient/{id}
    GET  {base}/Patient/{id}/$everything   (_type, _since, _count)
    GET  {base}/Patient/{id}/$summary      (an International Patient Summary: proxy/fhir/summary.py)
    GET  {base}/{Type}?patient={id}&...     POST {base}/{Type}/_search (form-encoded)
    GET  {base}/{Type}/{id}

Answers are ``application/fhir+json``; XML is not offered (406). Every error is an OperationOutcome
with the status the FHIR spec gives it; nothing unhandled leaves as a bare 500 page.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import http_exceptions, web

from proxy.access import decide
from proxy.auth.verify import AuthError
from proxy.edge import stored, writes
from proxy.edge.http import (
    AUTH_KEY,
    FACADE_KEY,
    STORE_KEY,
    asker,
    base_url,
    emergency_asked,
    error_response,
    exchange,
    fhir_response,
    pretty,
    strict,
)
from proxy.edge.server import below_the_routes
from proxy.fhir import params as parse
from proxy.fhir.bundle import page_links, searchset, source_outcome, withheld_outcome
from proxy.fhir.capability import capability_statement
from proxy.fhir.errors import FhirError, bad_request, not_found
from proxy.fhir.ids import holding_backend, is_fhir_id
from proxy.fhir.summary import TYPES as SUMMARY_TYPES
from proxy.fhir.summary import SourceView, build_summary
from proxy.fhir.summary import disclosed as summary_disclosed
from proxy.pipeline import audit
from proxy.pipeline.exchange import Exchange
from proxy.pipeline.facade import Answer
from proxy.pipeline.walk import run
from proxy.store.base import StoreUnavailable
from proxy.types import Query

log = logging.getLogger(__name__)

_JSON_FORMATS = {"json", "application/json", "application/fhir+json", "application/json+fhir"}
_ACCEPTABLE = {"application/fhir+json", "application/json", "application/json+fhir", "application/*", "*/*"}
_STARTED = datetime.now(UTC).isoformat(timespec="seconds")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _negotiate(request: web.Request) -> None:
    fmt = request.query.get("_format")
    if fmt is not None:
        if fmt.split(";")[0].strip().lower() not in _JSON_FORMATS:
            raise FhirError(406, "not-supported", "Only JSON is supported (_format=json)")
        return  # _format overrides the Accept header (FHIR http.html#mime-type)
    accept = request.headers.get("Accept", "")
    if not accept.strip():
        return
    for part in accept.split(","):
        media, _, rest = part.strip().partition(";")
        q = 1.0
        for prm in rest.split(";"):
            k, _, v = prm.strip().partition("=")
            if k == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        if media.strip().lower() in _ACCEPTABLE and q > 0:
            return
    raise FhirError(406, "not-supported", "Only application/fhir+json is available")


def _authenticate(request: web.Request) -> None:
    """Every FHIR request but the capability documents carries a verified bearer token."""
    base = request.app[FACADE_KEY].settings.facade.base_path
    if request.path in (f"{base}/metadata", f"{base}/.well-known/smart-configuration"):
        return
    exchange(request).principal = request.app[AUTH_KEY].authenticate(request.headers.get("Authorization"))


@web.middleware
async def audited(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Log every request that got as far as naming a patient — allowed, refused or failed — with
    one AuditEvent (``proxy.pipeline.audit``, from the request's Exchange), and let its answer leave
    only once the access is durably logged (else 503)."""
    x = exchange(request)
    store, ids = request.app[STORE_KEY], request.app[FACADE_KEY].ids
    try:
        response = await handler(request)
    except FhirError as exc:
        await audit.complete(store, ids, x, exc.status)
        raise
    except StoreUnavailable:  # nothing was disclosed; the error handler answers 503
        with contextlib.suppress(StoreUnavailable):  # logged if the log can take it; nobody waits
            audit.submit_completed(store, ids, x, 503)
        raise
    except web.HTTPException as exc:  # (e.g. a body over the size limit) logged with its status
        await audit.complete(store, ids, x, exc.status)
        raise
    except Exception:  # (the error handler answers 500) the attempt is logged as well
        await audit.complete(store, ids, x, 500)
        raise
    try:
        await audit.complete(store, ids, x, response.status)
    except StoreUnavailable:
        return error_response(503, "transient", "The access log is unavailable; nothing can be disclosed")
    response.headers["X-Request-ID"] = x.request_id
    return response


@web.middleware
async def fhir_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Content negotiation and authentication first; then every failure becomes an OperationOutcome."""
    try:
        _negotiate(request)
        _authenticate(request)
        return await handler(request)
    except AuthError as exc:
        resp = error_response(401, exc.code, exc.message)
        resp.headers["WWW-Authenticate"] = exc.www_authenticate
        return resp
    except FhirError as exc:
        return fhir_response(exc.outcome(), exc.status)
    except StoreUnavailable:
        resp = error_response(503, "transient", "The facade's store is unavailable; nothing can be disclosed")
        resp.headers["Retry-After"] = "5"
        return resp
    except web.HTTPMethodNotAllowed as exc:  # (the method is the client's bytes: not echoed)
        resp = error_response(405, "not-supported", "This method is not allowed here")
        resp.headers["Allow"] = ",".join(sorted(exc.allowed_methods))
        return resp
    except web.HTTPNotFound:
        return error_response(404, "not-found", "No such FHIR endpoint")
    except web.HTTPException as exc:  # (e.g. a body over the size limit): a fixed text, not its reason
        if exc.status < 400:
            raise
        return below_the_routes(exc.status, None)
    except (web.RequestPayloadError, http_exceptions.HttpProcessingError) as exc:
        # the body broke off or is badly encoded (chunked, compression): the client's fault, and
        # the error's text quotes the body, so neither answered nor logged
        return below_the_routes(400, exc.__cause__ if exc.__cause__ is not None else exc)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "exception", "Internal error")


class FhirRoutes:
    """Request handlers; each reads parse → walk (``proxy.pipeline.walk``) → render."""

    def __init__(self, base_path: str) -> None:
        self.base = base_path

    def add_to(self, app: web.Application) -> None:
        b = self.base
        app.router.add_get(f"{b}/metadata", self.metadata)
        app.router.add_get(f"{b}/.well-known/smart-configuration", self.smart_configuration)
        app.router.add_get(f"{b}/Patient/{{id}}/$everything", self.everything)
        app.router.add_get(f"{b}/Patient/{{id}}/$summary", self.summary)
        stored.add_routes(app, b)
        writes.add_routes(app, b)
        app.router.add_get(f"{b}/{{type}}", self.search)
        app.router.add_post(f"{b}/{{type}}/_search", self.search_post)
        app.router.add_get(f"{b}/{{type}}/{{id}}", self.read)

    async def metadata(self, request: web.Request) -> web.Response:
        facade = request.app[FACADE_KEY]
        cs = capability_statement(facade.mappings.sources_by_type(), base_url(request, facade), _STARTED)
        cs["rest"][0]["security"] = request.app[AUTH_KEY].capability_security()
        return fhir_response(cs, pretty=pretty(request))

    async def smart_configuration(self, request: web.Request) -> web.Response:
        facade = request.app[FACADE_KEY]
        doc = request.app[AUTH_KEY].smart_configuration(
            base_url(request, facade), facade.mappings.resource_types
        )
        resp = web.json_response(doc, dumps=lambda d: orjson.dumps(d).decode())
        resp.headers["Cache-Control"] = "public, max-age=3600"
        return resp

    async def search(self, request: web.Request) -> web.Response:
        return await self._search(request, list(request.query.items()))

    async def search_post(self, request: web.Request) -> web.Response:
        if request.content_type != "application/x-www-form-urlencoded":
            raise FhirError(415, "not-supported", "POST _search takes application/x-www-form-urlencoded")
        try:
            form = await request.post()
        except (UnicodeDecodeError, LookupError):
            raise bad_request("The form body is not valid text in its declared charset") from None
        items: list[tuple[str, Any]] = [*request.query.items(), *form.items()]
        if any(not isinstance(v, str) for _, v in items):
            raise bad_request("Search parameters must be text")
        return await self._search(request, [(k, str(v)) for k, v in items])

    async def _search(self, request: web.Request, params: list[tuple[str, str]]) -> web.Response:
        facade, x = request.app[FACADE_KEY], exchange(request)
        rtype = request.match_info["type"]
        try:
            x.query = query = parse.parse_search(
                rtype, params, facade.ids, facade.settings.facade, strict=strict(request)
            )
        except FhirError:  # refused as malformed: logged against the patient it names, if any
            types = frozenset({rtype}) if rtype in parse.SUPPORTED_TYPES else frozenset()
            audit.unparsed(x, "search-type", types, parse.named_patient(rtype, params, facade.ids))
            raise
        if query.patient is None:  # an id that is not ours: nothing can match
            decide(asker(request), query)  # (but the scopes hold all the same: 403)
            x.answer = answer = Answer(resources=[], outcomes=[], patient_known=False)
        else:
            answer = await _walk(request, x)
        return self._bundle(request, x, answer, f"{base_url(request, facade)}/{rtype}")

    async def everything(self, request: web.Request) -> web.Response:
        facade, x = request.app[FACADE_KEY], exchange(request)
        rid = request.match_info["id"]
        _parse_operation(
            request,
            x,
            "everything",
            lambda: parse.parse_everything(
                rid, list(request.query.items()), facade.ids, facade.settings.facade, strict=strict(request)
            ),
        )
        answer = _known(await _walk(request, x))
        return self._bundle(request, x, answer, f"{base_url(request, facade)}/Patient/{rid}/$everything")

    async def summary(self, request: web.Request) -> web.Response:
        """The IPS document, from the same answer ``$everything`` gives this asker (same access
        decision, PDL, redaction, emergency access, audit); 404 exactly when ``$everything`` is."""
        facade, x = request.app[FACADE_KEY], exchange(request)
        rid = request.match_info["id"]
        types = facade.mappings.with_referenced(SUMMARY_TYPES)  # (referenced: to resolve in the document)
        _parse_operation(
            request,
            x,
            "summary",
            lambda: parse.parse_summary(
                rid,
                list(request.query.items()),
                facade.ids,
                types,
                facade.settings.facade,
                strict=strict(request),
            ),
        )
        answer = _known(await _walk(request, x))
        return self._summary(request, x, answer)

    def _summary(self, request: web.Request, x: Exchange, answer: Answer) -> web.Response:
        facade = request.app[FACADE_KEY]
        assert x.query is not None and x.query.patient is not None and x.decision is not None
        outcomes = [source_outcome(o, facade.settings.backend(o.source).description) for o in answer.outcomes]
        hint = None
        if answer.withheld:
            outcomes.append(withheld_outcome(answer.withheld))
            hint = " ".join(_hint_texts(answer))
        holders = {
            t: tuple(b for b in facade.settings.source_priority if facade.mappings.for_types(b, (t,)))
            for t in SUMMARY_TYPES
        }
        document = build_summary(
            answer.resources,
            patient_id=x.query.patient.fhir_id,
            base_url=base_url(request, facade),
            permitted=x.decision.types,
            sources=SourceView(holders, answer.outcomes, outcomes, hint),
        )
        x.disclosed = audit.disclosed(summary_disclosed(document))
        return fhir_response(document, pretty=pretty(request))

    async def read(self, request: web.Request) -> web.Response:
        facade, x = request.app[FACADE_KEY], exchange(request)
        x.query = parse.parse_read(request.match_info["type"], request.match_info["id"], facade.ids)
        answer = await _walk(request, x)
        return self._one(request, x, answer)

    def _one(self, request: web.Request, x: Exchange, answer: Answer) -> web.Response:
        rtype, rid = request.match_info["type"], request.match_info["id"]
        if answer.resources:
            x.disclosed = audit.disclosed(answer.resources[:1])
            return fhir_response(answer.resources[0], pretty=pretty(request))
        # The id names the source that holds the resource (<patient>-<backend>-<hash>; a Patient may
        # come from any). If that source did not answer, say so rather than "gone".
        holder = None if rtype == "Patient" else holding_backend(rid)
        down = sorted(
            o.source for o in answer.outcomes if o.status.degraded and (holder is None or o.source == holder)
        )
        if down:
            resp = error_response(
                503, "transient", f"Could not read {rtype}/{rid}: {', '.join(down)} unavailable"
            )
            resp.headers["Retry-After"] = "5"
            return resp
        # The hint is type-level (records of this type are withheld from this asker), so a withheld
        # id and a made-up one of the same patient and type get the same 403; else 404.
        if answer.withheld:  # care staff only: the patient is never told that anything is withheld
            raise FhirError(403, "suppressed", " ".join(_hint_texts(answer)))
        raise not_found(f"No {rtype} with that id is known")

    def _bundle(self, request: web.Request, x: Exchange, answer: Answer, url: str) -> web.Response:
        facade = request.app[FACADE_KEY]
        query = x.query
        assert query is not None
        total = answer.total
        count = 0 if query.summary_count else query.count
        page = answer.page(query.offset, count)
        x.disclosed = audit.disclosed(page)
        outcomes = [source_outcome(o, facade.settings.backend(o.source).description) for o in answer.outcomes]
        if answer.withheld:
            outcomes.append(withheld_outcome(answer.withheld))
        bundle = searchset(
            page,
            total=total,
            base_url=base_url(request, facade),
            links=page_links(url, query.used_params, query.offset, count, total, token=x.page_token),
            outcomes=outcomes,
        )
        return fhir_response(bundle, pretty=pretty(request))


def _parse_operation(request: web.Request, x: Exchange, name: str, parse_query: Callable[[], Query]) -> None:
    """The query of an operation on ``Patient/{id}`` ($everything, $summary); a malformed one is
    refused and logged against the patient it names."""
    try:
        x.query = parse_query()
    except FhirError:
        facade, rid = request.app[FACADE_KEY], request.match_info["id"]
        audit.unparsed(x, name, frozenset(), facade.ids.resolve(rid) if is_fhir_id(rid) else None)
        raise


async def _walk(request: web.Request, x: Exchange) -> Answer:
    """The walk (``proxy.pipeline.walk``) for this request's asker and parsed query, with emergency
    access when asked for (the header's reason code; the walk grants or refuses it)."""
    x.emergency_code = emergency_asked(request)
    return await run(request.app[FACADE_KEY], x)


def _known(answer: Answer) -> Answer:
    """An operation on ``Patient/{id}``: 404 exactly when no source knows the patient."""
    if answer.patient_known is False:
        raise not_found("No Patient with that id is known")
    return answer


def _hint_texts(answer: Answer) -> list[str]:
    return [i["details"]["text"] for i in withheld_outcome(answer.withheld)["issue"]]
