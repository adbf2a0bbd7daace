"""Sign-in through an organisation's directory (LDAP, OpenID Connect), and the users it
provisions just in time.

A directory's user is a CloudLand user too (``source`` "ldap" or "oidc", no password kept here),
made at their first sign-in and named ``<login>@<organisation>``, so a directory can never take a
local user's name, nor sign in as the local break-glass admin. Their role in the organisation is
the organisation's role map applied to the groups the directory names, at every sign-in: a
changed group changes the role at the next sign-in (and, since every request re-reads the role,
for the tokens already held); their local groups are the organisation admins' directory group
map applied at the same moment (services/directory_groups.py); a user in no group mapped to
either loses the membership and every token.

``POST /login`` with an ``organisation`` that has an LDAP directory asks the directory, unless the
username is a local user's: local accounts (the break-glass admin) sign in with their password
even while the directory is down. Wrong LDAP passwords count in the same backoff as local ones.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cloudland.errors import Conflict, InvalidRequest, Unauthorized
from cloudland_api.db import for_change
from cloudland_api.models import Directory, Membership, Organisation, RevokedToken, Role, User
from cloudland_api.schemas import OidcStart
from cloudland_api.security import issue_token
from cloudland_api.services import directories, directory_groups, groups, identity, ldapauth, oidcauth
from cloudland_api.services.identity import Caller
from cloudland_api.services.directories import LDAP, bind_password, find

log = logging.getLogger(__name__)

# Matches no argon2 hash: a directory's user never signs in with a local password.
NO_PASSWORD = "!directory"


def is_local(session: Session, username: str) -> bool:
    """Whether ``username`` is a local user (who signs in with a password kept here)."""
    return session.scalar(select(User.id).where(User.username == username, User.source == "local")) is not None


def provision(session: Session, org: Organisation, source: str, external_id: str, login: str,
              role: Role | None, said: list[str]) -> User:
    """The directory user ``external_id`` (made at their first sign-in) with ``role`` in ``org``
    and in the local groups the directory's groups ``said`` map onto (services/directory_groups.py;
    with no role but such groups, for the organisation's projects only); with neither, their
    membership goes, every token they hold ends, and Unauthorized says why."""
    local = directory_groups.mapped(session, org.id, source, said)
    user = session.scalar(for_change(select(User).where(User.external_id == external_id)))
    if user is None and (role is not None or local):
        username = f"{login}@{org.name}"[:64]
        if session.scalar(select(User.id).where(User.username == username)) is not None:
            raise Conflict(f"username {username!r}, which {login!r} of organisation {org.name!r}'s directory "
                           "would get, is taken by another user")
        user = User(username=username, password_hash=NO_PASSWORD, source=source, external_id=external_id)
        session.add(user)
        session.flush()
        log.info("event=directory_user_created org_id=%d user_id=%d source=%s", org.id, user.id, source)
    membership = session.get(Membership, (user.id, org.id)) if user is not None else None
    if role is None and not local:
        if membership is not None and user is not None:
            session.delete(membership)
            groups.leave_organisation(session, user.id, org.id)
            identity.end_tokens(user)
            session.commit()
            log.warning("event=directory_membership_removed org_id=%d user_id=%d", org.id, user.id)
        raise Unauthorized(f"{login!r} is in no group that organisation {org.name!r}'s directory settings map "
                           "to a role or to a local group")
    assert user is not None
    # No role on the organisation but local groups: its projects only, as a group's outsider.
    held, projects_only = (role, False) if role is not None else (Role.reader, True)
    if membership is None:
        session.add(Membership(user=user, org=org, role=held, projects_only=projects_only))
    elif (membership.role, membership.projects_only) != (held, projects_only):
        log.info("event=directory_role_changed org_id=%d user_id=%d old=%s new=%s projects_only=%s", org.id,
                 user.id, membership.role.value, held.value, projects_only)
        membership.role, membership.projects_only = held, projects_only
    session.flush()
    directory_groups.sync(session, user.id, org.id, source, local)
    session.flush()
    return user


@dataclass(frozen=True)
class DirectoryAnswer:
    """What an organisation's directory said about a sign-in, asked before the write turn: the
    organisation, its directory's settings, and who the directory says signed in (an LDAP entry
    or an ID token's claims; None: wrong credentials)."""

    org_id: int
    settings: dict[str, Any]
    found: ldapauth.LdapUser | dict[str, Any] | None


