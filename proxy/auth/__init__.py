"""Authentication: a verified ``Authorization: Bearer <JWT>`` becomes a ``Principal``.

Every FHIR request except ``/fhir/metadata`` and ``/.well-known/smart-configuration`` carries a
JWT from a trusted issuer. The ``Authenticator`` is compiled once at start-up from the ``auth:``
section of ``config/facade.yaml``; a bad key file, an unknown algorithm or a misspelt key fails
there (``ConfigError`` naming the key), never on a request.

Configuration (paths relative to the config file)::

    auth:
      audience: urn:fhir-facade          # the JWT `aud` this facade accepts (default urn:fhir-facade)
      leeway_s: 30                       # clock skew allowed on exp / nbf / iat (default 30, max 300)
      max_token_lifetime_s: 3600         # longest exp - iat accepted (default 3600, 60 to 86400)
      issuers:
        - issuer: https://idp.region.example/     # exact `iss`
          jwks_file: keys/region-jwks.json        # or pem_file: keys/region.pem (public key or certificate)
          algorithms: [RS256, ES256]              # default [RS256, ES256]; HS* and none are refused
          claims:                                 # optional renames; these are the defaults
            audience: client_audience             #   one of the audiences (config `audiences:`)
            hsa_id: hsa_id                        #   the user's HSA-id (care audiences)
            care_unit: care_unit_hsa_id           #   the care unit's HSA-id (care audiences)
            care_provider: care_provider_hsa_id   #   the care provider's HSA-id (care audiences)
            pnr: patient_pnr                      #   the patient's own personnummer (patient audience)
            launch_patient: patient               #   the SMART launch patient: a Patient id of this facade
          token_endpoint: https://idp.region.example/token          # optional, published in the
          authorization_endpoint: https://idp.region.example/auth   # SMART configuration when given
          grant_types: [authorization_code, client_credentials]     # (first issuer that has them)

Only asymmetric algorithms are accepted from configured issuers: RS256/384/512, PS256/384/512 and
ES256/384/512. The dev-only demo issuer (HS256, ``proxy.auth.demo``) is trusted only when passed
in explicitly as ``extra_issuer``; configuration can never name it.

A token is accepted when: the scheme is ``Bearer``; ``alg`` is one the issuer (looked up by the
unverified ``iss``) allows; the signature verifies with a key of that issuer only (chosen by
``kid``); ``iss``, ``aud``, ``exp`` and ``sub`` are present; ``aud`` is this facade's audience;
``exp``/``nbf``/``iat`` hold within the leeway; ``exp - iat`` (``exp - now`` without ``iat``) is at
most ``max_token_lifetime_s``; the audience claim names one of the configured audiences
(``Settings.audiences``, ``proxy.audience``: any other name is refused); the patient's audience
carries a valid personnummer and no ``user/``/``system/`` scopes; the care audiences carry the
user, care-unit and care-provider HSA-ids.

Scopes (``scope``, space-separated) become ``Scope`` grants (``proxy.types``): SMART v2
``patient|user/<Type|*>.<cruds subset>`` grants each letter's permission (``r`` read by id, ``s``
search, ``c`` create, ``u`` update, ``d`` delete); SMART v1 ``.read`` grants ``r`` and ``s``,
``.write`` ``c``, ``u`` and ``d``, ``.*`` all five. Anything else (``openid``, ``launch/patient``,
``system/…``, v2 scopes with a ``?param=value`` restriction — which the facade cannot enforce — …)
grants nothing. A token without any scope is still a valid identity; it just may do nothing.

The launch patient: ``patient/`` scopes cover only the patient of the token's SMART launch context,
its ``patient`` claim (a Patient id of this facade, decoded with its ``PatientIds``). A care token
with ``patient/`` scopes and no ``patient`` claim is refused (401); a patient token's ``patient``
claim, when present, must be the id of its own personnummer (else 401); for the patient audience
the launch patient is always its own. Which permission each request needs: ``proxy.access``.

``AuthError`` messages are safe to return to the client: they never contain the token or any claim
value (no personnummer, no HSA-id, no issuer).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cachetools import LRUCache
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from proxy.audience import DEFAULT_AUDIENCES, Audiences
from proxy.clock import SYSTEM_CLOCK, Clock
from proxy.fhir.ids import PatientIds
from proxy.hsa import is_hsa_id
from proxy.pnr import normalise
from proxy.settings import ConfigError, Settings
from proxy.types import Permission, Principal, Scope

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "DEFAULT_AUDIENCE",
    "AuthError",
    "Authenticator",
    "ClaimNames",
    "TrustedIssuer",
    "VerificationKey",
    "parse_scopes",
]

DEFAULT_AUDIENCE = "urn:fhir-facade"
DEFAULT_LEEWAY_S = 30.0
DEFAULT_MAX_TOKEN_LIFETIME_S = 3600
MAX_TOKEN_LIFETIME_LIMIT_S = 86_400
MAX_TOKEN_CHARS = 16 * 1024

_RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
ASYMMETRIC_ALGORITHMS = _RSA_ALGS | frozenset(_EC_ALGS.values())
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
DEFAULT_ALGORITHMS = ("RS256", "ES256")

_TOKEN_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
_SCOPE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]{0,63})\.([a-z*]+)$")
_V2_PERMISSIONS = re.compile(r"^c?r?u?d?s?$")

SECURITY_SERVICE_SYSTEM = "http://terminology.hl7.org/CodeSystem/restful-security-service"
OAUTH_URIS_EXTENSION = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


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


@dataclass(frozen=True, slots=True)
class ClaimNames:
    """The token claims the facade reads beyond the registered ones; renamable per issuer."""

    audience: str = "client_audience"
    hsa_id: str = "hsa_id"
    care_unit: str = "care_unit_hsa_id"
    care_provider: str = "care_provider_hsa_id"
    pnr: str = "patient_pnr"
    launch_patient: str = "patient"


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One key of a trusted issuer, with the algorithms it may verify (key type ∩ issuer's list)."""

    key: Any = field(repr=False)  # a cryptography public key, or an HMAC secret (demo issuer only)
    algorithms: frozenset[str]
    kid: str | None = None


