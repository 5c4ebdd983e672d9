"""The ``auth:`` section of ``config/facade.yaml``, compiled once at start-up: the facade's
audience, the leeway and token lifetime, and the trusted issuers (``TrustedIssuer``) with their keys
and claim names. A bad key file, an unknown algorithm or a misspelt key fails here (``ConfigError``
naming the key), never on a request.

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
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from proxy.auth.keys import (
    ASYMMETRIC_ALGORITHMS,
    DEFAULT_ALGORITHMS,
    HMAC_ALGORITHMS,
    VerificationKey,
    jwks_keys,
    pem_keys,
)
from proxy.settings import ConfigError

DEFAULT_AUDIENCE = "urn:fhir-facade"
DEFAULT_LEEWAY_S = 30.0
DEFAULT_MAX_TOKEN_LIFETIME_S = 3600
MAX_TOKEN_LIFETIME_LIMIT_S = 86_400


@dataclass(frozen=True, slots=True)
class ClaimNames:
    """The token claims the facade reads beyond the registered ones; renamable per issuer."""

    audience: str = "client_audience"
    hsa_id: str = "hsa_id"
    care_unit: str = "care_unit_hsa_id"
    care_provider: str = "care_provider_hsa_id"
    pnr: str = "patient_pnr"
    launch_patient: str = "patient"
    user_name: str = "name"  # optional (OIDC's): the user's name, stamped on what they write


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


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """The compiled ``auth:`` section (with the demo issuer when one was passed in)."""

    audience: str
    leeway_s: float
    max_token_lifetime_s: float
    issuers: Mapping[str, TrustedIssuer]  # by their exact `iss`, in configuration order


def read_auth_config(
    auth: Mapping[str, Any] | None, config_dir: Path, *, extra_issuer: TrustedIssuer | None = None
) -> AuthConfig:
    """The ``auth:`` section compiled; ``ConfigError`` naming the key for anything wrong in it."""
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
    return AuthConfig(audience, float(leeway), float(lifetime), issuers)


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
            key = f"{where}.jwks_file"
            keys = jwks_keys(key, d["jwks_file"], self.read(key, d["jwks_file"]), algs)
        else:
            key = f"{where}.pem_file"
            keys = pem_keys(key, d["pem_file"], self.read(key, d["pem_file"]), algs)

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
