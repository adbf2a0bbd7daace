"""Checking an OpenID provider's ID tokens, for an organisation that trusts it.

The provider is found by discovery (``<issuer>/.well-known/openid-configuration``, cached 5
minutes); its signing keys come from its ``jwks_uri`` through PyJWT's ``PyJWKClient`` (cached; a
token with an unknown ``kid`` refreshes them once, single flight, at most every ``KID_COOLDOWN_S``:
a miss inside the cooldown waits it out and asks once more, so a key rotation costs no failed
sign-in, while an attacker's made-up ``kid`` cannot make the API fetch the keys more than once a
second). An ID token must have

- an asymmetric algorithm of ``ALGORITHMS`` in its header (pinned: never ``none`` nor HS256,
  whose "key" would be the public key),
- a signature by one of the provider's published keys,
- ``iss`` the configured issuer, ``aud`` the configured client id, ``exp`` in the future and
  ``iat`` (``LEEWAY_S`` of clock skew allowed), and a ``sub``,
- when it carries a ``nonce``, one this API issued for this organisation in the last
  ``NONCE_LIFETIME_S`` (``issue_nonce``). RFC 8628's device grant has no nonce of its own and
  providers need not echo one (node oidc-provider does not), so a token without a nonce is taken;
  replays are refused instead by exchanging each ID token once (services/federation.py).

Every refusal is Unauthorized with the reason; a provider that does not answer is
DirectoryUnavailable naming the organisation and the issuer.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx2 as httpx
import jwt

from cloudland.errors import DirectoryUnavailable, Unauthorized

log = logging.getLogger(__name__)

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA"]
LEEWAY_S = 30
DISCOVERY_TTL_S = 300
KID_COOLDOWN_S = 1.0
NONCE_AUDIENCE = "cloudland:oidc-nonce"
NONCE_LIFETIME_S = 900

_lock = threading.Lock()
_discovered: dict[str, tuple[float, dict[str, Any]]] = {}
_keys: dict[str, jwt.PyJWKClient] = {}


def _where(organisation: str, issuer: str) -> str:
    return f"organisation {organisation!r}'s OpenID provider {issuer}"


def discover(organisation: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The provider's discovery document (cached); DirectoryUnavailable when it cannot be read."""
    issuer = settings["issuer"]
    with _lock:
        cached = _discovered.get(issuer)
        if cached is not None and time.monotonic() - cached[0] < DISCOVERY_TTL_S:
            return cached[1]
    try:
        reply = httpx.get(f"{issuer}/.well-known/openid-configuration", timeout=float(settings["timeout_s"]))
        reply.raise_for_status()
        document: dict[str, Any] = reply.json()
    except (httpx.HTTPError, ValueError) as exc:
        raise DirectoryUnavailable(f"{_where(organisation, issuer)} did not answer its discovery document "
                                   f"({type(exc).__name__}: {exc}); local accounts can still sign in") from exc
    if document.get("issuer", "").rstrip("/") != issuer or not document.get("jwks_uri"):
        raise DirectoryUnavailable(f"{_where(organisation, issuer)}: its discovery document names issuer "
                                   f"{document.get('issuer')!r} and jwks_uri {document.get('jwks_uri')!r}")
    with _lock:
        _discovered[issuer] = (time.monotonic(), document)
    return document


def _key_client(jwks_uri: str, timeout_s: float) -> jwt.PyJWKClient:
    with _lock:
        client = _keys.get(jwks_uri)
        if client is None:
            client = _keys[jwks_uri] = jwt.PyJWKClient(jwks_uri, cache_jwk_set=True, lifespan=DISCOVERY_TTL_S,
                                                      timeout=timeout_s, cooldown_duration=KID_COOLDOWN_S)
        return client


def _signing_key(keys: jwt.PyJWKClient, id_token: str) -> jwt.PyJWK:
    """The published key of the token's ``kid``; a miss while the keys were fetched within the
    cooldown (a rotation just after a fetch) waits the cooldown out and asks once more."""
    try:
        return keys.get_signing_key_from_jwt(id_token)
    except jwt.PyJWKClientConnectionError:
        raise
    except jwt.PyJWKClientError:
        time.sleep(KID_COOLDOWN_S)
        return keys.get_signing_key_from_jwt(id_token)


def issue_nonce(key: bytes, org_id: int) -> str:
    """A nonce for one sign-in with organisation ``org_id``'s provider: signed by the API's key,
    so checking it needs no state."""
    now = datetime.now(UTC)
    payload = {"aud": NONCE_AUDIENCE, "org": org_id, "jti": secrets.token_hex(8), "iat": int(now.timestamp()),
               "exp": int((now + timedelta(seconds=NONCE_LIFETIME_S)).timestamp())}
    return jwt.encode(payload, key, algorithm="HS256")


def _check_nonce(key: bytes, org_id: int, nonce: Any) -> None:
    try:
        payload = jwt.decode(str(nonce), key, algorithms=["HS256"], audience=NONCE_AUDIENCE,
                             options={"require": ["org", "exp"]})
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("ID token's nonce expired: start the sign-in again") from exc
    except jwt.InvalidTokenError as exc:
        raise Unauthorized("ID token's nonce was not issued by this API") from exc
    if payload["org"] != org_id:
        raise Unauthorized("ID token's nonce was issued for another organisation's sign-in")


def verify(key: bytes, organisation: str, org_id: int, settings: dict[str, Any], id_token: str) -> dict[str, Any]:
    """The claims of a valid ID token of the organisation's provider (the module's docstring);
    Unauthorized, saying why, otherwise."""
    issuer, client_id = settings["issuer"], settings["client_id"]
    try:
        header = jwt.get_unverified_header(id_token)
    except jwt.InvalidTokenError as exc:
        raise Unauthorized("ID token is not a JWT") from exc
    algorithm = header.get("alg")
    if algorithm not in ALGORITHMS:
        raise Unauthorized(f"ID token's algorithm {algorithm!r} is not accepted (only {', '.join(ALGORITHMS)})")
    document = discover(organisation, settings)
    keys = _key_client(document["jwks_uri"], float(settings["timeout_s"]))
    try:
        signing_key = _signing_key(keys, id_token)
    except jwt.PyJWKClientConnectionError as exc:
        raise DirectoryUnavailable(f"{_where(organisation, issuer)} did not answer for its keys "
                                   f"({document['jwks_uri']}): {exc}") from exc
    except (jwt.PyJWKClientError, jwt.InvalidTokenError) as exc:
        raise Unauthorized(f"ID token is signed by a key {_where(organisation, issuer)} does not publish "
                           f"(kid {header.get('kid')!r})") from exc
    try:
        claims: dict[str, Any] = jwt.decode(
            id_token, signing_key.key, algorithms=[algorithm], audience=client_id, issuer=issuer, leeway=LEEWAY_S,
            options={"require": ["iss", "aud", "exp", "iat", "sub"]})
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("ID token expired: sign in with the provider again") from exc
    except jwt.InvalidAudienceError as exc:
        raise Unauthorized(f"ID token is for another audience, not this organisation's client {client_id!r}") from exc
    except jwt.InvalidIssuerError as exc:
        raise Unauthorized(f"ID token was issued by another issuer, not {issuer}") from exc
    except jwt.InvalidSignatureError as exc:
        raise Unauthorized(f"ID token's signature does not verify with {_where(organisation, issuer)}'s key") from exc
    except jwt.InvalidTokenError as exc:
        raise Unauthorized(f"invalid ID token: {exc}") from exc
    if "nonce" in claims:
        _check_nonce(key, org_id, claims["nonce"])
    return claims