def ask_ldap(session: Session, state_dir: Path, organisation: str | None, username: str, password: str, *,
             address: str) -> DirectoryAnswer | None:
    """The organisation's LDAP directory's answer for (``username``, ``password``), or None when
    this sign-in is not the directory's (no directory, or a local user's name). Reads only, and
    ends its transaction before asking: the caller holds no write turn meanwhile."""
    found = find(session, organisation, LDAP) if organisation else None
    if found is None or is_local(session, username):
        return None
    org, directory = found
    identity.check_not_waiting(session, username, address, datetime.now(UTC))
    settings, org_id, org_name = dict(directory.settings), org.id, org.name
    session.rollback()  # no transaction stays open while the directory is asked
    return DirectoryAnswer(org_id, settings, ldapauth.authenticate(
        org_name, settings, bind_password(state_dir, org_id), username, password))


def ldap_login(session: Session, key: bytes, lifetime_s: int, answer: DirectoryAnswer, username: str, *,
               address: str, backoff: identity.Backoff) -> tuple[str, datetime]:
    """A token for ``username`` if the directory took the password (``ask_ldap``), else a counted
    failure and Unauthorized."""
    if not isinstance(answer.found, ldapauth.LdapUser):
        identity.count_failure(session, backoff, username, address)
        raise Unauthorized("invalid username or password")
    identity.forget_failures(session, username, address)
    org = session.get(Organisation, answer.org_id)
    if org is None:
        raise Unauthorized("the organisation was deleted during the sign-in")
    role = directories.role_for(answer.found.groups, answer.settings["roles"])
    user = provision(session, org, "ldap", f"{org.id}:{answer.found.dn}", username, role, answer.found.groups)
    session.commit()
    log.info("event=login source=ldap user_id=%d org_id=%d address=%s", user.id, org.id, address)
    return issue_token(key, user.id, org.id, lifetime_s, generation=user.token_generation)


def _oidc(session: Session, organisation: str) -> tuple[Organisation, Directory]:
    found = directories.find(session, organisation, directories.OIDC)
    if found is None:
        raise InvalidRequest(f"organisation {organisation!r} has no OpenID provider configured "
                             "(or does not exist)")
    return found


def oidc_start(session: Session, key: bytes, organisation: str) -> OidcStart:
    """What the CLI needs to run the device grant with the organisation's provider."""
    org, directory = _oidc(session, organisation)
    settings = dict(directory.settings)
    session.rollback()
    document = oidcauth.discover(organisation, settings)
    if not document.get("device_authorization_endpoint"):
        raise InvalidRequest(f"organisation {organisation!r}'s OpenID provider {settings['issuer']} offers no "
                             "device authorization endpoint (RFC 8628)")
    return OidcStart(issuer=settings["issuer"], client_id=settings["client_id"], scope=settings["scope"],
                     device_authorization_endpoint=document["device_authorization_endpoint"],
                     token_endpoint=document["token_endpoint"], nonce=oidcauth.issue_nonce(key, org.id))


def _groups(claims: dict[str, Any], claim: str) -> list[str]:
    value = claims.get(claim) or []
    return [value] if isinstance(value, str) else [str(g) for g in value if isinstance(g, (str, int))]


def ask_oidc(session: Session, key: bytes, organisation: str, id_token: str) -> DirectoryAnswer:
    """The claims of a valid ID token of the organisation's provider (Unauthorized otherwise),
    checked before the write turn: keys may have to be fetched from the provider."""
    org, directory = _oidc(session, organisation)
    settings, org_id = dict(directory.settings), org.id
    session.rollback()
    return DirectoryAnswer(org_id, settings, oidcauth.verify(key, organisation, org_id, settings, id_token))


