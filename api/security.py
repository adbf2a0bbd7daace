"""Passwords, the token signing key, bearer tokens and the first admin.

Secrets live in ``<state_dir>`` with mode 0600, never in the repository or the logs.
"""

from __future__ import annotations

import logging
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
from argon2 import PasswordHasher, profiles
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cloudland.errors import ConfigError, Unauthorized
from cloudland_api.models import Membership, Organisation, Role, User

log = logging.getLogger(__name__)

SIGNING_KEY_FILE = "api-signing.key"
ADMIN_CREDENTIALS_FILE = "admin-credentials"
ALGORITHM = "HS256"
# argon2id's cost, one of argon2-cffi's named profiles: RFC 9106's second recommendation (t=3,
# 64 MiB, p=4) unless ``CLOUDLAND_PASSWORD_HASH_PROFILE`` names another. The test suite sets
# CHEAPEST (a hash in microseconds instead of half a second: it creates thousands of users).
# A hash records its own parameters, so passwords hashed under any profile keep verifying.
PASSWORD_HASH_PROFILE_ENV = "CLOUDLAND_PASSWORD_HASH_PROFILE"


def _password_hasher() -> PasswordHasher:
    name = os.environ.get(PASSWORD_HASH_PROFILE_ENV) or "RFC_9106_LOW_MEMORY"
    known = {n for n in dir(profiles) if n.isupper()}
    if name not in known:
        raise ConfigError(f"{PASSWORD_HASH_PROFILE_ENV}={name!r} is not an argon2 profile; one of: {sorted(known)}")
    if name == "CHEAPEST":
        log.warning("event=weak_password_hashing profile=CHEAPEST: for tests only, never for real users")
    return PasswordHasher.from_parameters(getattr(profiles, name))


_hasher = _password_hasher()
# Verified against when the user does not exist, so both failures cost the same time
# and response timing does not reveal which usernames exist.
_DUMMY_HASH = _hasher.hash("not-a-password")


