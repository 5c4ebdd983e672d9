"""Discovery: what the facade tells clients about its authentication — the
``/.well-known/smart-configuration`` document and the CapabilityStatement's ``rest.security``.
Both are read from the compiled ``auth:`` section (``proxy.auth.config``); the ``Authenticator``
(``proxy.auth.verify``) serves them with its own settings.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from proxy.auth.config import TrustedIssuer

SECURITY_SERVICE_SYSTEM = "http://terminology.hl7.org/CodeSystem/restful-security-service"
OAUTH_URIS_EXTENSION = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


def _endpoints(issuers: Iterable[TrustedIssuer]) -> TrustedIssuer | None:
    return next((i for i in issuers if i.token_endpoint), None)


def smart_configuration(
    issuers: Sequence[TrustedIssuer], base_url: str, resource_types: Iterable[str] = ()
) -> dict[str, Any]:
    """The ``/.well-known/smart-configuration`` document (SMART App Launch 2.x).

    The facade is a resource server: it verifies tokens, it does not issue them. So the document
    says only what the facade itself accepts, plus the endpoints of the first configured issuer
    that declares them:

    * ``capabilities`` — ``permission-v2`` and ``permission-v1`` (both scope syntaxes are
      enforced: v2 ``r`` read by id, ``s`` search, ``c``/``u`` Consent writes; v1 ``read`` =
      ``rs``, ``write`` = ``cud``), ``permission-patient`` (bound to the token's launch
      patient) and ``permission-user``. Launch modes (``launch-ehr``, ``launch-standalone``),
      launch context (``context-*``: the facade reads a token's ``patient`` claim, it never
      runs a launch), client types (``client-confidential-asymmetric`` …),
      ``sso-openid-connect`` and ``permission-offline`` are properties of an authorization
      server and are not claimed.
    * ``scopes_supported`` — the scopes the facade enforces, per context: ``*.r``, ``*.s``,
      ``*.rs`` and v1 ``*.read``; ``<Type>.rs`` for each mapped type; ``Consent.rs``,
      ``Consent.cu`` (v1 ``Consent.write``) and ``AuditEvent.s``. Any v2 subset of ``cruds``
      and v1 ``.*`` are read as well; a scope with a ``?`` restriction grants nothing.
    * ``token_endpoint`` and ``grant_types_supported`` (REQUIRED by SMART) and
      ``authorization_endpoint`` appear only when an issuer declares them in the config;
      otherwise they are left out rather than invented. ``code_challenge_methods_supported``
      is ``["S256"]`` only beside a declared ``authorization_endpoint`` (SMART requires S256 of
      every authorization server). ``issuer``/``jwks_uri`` are omitted: they are required only
      with ``sso-openid-connect``. ``registration_endpoint``, ``management_endpoint``,
      ``introspection_endpoint``, ``revocation_endpoint`` and ``response_types_supported`` are
      the authorization server's business and are left out.
    * ``trusted_issuers`` (a facade extension) lists the ``iss`` values accepted.

    ``base_url`` is the FHIR base the document belongs to; no field of a pure resource server's
    document needs it, it is accepted for symmetry with the route.
    """
    scopes = []
    for ctx in ("patient", "user"):
        scopes += [f"{ctx}/*.rs", f"{ctx}/*.r", f"{ctx}/*.s", f"{ctx}/*.read"]
        scopes += [f"{ctx}/{t}.rs" for t in sorted(set(resource_types))]
        scopes += [f"{ctx}/Consent.rs", f"{ctx}/Consent.cu", f"{ctx}/Consent.write"]
        scopes += [f"{ctx}/AuditEvent.s"]
    doc: dict[str, Any] = {}
    ep = _endpoints(issuers)
    if ep is not None:
        if ep.authorization_endpoint:
            doc["authorization_endpoint"] = ep.authorization_endpoint
        doc["token_endpoint"] = ep.token_endpoint
        if ep.grant_types:
            doc["grant_types_supported"] = list(ep.grant_types)
        if ep.authorization_endpoint:
            doc["code_challenge_methods_supported"] = ["S256"]
    doc["scopes_supported"] = scopes
    doc["capabilities"] = ["permission-v2", "permission-v1", "permission-patient", "permission-user"]
    doc["trusted_issuers"] = sorted(i.issuer for i in issuers)
    return doc


def capability_security(
    issuers: Sequence[TrustedIssuer],
    audience: str,
    max_token_lifetime_s: float,
    audience_names: Sequence[str],
) -> dict[str, Any]:
    """``CapabilityStatement.rest.security``: SMART-on-FHIR bearer tokens."""
    security: dict[str, Any] = {
        "service": [
            {
                "coding": [
                    {
                        "system": SECURITY_SERVICE_SYSTEM,
                        "code": "SMART-on-FHIR",
                        "display": "SMART-on-FHIR",
                    }
                ],
                "text": "OAuth2 bearer tokens (JWT) with SMART App Launch v2 scopes",
            }
        ],
        "description": (
            "Every request except /metadata and /.well-known/smart-configuration needs "
            "`Authorization: Bearer <JWT>` from a trusted issuer, with `aud` "
            f"{audience}, living at most {max_token_lifetime_s:.0f} s (exp - iat). "
            "SMART scopes are enforced per interaction: v2 `r` for a read by id, `s` for a "
            "search or $everything (which returns only the types granted `s`), `c`/`u` for "
            "Consent create/update; v1 `.read` grants r and s, `.write` c and u. `user/` scopes "
            "cover any patient; `patient/` scopes only the token's launch patient (its `patient` "
            "claim, required for them). Scopes with a `?` restriction grant nothing. The client "
            f"audience ({', '.join(audience_names)}) decides what is shown. See "
            "/.well-known/smart-configuration."
        ),
    }
    ep = _endpoints(issuers)
    if ep is not None:
        uris = [{"url": "token", "valueUri": ep.token_endpoint}]
        if ep.authorization_endpoint:
            uris.append({"url": "authorize", "valueUri": ep.authorization_endpoint})
        security["extension"] = [{"url": OAUTH_URIS_EXTENSION, "extension": uris}]
    return security