def oidc_login(session: Session, key: bytes, lifetime_s: int, answer: DirectoryAnswer, id_token: str, *,
               address: str) -> tuple[str, datetime, str]:
    """A CloudLand token for the ID token ``ask_oidc`` checked, and the user's username here;
    each ID token is exchanged once (its hash is kept, like a logout's, until it expires)."""
    claims, settings = answer.found, answer.settings
    assert isinstance(claims, dict)
    org = session.get(Organisation, answer.org_id)
    if org is None:
        raise Unauthorized("the organisation was deleted during the sign-in")
    org_id = org.id
    login = str(claims.get(settings["username_claim"]) or claims["sub"])
    said = _groups(claims, settings["groups_claim"])
    user = provision(session, org, "oidc", f"{org_id}:{claims['sub']}", login,
                     directories.role_for(said, settings["roles"]), said)
    used = hashlib.sha256(id_token.encode()).hexdigest()[:32]
    if session.get(RevokedToken, used) is not None:
        session.rollback()
        raise Unauthorized("this ID token was already exchanged: sign in with the provider again")
    session.add(RevokedToken(token_id=used, user_id=user.id,
                             expires_at=datetime.fromtimestamp(int(claims["exp"]), UTC)))
    try:
        session.commit()
    except IntegrityError as exc:  # the same ID token exchanged twice at once
        session.rollback()
        raise Unauthorized("this ID token was already exchanged: sign in with the provider again") from exc
    log.info("event=login source=oidc user_id=%d org_id=%d address=%s", user.id, org_id, address)
    return (*issue_token(key, user.id, org_id, lifetime_s, generation=user.token_generation), user.username)


def is_provider_token(token: str) -> bool:
    """Whether a bearer token is signed asymmetrically (an OpenID provider's), not by this API (HS256)."""
    try:
        return jwt.get_unverified_header(token).get("alg") not in (None, "HS256", "none")
    except jwt.InvalidTokenError:
        return False


def authenticate_provider_token(session: Session, key: bytes, token: str) -> Caller:
    """The Caller an organisation's OpenID provider's ID token speaks for, used as a bearer token
    directly (as kubectl does): the organisation is the one whose provider issued it for its client;
    the role comes from the token's groups at every request; the user must have signed in once
    (``/login/oidc`` provisions them). Reads only."""
    try:
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError as exc:
        raise Unauthorized("invalid token") from exc
    audiences = unverified.get("aud")
    audiences = [audiences] if isinstance(audiences, str) else list(audiences or [])
    trusting = [(org, directory) for org, directory in session.execute(
        select(Organisation, Directory).join(Directory, Directory.org_id == Organisation.id)
        .where(Directory.kind == directories.OIDC)).all()
        if directory.settings["issuer"] == str(unverified.get("iss", "")).rstrip("/")
        and directory.settings["client_id"] in audiences]
    if not trusting:
        raise Unauthorized("no organisation trusts this token's issuer and audience")
    if len(trusting) > 1:
        raise Unauthorized("several organisations trust this token's issuer and audience: exchange it at "
                           "/api/v1/login/oidc for one of them")
    org, directory = trusting[0]
    settings = dict(directory.settings)
    claims = oidcauth.verify(key, org.name, org.id, settings, token)
    said = _groups(claims, settings["groups_claim"])
    role = directories.role_for(said, settings["roles"])
    if role is None:
        # Its groups' local groups (as of the last sign-in, which set them) give it its projects.
        if not directory_groups.mapped(session, org.id, directories.OIDC, said):
            raise Unauthorized(f"the token's groups map to no role or local group in organisation {org.name!r}")
        role = Role.reader
    user = session.scalar(select(User).join(Membership, (Membership.user_id == User.id) & (Membership.org_id == org.id))
                          .where(User.external_id == f"{org.id}:{claims['sub']}"))
    if user is None:
        raise Unauthorized(f"not a member of organisation {org.name!r} yet: sign in once with "
                           f"`cloudland login --oidc --organisation {org.name}`")
    return Caller(user.id, user.username, org.id, role, org.operator, org.name, "",
                  datetime.fromtimestamp(int(claims["exp"]), UTC))