@dataclass(frozen=True, slots=True)
class TrustedIssuer:
    issuer: str
    keys: tuple[VerificationKey, ...]
    claims: ClaimNames = ClaimNames()
    token_endpoint: str | None = None
    authorization_endpoint: str | None = None
    grant_types: tuple[str, ...] = ()

    @property
    def algorithms(self) -> frozenset[str]:
        return frozenset().union(*(k.algorithms for k in self.keys))


_V1_PERMISSIONS: dict[str, tuple[Permission, ...]] = {
    "read": ("r", "s"),
    "write": ("c", "u", "d"),
    "*": ("c", "r", "u", "d", "s"),
}


def parse_scopes(scope: str) -> frozenset[Scope]:
    """What the SMART scopes in a space-separated ``scope`` string grant, one ``Scope`` per
    (context, type or "*", permission). v2 ``.cruds`` letters each grant their permission; v1
    ``.read`` grants r and s, ``.write`` c, u and d, ``.*`` all five. Anything else grants nothing."""
    granted: set[Scope] = set()
    for item in scope.split():
        m = _SCOPE.match(item)
        if not m:
            continue  # openid, fhirUser, launch/…, v2 scopes with a ?query restriction, garbage
        context, resource_type, perms = m.groups()
        if context == "system":
            continue  # backend-service scopes: no audience here is a system client
        letters: tuple[Permission, ...]
        if perms in _V1_PERMISSIONS:
            letters = _V1_PERMISSIONS[perms]
        elif _V2_PERMISSIONS.match(perms):
            letters = tuple(perms)  # type: ignore[arg-type]  # (the pattern admits only c r u d s)
        else:
            continue
        granted.update(Scope(context, resource_type, p) for p in letters)
    return frozenset(granted)


def _key_algorithms(key: Any, allowed: Iterable[str]) -> frozenset[str]:
    allowed = frozenset(allowed)
    if isinstance(key, rsa.RSAPublicKey):
        return _RSA_ALGS & allowed
    if isinstance(key, ec.EllipticCurvePublicKey):
        alg = _EC_ALGS.get(key.curve.name)
        return frozenset({alg}) & allowed if alg else frozenset()
    if isinstance(key, bytes):
        return HMAC_ALGORITHMS & allowed
    return frozenset()


