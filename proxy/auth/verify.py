"""Token verification: the ``Authenticator`` turns a verified ``Authorization: Bearer <JWT>``
into a ``Principal``, or raises ``AuthError`` (a 401 with its ``WWW-Authenticate``).

A token is accepted when: the scheme is ``Bearer``; ``alg`` is one the issuer (looked up by the
unverified ``iss``) allows; the signature verifies with a key of that issuer only (chosen by
``kid``); ``iss``, ``aud``, ``exp`` and ``sub`` are present; ``aud`` is this facade's audience;
``exp``/``nbf``/``iat`` hold within the leeway; ``exp - iat`` (``exp - now`` without ``iat``) is at
most ``max_token_lifetime_s``; the audience claim names one of the configured audiences
(``Settings.audiences``, ``proxy.audience``: any other name is refused); the patient's audience
carries a valid personnummer and no ``user/``/``system/`` scopes; the care audiences carry the
user, care-unit and care-provider HSA-ids.

The launch patient: ``patient/`` scopes cover only the patient of the token's SMART launch context,
its ``patient`` claim (a Patient id of this facade, decoded with its ``PatientIds``). A care token
with ``patient/`` scopes and no ``patient`` claim is refused (401); a patient token's ``patient``
claim, when present, must be the id of its own personnummer (else 401); for the patient audience
the launch patient is always its own. Which permission each request needs: ``proxy.access``.

``AuthError`` messages are safe to return to the client: they never contain the token or any claim
value (no personnummer, no HSA-id, no issuer).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jwt
from cachetools import LRUCache

from proxy.audience import DEFAULT_AUDIENCES, Audiences
from proxy.auth import discovery
from proxy.auth.config import ClaimNames, TrustedIssuer, read_auth_config
from proxy.auth.keys import VerificationKey, candidate_keys
from proxy.auth.scopes import parse_scopes
from proxy.clock import SYSTEM_CLOCK, Clock
from proxy.fhir.ids import PatientIds
from proxy.hsa import is_hsa_id
from proxy.pnr import normalise
from proxy.settings import Settings
from proxy.types import Principal

MAX_TOKEN_CHARS = 16 * 1024

_TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")


class AuthError(Exception):
    """A request that cannot be authenticated: answer 401 with ``www_authenticate`` and an
    OperationOutcome (``code``, ``message``). The message is short and safe to show the client."""

    status = 401
    severity = "error"

    def __init__(self, message: str, *, error: str | None = "invalid_token", code: str = "unknown") -> None:
        super().__init__(message)
        self.message = message
        # RFC 6750 error code: None when no credentials were sent, "invalid_request" for a malformed
        # Authorization header, "invalid_token" for a token that was sent and is not acceptable.
        self.error = error
        # FHIR IssueType: "login" (no credentials), "expired", "unknown" (token not acceptable).
        self.code = code

    @property
    def www_authenticate(self) -> str:
        """The ``WWW-Authenticate`` header value (RFC 6750 §3)."""
        value = 'Bearer realm="fhir-facade"'
        if self.error:
            description = self.message.replace("\\", "").replace('"', "'")
            value += f', error="{self.error}", error_description="{description}"'
        return value


class Authenticator:
    """Verifies bearer tokens against the trusted issuers; built once at start-up."""

    def __init__(
        self,
        auth: Mapping[str, Any] | None,
        config_dir: Path,
        *,
        extra_issuer: TrustedIssuer | None = None,
        patient_ids: PatientIds | None = None,
        clock: Clock = SYSTEM_CLOCK,
        audiences: Audiences = DEFAULT_AUDIENCES,
    ) -> None:
        config = read_auth_config(auth, Path(config_dir), extra_issuer=extra_issuer)
        self.audience: str = config.audience
        self.leeway_s = config.leeway_s
        self.max_token_lifetime_s = config.max_token_lifetime_s
        self._issuers = dict(config.issuers)
        self._ids = patient_ids  # to read the `patient` (launch) claim; without it, none is accepted
        self._verified: LRUCache[str, tuple[Principal, float]] = LRUCache(maxsize=10_000)
        # exp/nbf/iat and the remembered tokens are judged by it (its epoch reading), not by PyJWT
        self.clock = clock
        self.audiences = audiences  # a token's audience claim names one of them (else 401)

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        extra_issuer: TrustedIssuer | None = None,
        patient_ids: PatientIds | None = None,
        clock: Clock = SYSTEM_CLOCK,
    ) -> Authenticator:
        return cls(
            settings.auth,
            settings.config_dir,
            extra_issuer=extra_issuer,
            patient_ids=patient_ids,
            clock=clock,
            audiences=settings.audiences,
        )

    @property
    def issuers(self) -> tuple[TrustedIssuer, ...]:
        return tuple(self._issuers.values())

    # -- the request path ------------------------------------------------------------------

    def authenticate(self, authorization: str | None) -> Principal:
        """The Principal for an ``Authorization`` header value; ``AuthError`` when there is none.

        A token that verified once is remembered until its ``exp`` (keyed by the exact token text,
        so any change to it is a new token): clients send the same token for many requests, and
        the signature check is the costliest part of a cached answer.
        """
        token = _bearer_token(authorization)
        known = self._verified.get(token)
        if known is not None and self.clock.time() < known[1]:
            return known[0]
        try:
            header = jwt.get_unverified_header(token)
            unverified = jwt.decode(token, options={"verify_signature": False})
        except jwt.PyJWTError:
            raise AuthError("the bearer token is not a well-formed JWT") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or not alg or alg.lower() == "none":
            raise AuthError("unsigned tokens are not accepted")
        iss = unverified.get("iss")
        if not isinstance(iss, str) or not iss:
            raise AuthError("the token lacks the required claim iss")
        issuer = self._issuers.get(iss)
        if issuer is None:
            raise AuthError("the token's issuer is not trusted")
        if alg not in issuer.algorithms:
            raise AuthError("the token's signing algorithm is not accepted for its issuer")

        candidates = candidate_keys(issuer.keys, alg, header.get("kid"))
        if not candidates:
            raise AuthError("no key of the token's issuer matches the token's key id")

        claims = self._verify(token, issuer, alg, candidates)
        self._check_times(claims)
        self._check_lifetime(claims)
        principal = self._principal(claims, issuer)
        self._verified[token] = (principal, float(claims["exp"]))
        return principal

    def _verify(
        self, token: str, issuer: TrustedIssuer, alg: str, keys: Sequence[VerificationKey]
    ) -> dict[str, Any]:
        for i, key in enumerate(keys):
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    key.key,
                    algorithms=[alg],
                    audience=self.audience,
                    issuer=issuer.issuer,
                    # exp, nbf and iat are checked against the injected clock (_check_times)
                    options={
                        "require": ["iss", "aud", "exp", "sub"],
                        "enforce_minimum_key_length": True,
                        "verify_exp": False,
                        "verify_nbf": False,
                        "verify_iat": False,
                    },
                )
                return claims
            except jwt.InvalidSignatureError:
                if i + 1 < len(keys):
                    continue  # no kid: try the issuer's next key
                raise AuthError("the token's signature is invalid") from None
            except jwt.MissingRequiredClaimError as exc:
                raise AuthError(f"the token lacks the required claim {exc.claim}") from None
            except jwt.InvalidAudienceError:
                raise AuthError("the token is not issued for this service (aud)") from None
            except jwt.InvalidIssuerError:
                raise AuthError("the token's issuer is not trusted") from None
            except jwt.InvalidAlgorithmError:
                raise AuthError("the token's signing algorithm is not accepted for its issuer") from None
            except jwt.PyJWTError:
                raise AuthError("the bearer token is not a valid JWT") from None
        raise AuthError("the token's signature is invalid")  # pragma: no cover - keys is never empty

    def _check_times(self, claims: dict[str, Any]) -> None:
        """``exp`` (required), ``nbf`` and ``iat`` are NumericDates (JSON numbers, RFC 7519 §2) and
        hold at the clock's ``time()`` within the leeway: ``exp`` has not passed, ``nbf`` and ``iat``
        are not in the future. (PyJWT would read the machine's clock; this reads the injected one.)"""
        now, leeway = self.clock.time(), self.leeway_s
        for name in ("exp", "nbf", "iat"):
            value = claims.get(name)
            if name in claims and (
                isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
            ):
                raise AuthError(f"the token's {name} is not a NumericDate")
        if float(claims["exp"]) <= now - leeway:
            raise AuthError("the token has expired", code="expired")
        for name in ("nbf", "iat"):
            if name in claims and float(claims[name]) > now + leeway:
                raise AuthError("the token is not valid yet (nbf/iat in the future)")

    def _check_lifetime(self, claims: dict[str, Any]) -> None:
        """A token may live at most ``max_token_lifetime_s``: ``exp - iat`` (``exp - now`` without
        ``iat``). ``_check_times`` has checked that both are numbers and ``iat`` is not in the future."""
        iat = claims.get("iat")
        start = float(iat) if iat is not None else self.clock.time()
        if float(claims["exp"]) - start > self.max_token_lifetime_s:
            raise AuthError(
                f"the token's lifetime (exp - iat) exceeds the {self.max_token_lifetime_s:.0f} s "
                "this service accepts"
            )

    def _launch_pnr(self, claims: dict[str, Any], names: ClaimNames) -> str | None:
        """The personnummer behind the token's SMART launch patient (a Patient id of this server)."""
        value = claims.get(names.launch_patient)
        if value is None:
            return None
        if self._ids is None:
            raise AuthError(f"this service cannot check the token's {names.launch_patient} claim")
        pnr = self._ids.decode(value) if isinstance(value, str) else None
        if pnr is None:
            raise AuthError(f"the token's {names.launch_patient} claim is not a Patient id of this service")
        return pnr

    def _principal(self, claims: dict[str, Any], issuer: TrustedIssuer) -> Principal:
        names = issuer.claims
        sub = claims["sub"]
        if not isinstance(sub, str) or not sub:
            raise AuthError("the token's sub claim must be a non-empty string")
        claimed = claims.get(names.audience)
        if claimed is None:
            raise AuthError(f"the token lacks the required claim {names.audience}")
        audience = self.audiences.get(claimed)
        if audience is None:  # fail closed: an audience not configured is no audience
            raise AuthError(
                f"the token's {names.audience} claim is not one of {', '.join(self.audiences.names)}"
            )

        raw_scope = claims.get("scope", "")
        if isinstance(raw_scope, list) and all(isinstance(s, str) for s in raw_scope):
            raw_scope = " ".join(raw_scope)
        if not isinstance(raw_scope, str):
            raise AuthError("the token's scope claim must be a space-separated string")
        scopes = parse_scopes(raw_scope)

        client_id = claims.get("client_id") or claims.get("azp")
        common: dict[str, Any] = {
            "audience": audience,
            "subject": sub,
            "client_id": client_id if isinstance(client_id, str) and client_id else "unknown",
            "issuer": issuer.issuer,
            "scopes": scopes,
        }
        launch = self._launch_pnr(claims, names)
        if audience.is_patient:
            if any(item.startswith(("user/", "system/")) for item in raw_scope.split()):
                raise AuthError("a patient token may only carry patient/ scopes")
            value = claims.get(names.pnr)
            if value is None:
                raise AuthError(f"a patient token needs the claim {names.pnr}")
            pnr = normalise(value) if isinstance(value, str) else None
            if pnr is None:
                raise AuthError(f"the token's {names.pnr} claim is not a valid personnummer")
            if launch is not None and launch != pnr:
                raise AuthError(
                    f"the token's {names.launch_patient} claim is not the patient's own record ({names.pnr})"
                )
            return Principal(**common, patient_pnr=pnr, launch_pnr=pnr)

        if launch is None and any(item.startswith("patient/") for item in raw_scope.split()):
            raise AuthError(
                f"a {audience.name} token with patient/ scopes needs a launch patient "
                f"(the claim {names.launch_patient})"
            )

        hsa = {}
        for attr in ("hsa_id", "care_unit", "care_provider"):
            name = getattr(names, attr)
            value = claims.get(name)
            if value is None:
                raise AuthError(f"a {audience.name} token needs the claim {name}")
            if not is_hsa_id(value):
                raise AuthError(f"the token's {name} claim is not an HSA-id")
            hsa[attr] = value
        return Principal(
            **common,
            user_hsa_id=hsa["hsa_id"],
            care_unit_hsa_id=hsa["care_unit"],
            care_provider_hsa_id=hsa["care_provider"],
            user_name=_user_name(claims.get(names.user_name)),
            launch_pnr=launch,
        )

    # -- discovery -------------------------------------------------------------------------

    def smart_configuration(self, base_url: str, resource_types: Iterable[str] = ()) -> dict[str, Any]:
        """The ``/.well-known/smart-configuration`` document (``proxy.auth.discovery``)."""
        return discovery.smart_configuration(self.issuers, base_url, resource_types)

    def capability_security(self) -> dict[str, Any]:
        """``CapabilityStatement.rest.security`` (``proxy.auth.discovery``)."""
        return discovery.capability_security(
            self.issuers, self.audience, self.max_token_lifetime_s, self.audiences.names
        )


def _bearer_token(authorization: str | None) -> str:
    if authorization is None or not authorization.strip():
        raise AuthError("this request needs an Authorization: Bearer token", error=None, code="login")
    scheme, _, rest = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise AuthError("the Authorization scheme must be Bearer", error="invalid_request", code="login")
    token = rest.strip()
    if not token:
        raise AuthError("the Authorization header has no token", error="invalid_request", code="login")
    if len(token) > MAX_TOKEN_CHARS or not _TOKEN_SHAPE.match(token):
        raise AuthError("the bearer token is not a well-formed JWT")
    return token


def _user_name(value: object) -> str | None:
    """The user's name, if the token carries a usable one (optional: a write stamps the HSA-id then);
    a name that is no plain text of at most 200 characters is a bad token, not silently dropped."""
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 200 or not value.isprintable():
        raise AuthError(
            "the token's name claim must be the user's name: printable text, at most 200 characters"
        )
    return value
