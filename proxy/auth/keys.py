"""Verification keys: the public keys of a trusted issuer (JWK Sets, PEM keys and certificates),
the algorithms each may verify, and the choice of keys for a token by its ``kid``.

Only asymmetric algorithms are accepted from configured issuers (``proxy.auth.config``); HMAC keys
(bytes) exist only for the dev-only demo issuer.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from proxy.settings import ConfigError

_RSA_ALGS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGS = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
ASYMMETRIC_ALGORITHMS = _RSA_ALGS | frozenset(_EC_ALGS.values())
HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
DEFAULT_ALGORITHMS = ("RS256", "ES256")


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One key of a trusted issuer, with the algorithms it may verify (key type ∩ issuer's list)."""

    key: Any = field(repr=False)  # a cryptography public key, or an HMAC secret (demo issuer only)
    algorithms: frozenset[str]
    kid: str | None = None


def candidate_keys(keys: Iterable[VerificationKey], alg: str, kid: Any) -> list[VerificationKey]:
    """The keys that may verify a token signed with ``alg``: those with the token's ``kid``, else
    (or without a ``kid``) those without one."""
    candidates = [k for k in keys if alg in k.algorithms]
    if kid is not None:
        by_kid = [k for k in candidates if k.kid == kid]
        candidates = by_kid or [k for k in candidates if k.kid is None]
    return candidates


def _fail(key: str, message: str) -> ConfigError:
    return ConfigError(f"{key}: {message}")


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


def jwks_keys(key: str, name: str, raw: bytes, algs: Sequence[str]) -> tuple[VerificationKey, ...]:
    """The signing keys of the JWK Set ``raw`` (file ``name``, config key ``key``) for ``algs``."""
    try:
        doc = json.loads(raw)
    except ValueError:
        raise _fail(key, f"{name} is not JSON") from None
    members = doc.get("keys") if isinstance(doc, dict) else None
    if not isinstance(members, list) or not members:
        raise _fail(key, f"{name} is not a JWK Set (expects {{'keys': [...]}})")
    keys = []
    for i, jwk in enumerate(members):
        where = f"{key} ({name}) keys[{i}]"
        if not isinstance(jwk, dict):
            raise _fail(where, "expects a JWK object")
        if jwk.get("use", "sig") != "sig" or jwk.get("kty") == "oct":
            continue  # encryption keys and shared secrets are never used to verify tokens
        if "d" in jwk:
            raise _fail(where, "is a private key; the facade needs only public keys")
        try:
            public = jwt.PyJWK(jwk).key
        except jwt.PyJWTError as exc:
            raise _fail(where, f"not a usable key: {exc}") from None
        allowed = set(algs)
        if isinstance(jwk.get("alg"), str):
            allowed &= {jwk["alg"]}
        _check_strength(where, public)
        usable = _key_algorithms(public, allowed)
        if usable:
            kid = jwk.get("kid")
            keys.append(VerificationKey(public, usable, kid if isinstance(kid, str) else None))
    if not keys:
        raise _fail(key, f"{name} holds no signing key for the algorithms {list(algs)}")
    return tuple(keys)


def pem_keys(key: str, name: str, raw: bytes, algs: Sequence[str]) -> tuple[VerificationKey, ...]:
    """The public key (or certificate's key) in the PEM ``raw`` (file ``name``, config key ``key``)."""
    if b"PRIVATE KEY" in raw:
        raise _fail(key, f"{name} holds a private key; the facade needs only the public key")
    public: Any
    try:
        if b"BEGIN CERTIFICATE" in raw:
            public = x509.load_pem_x509_certificate(raw).public_key()
        else:
            public = load_pem_public_key(raw)
    except ValueError:
        raise _fail(key, f"{name} is not a PEM public key or certificate") from None
    _check_strength(key, public)
    usable = _key_algorithms(public, algs)
    if not usable:
        raise _fail(key, f"the key in {name} cannot verify any of the algorithms {list(algs)}")
    return (VerificationKey(public, usable),)


def _check_strength(key: str, public: Any) -> None:
    if isinstance(public, rsa.RSAPublicKey) and public.key_size < 2048:
        raise _fail(key, f"RSA key of {public.key_size} bits; at least 2048 are required")