class _Compiler:
    def __init__(self, config_dir: Path) -> None:
        self.config_dir = config_dir

    @staticmethod
    def fail(key: str, message: str) -> ConfigError:
        return ConfigError(f"{key}: {message}")

    def mapping(self, data: Any, key: str, allowed: set[str]) -> dict[str, Any]:
        if data is None:
            return {}
        if not isinstance(data, Mapping):
            raise self.fail(key, "expects a mapping")
        unknown = set(data) - allowed
        if unknown:
            raise self.fail(key, f"unknown key(s) {sorted(map(str, unknown))}; allowed: {sorted(allowed)}")
        return dict(data)

    def url(self, data: Mapping[str, Any], key: str, where: str) -> str | None:
        v = data.get(key)
        if v is None:
            return None
        if not isinstance(v, str) or not re.match(r"^https?://\S+$", v):
            raise self.fail(f"{where}.{key}", "expects an http(s) URL")
        return v

    def read(self, key: str, name: Any) -> bytes:
        if not isinstance(name, str) or not name:
            raise self.fail(key, "expects a file path")
        path = self.config_dir / name
        try:
            return path.read_bytes()
        except OSError as exc:
            raise self.fail(key, f"cannot read {name}: {exc.strerror or exc}") from None

    def issuer(self, data: Any, where: str) -> TrustedIssuer:
        d = self.mapping(
            data,
            where,
            {
                "issuer",
                "jwks_file",
                "pem_file",
                "algorithms",
                "claims",
                "token_endpoint",
                "authorization_endpoint",
                "grant_types",
            },
        )
        iss = d.get("issuer")
        if not isinstance(iss, str) or not iss.strip() or iss != iss.strip():
            raise self.fail(f"{where}.issuer", "expects the exact `iss` value of the issuer")

        algs = d.get("algorithms", list(DEFAULT_ALGORITHMS))
        if not isinstance(algs, list) or not algs or not all(isinstance(a, str) for a in algs):
            raise self.fail(f"{where}.algorithms", "expects a non-empty list of JWS algorithms")
        for a in algs:
            if a in HMAC_ALGORITHMS or a.lower() == "none":
                raise self.fail(f"{where}.algorithms", f"{a} is not accepted from a configured issuer")
            if a not in ASYMMETRIC_ALGORITHMS:
                raise self.fail(
                    f"{where}.algorithms", f"unknown algorithm {a}; known: {sorted(ASYMMETRIC_ALGORITHMS)}"
                )

        if ("jwks_file" in d) == ("pem_file" in d):
            raise self.fail(where, "expects exactly one of jwks_file and pem_file")
        if "jwks_file" in d:
            keys = self.jwks(f"{where}.jwks_file", d["jwks_file"], algs)
        else:
            keys = self.pem(f"{where}.pem_file", d["pem_file"], algs)

        c = self.mapping(d.get("claims"), f"{where}.claims", set(ClaimNames.__dataclass_fields__))
        for k, v in c.items():
            if not isinstance(v, str) or not v:
                raise self.fail(f"{where}.claims.{k}", "expects a claim name")
        grant_types = d.get("grant_types", [])
        if not isinstance(grant_types, list) or not all(isinstance(g, str) and g for g in grant_types):
            raise self.fail(f"{where}.grant_types", "expects a list of OAuth grant types")
        return TrustedIssuer(
            issuer=iss,
            keys=keys,
            claims=ClaimNames(**c),
            token_endpoint=self.url(d, "token_endpoint", where),
            authorization_endpoint=self.url(d, "authorization_endpoint", where),
            grant_types=tuple(grant_types),
        )

    def jwks(self, key: str, name: Any, algs: Sequence[str]) -> tuple[VerificationKey, ...]:
        raw = self.read(key, name)
        try:
            doc = json.loads(raw)
        except ValueError:
            raise self.fail(key, f"{name} is not JSON") from None
        members = doc.get("keys") if isinstance(doc, dict) else None
        if not isinstance(members, list) or not members:
            raise self.fail(key, f"{name} is not a JWK Set (expects {{'keys': [...]}})")
        keys = []
        for i, jwk in enumerate(members):
            where = f"{key} ({name}) keys[{i}]"
            if not isinstance(jwk, dict):
                raise self.fail(where, "expects a JWK object")
            if jwk.get("use", "sig") != "sig" or jwk.get("kty") == "oct":
                continue  # encryption keys and shared secrets are never used to verify tokens
            if "d" in jwk:
                raise self.fail(where, "is a private key; the facade needs only public keys")
            try:
                public = jwt.PyJWK(jwk).key
            except jwt.PyJWTError as exc:
                raise self.fail(where, f"not a usable key: {exc}") from None
            allowed = set(algs)
            if isinstance(jwk.get("alg"), str):
                allowed &= {jwk["alg"]}
            self.check_strength(where, public)
            usable = _key_algorithms(public, allowed)
            if usable:
                kid = jwk.get("kid")
                keys.append(VerificationKey(public, usable, kid if isinstance(kid, str) else None))
        if not keys:
            raise self.fail(key, f"{name} holds no signing key for the algorithms {list(algs)}")
        return tuple(keys)

    def pem(self, key: str, name: Any, algs: Sequence[str]) -> tuple[VerificationKey, ...]:
        raw = self.read(key, name)
        if b"PRIVATE KEY" in raw:
            raise self.fail(key, f"{name} holds a private key; the facade needs only the public key")
        public: Any
        try:
            if b"BEGIN CERTIFICATE" in raw:
                public = x509.load_pem_x509_certificate(raw).public_key()
            else:
                public = load_pem_public_key(raw)
        except ValueError:
            raise self.fail(key, f"{name} is not a PEM public key or certificate") from None
        self.check_strength(key, public)
        usable = _key_algorithms(public, algs)
        if not usable:
            raise self.fail(key, f"the key in {name} cannot verify any of the algorithms {list(algs)}")
        return (VerificationKey(public, usable),)

    def check_strength(self, key: str, public: Any) -> None:
        if isinstance(public, rsa.RSAPublicKey) and public.key_size < 2048:
            raise self.fail(key, f"RSA key of {public.key_size} bits; at least 2048 are required")


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
        c = _Compiler(Path(config_dir))
        doc = c.mapping(auth, "auth", {"audience", "leeway_s", "issuers", "max_token_lifetime_s"})
        audience = doc.get("audience", DEFAULT_AUDIENCE)
        if not isinstance(audience, str) or not audience.strip():
            raise c.fail("auth.audience", "expects the `aud` value tokens for this facade carry")
        leeway = doc.get("leeway_s", DEFAULT_LEEWAY_S)
        if isinstance(leeway, bool) or not isinstance(leeway, int | float) or not 0 <= leeway <= 300:
            raise c.fail("auth.leeway_s", "expects a number of seconds between 0 and 300")
        lifetime = doc.get("max_token_lifetime_s", DEFAULT_MAX_TOKEN_LIFETIME_S)
        if (
            isinstance(lifetime, bool)
            or not isinstance(lifetime, int | float)
            or not 60 <= lifetime <= MAX_TOKEN_LIFETIME_LIMIT_S
        ):
            raise c.fail(
                "auth.max_token_lifetime_s",
                f"expects a number of seconds between 60 and {MAX_TOKEN_LIFETIME_LIMIT_S}",
            )
        issuers_doc = doc.get("issuers", []) or []
        if not isinstance(issuers_doc, list):
            raise c.fail("auth.issuers", "expects a list of issuers")
        issuers: dict[str, TrustedIssuer] = {}
        for i, entry in enumerate(issuers_doc):
            issuer = c.issuer(entry, f"auth.issuers[{i}]")
            if issuer.issuer in issuers:
                raise c.fail(f"auth.issuers[{i}].issuer", "names an issuer already listed")
            issuers[issuer.issuer] = issuer
        if extra_issuer is not None:
            if extra_issuer.issuer in issuers:
                raise c.fail("auth.issuers", "a configured issuer has the demo issuer's name")
            issuers[extra_issuer.issuer] = extra_issuer
        self.audience: str = audience
        self.leeway_s = float(leeway)
        self.max_token_lifetime_s = float(lifetime)
        self._issuers = issuers
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

        kid = header.get("kid")
        candidates = [k for k in issuer.keys if alg in k.algorithms]
        if kid is not None:
            by_kid = [k for k in candidates if k.kid == kid]
            candidates = by_kid or [k for k in candidates if k.kid is None]
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
            launch_pnr=launch,
        )

    # -- discovery -------------------------------------------------------------------------

    def _endpoints(self) -> TrustedIssuer | None:
        return next((i for i in self._issuers.values() if i.token_endpoint), None)

    def smart_configuration(self, base_url: str, resource_types: Iterable[str] = ()) -> dict[str, Any]:
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
        ep = self._endpoints()
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
        doc["trusted_issuers"] = sorted(self._issuers)
        return doc

    def capability_security(self) -> dict[str, Any]:
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
                f"{self.audience}, living at most {self.max_token_lifetime_s:.0f} s (exp - iat). "
                "SMART scopes are enforced per interaction: v2 `r` for a read by id, `s` for a "
                "search or $everything (which returns only the types granted `s`), `c`/`u` for "
                "Consent create/update; v1 `.read` grants r and s, `.write` c and u. `user/` scopes "
                "cover any patient; `patient/` scopes only the token's launch patient (its `patient` "
                "claim, required for them). Scopes with a `?` restriction grant nothing. The client "
                f"audience ({', '.join(self.audiences.names)}) decides what is shown. See "
                "/.well-known/smart-configuration."
            ),
        }
        ep = self._endpoints()
        if ep is not None:
            uris = [{"url": "token", "valueUri": ep.token_endpoint}]
            if ep.authorization_endpoint:
                uris.append({"url": "authorize", "valueUri": ep.authorization_endpoint})
            security["extension"] = [{"url": OAUTH_URIS_EXTENSION, "extension": uris}]
        return security


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