def hash_password(password: str) -> str:
    """An argon2id hash of ``password``."""
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether ``password`` matches ``password_hash``; None (no such user) never matches."""
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


def _write_secret(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 from the first byte (O_EXCL: never overwrite a secret)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def load_signing_key(state_dir: Path) -> bytes:
    """The HS256 key in ``<state_dir>/api-signing.key``, generated (32 random bytes) on first start."""
    path = state_dir / SIGNING_KEY_FILE
    try:
        _write_secret(path, secrets.token_bytes(32))
        log.info("event=signing_key_created path=%s", path)
    except FileExistsError:
        pass
    key = path.read_bytes()
    if len(key) < 32:
        raise ConfigError(f"{path} holds {len(key)} bytes; need at least 32 (delete it to regenerate)")
    return key


@dataclass(frozen=True)
class TokenClaims:
    """Who a valid token speaks for, and what can end it before it expires."""

    user_id: int
    org_id: int
    expires_at: datetime
    generation: int = 0    # the user's token generation when it was issued (identity.caller_for)
    token_id: str = ""     # ``jti``: what a logout revokes


def issue_token(key: bytes, user_id: int, org_id: int, lifetime_s: int, now: datetime | None = None,
                generation: int = 0) -> tuple[str, datetime]:
    """A signed token for ``user_id`` acting in ``org_id``, under the user's token ``generation``,
    and when it expires."""
    now = now or datetime.now(UTC)
    expires_at = (now + timedelta(seconds=lifetime_s)).replace(microsecond=0)
    payload = {"sub": str(user_id), "org": org_id, "gen": generation, "jti": secrets.token_hex(16),
               "iat": int(now.timestamp()), "exp": int(expires_at.timestamp())}
    return jwt.encode(payload, key, algorithm=ALGORITHM), expires_at


def decode_token(key: bytes, token: str, max_lifetime_s: int | None = None) -> TokenClaims:
    """The claims of a valid token; Unauthorized if it is malformed, forged or expired, or (with
    ``max_lifetime_s``) was issued for longer than the ceiling allows now: lowering the ceiling
    ends the tokens that outlive it."""
    try:
        # algorithms is pinned: a token may not choose "none" or another algorithm.
        payload = jwt.decode(token, key, algorithms=[ALGORITHM],
                             options={"require": ["sub", "org", "gen", "jti", "iat", "exp"]})
        claims = TokenClaims(int(payload["sub"]), int(payload["org"]), datetime.fromtimestamp(payload["exp"], UTC),
                             int(payload["gen"]), str(payload["jti"]))
        lifetime = int(payload["exp"]) - int(payload["iat"])
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized("token expired; log in again") from exc
    except (jwt.InvalidTokenError, ValueError, TypeError, OverflowError) as exc:
        raise Unauthorized("invalid token") from exc
    if max_lifetime_s is not None and lifetime > max_lifetime_s:
        raise Unauthorized(f"token was issued for {lifetime} s, more than the ceiling of {max_lifetime_s} s; "
                           "log in again")
    return claims


IMAGE_AUDIENCE = "cloudland:image-download"
UPLOAD_AUDIENCE = "cloudland:image-upload"
_WHAT = {IMAGE_AUDIENCE: "image download token", UPLOAD_AUDIENCE: "image upload token"}


def issue_image_token(key: bytes, image_id: int, lifetime_s: int, audience: str = IMAGE_AUDIENCE) -> str:
    """A token that lets its bearer (a hypervisor's agent) download image ``image_id`` and nothing else;
    with ``audience=UPLOAD_AUDIENCE``, upload the bytes of a capture into it and nothing else.

    It carries an audience, so ``decode_token`` refuses it as a user's token (and one kind
    of image token is refused as the other), and no user, so it opens no other door.
    """
    now = datetime.now(UTC)
    payload = {"img": image_id, "aud": audience, "iat": int(now.timestamp()),
               "exp": int((now + timedelta(seconds=lifetime_s)).timestamp())}
    return jwt.encode(payload, key, algorithm=ALGORITHM)


def decode_image_token(key: bytes, token: str, audience: str = IMAGE_AUDIENCE) -> int:
    """The image id a valid image token of ``audience`` names; Unauthorized otherwise (user tokens
    and the other kind of image token included)."""
    what = _WHAT[audience]
    try:
        payload = jwt.decode(token, key, algorithms=[ALGORITHM], audience=audience,
                             options={"require": ["img", "aud", "exp"]})
        return int(payload["img"])
    except jwt.ExpiredSignatureError as exc:
        raise Unauthorized(f"{what} expired") from exc
    except (jwt.InvalidTokenError, ValueError, TypeError) as exc:
        raise Unauthorized(f"invalid {what}") from exc


@dataclass(frozen=True)
class AdminCredentials:
    """The first admin's login, as written to ``<state_dir>/admin-credentials``."""

    username: str
    password: str
    path: Path
    org_id: int = 0  # the operator organisation it made


def bootstrap_admin(session: Session, state_dir: Path) -> AdminCredentials | None:
    """On an empty database, create org and user "admin" and write the credentials once.

    Returns the credentials when it created them, None when users already exist.
    The password is never logged; only the file's path is.
    """
    if session.scalar(select(func.count()).select_from(User)):
        return None
    path = state_dir / ADMIN_CREDENTIALS_FILE
    password = secrets.token_urlsafe(18)
    org = Organisation(name="admin", operator=True)
    user = User(username="admin", password_hash=hash_password(password))
    session.add_all([org, user, Membership(user=user, org=org, role=Role.admin)])
    session.flush()
    # Write before commit: if the file cannot be written, nobody would know the password,
    # so the transaction must not commit either. A stale file from an old database is replaced.
    path.unlink(missing_ok=True)
    _write_secret(path, f"username=admin\npassword={password}\n".encode())
    session.commit()
    log.info("event=admin_bootstrapped user=admin credentials=%s", path)
    return AdminCredentials("admin", password, path, org.id)
