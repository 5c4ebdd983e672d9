"""Authentication: a verified ``Authorization: Bearer <JWT>`` becomes a ``Principal``.

Every FHIR request except ``/fhir/metadata`` and ``/.well-known/smart-configuration`` carries a
JWT from a trusted issuer. The ``Authenticator`` is compiled once at start-up from the ``auth:``
section of ``config/facade.yaml``; a bad key file, an unknown algorithm or a misspelt key fails
there (``ConfigError`` naming the key), never on a request.

One job per module:

- ``keys``: verification keys — JWK Sets and PEM keys/certificates, the algorithms each key may
  verify, the choice of keys for a token by its ``kid``;
- ``config``: the ``auth:`` section compiled (``AuthConfig``, ``TrustedIssuer``, ``ClaimNames``);
- ``scopes``: what a token's SMART scopes grant (``parse_scopes``);
- ``discovery``: the SMART configuration document and the CapabilityStatement's security section;
- ``verify``: the ``Authenticator`` (bearer parsing, signature, time claims by the injected clock,
  the ``Principal``) and ``AuthError`` with its ``WWW-Authenticate``;
- ``demo``: the DEV-ONLY demo issuer and its tokens.

Imports point one way, down these rows; a module imports only from the rows below it, never from
its row (the ``auth`` contract in ``pyproject.toml`` checks it)::

    demo | verify        verify → discovery, config, scopes, keys;  demo → config, keys
    discovery            discovery → config
    config | scopes      config → keys;  scopes → nothing in the package
    keys                 keys → nothing in the package
"""
