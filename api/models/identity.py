"""Who acts: organisations (tenants), users and their memberships; what ends a token before it
expires (a revoked token, a user's token generation) and failed sign-ins (the backoff)."""

from __future__ import annotations

import enum
from datetime import datetime

from sqlalchemy import JSON, Boolean, Enum, ForeignKey, Integer, String, false
from sqlalchemy.orm import Mapped, mapped_column, relationship

from cloudland_api.models.base import Base, UTCDateTime, utcnow


class Role(str, enum.Enum):
    """What a member may do in an organisation, from most to least."""

    admin = "admin"      # everything, including deletes
    member = "member"    # create and read
    reader = "reader"    # read only


class Organisation(Base):
    """A tenant: owns resources; users act in it through a Membership."""

    __tablename__ = "organisations"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # The operator organisation (the first one) manages hypervisors for every tenant.
    operator: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    memberships: Mapped[list[Membership]] = relationship(back_populates="org", cascade="all, delete-orphan")


class User(Base):
    """A person or robot that logs in; only an argon2 hash of the password is kept."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    # A directory's user (LDAP, OpenID Connect) has NO_PASSWORD: their organisation's directory
    # checks who they are (services/directories.py), never a local password.
    password_hash: Mapped[str] = mapped_column(String(255))
    # Where the user signs in: "local" (a password kept here), "ldap" or "oidc" (provisioned at their
    # first sign-in through an organisation's directory; ``external_id`` says which entry).
    source: Mapped[str] = mapped_column(String(8), default="local", server_default="local")
    # "<org id>:<DN>" of an LDAP user, "<org id>:<sub>" of an OpenID Connect one; None for local users.
    external_id: Mapped[str | None] = mapped_column(String(512), unique=True, index=True, nullable=True)
    # Every token carries the generation it was issued under; a password change or a removed
    # membership raises it, which ends every token the user holds (services/identity.py).
    token_generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    memberships: Mapped[list[Membership]] = relationship(back_populates="user", cascade="all, delete-orphan")


class Membership(Base):
    """A user's role in one organisation."""

    __tablename__ = "memberships"

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"), primary_key=True)
    role: Mapped[Role] = mapped_column(Enum(Role, name="role", native_enum=False, length=16))
    # A member only through project roles (models/projects.py ProjectRole): ``role`` then counts
    # for the organisation's own resources (flavors, its users) but for none of its projects.
    projects_only: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    user: Mapped[User] = relationship(back_populates="memberships")
    org: Mapped[Organisation] = relationship(back_populates="memberships")


class RevokedToken(Base):
    """A token ended by its holder's logout before it expired; kept until it would have expired."""

    __tablename__ = "revoked_tokens"

    token_id: Mapped[str] = mapped_column(String(32), primary_key=True)  # the token's ``jti``
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


class LoginFailure(Base):
    """Failed sign-ins of one username from one address, since the last success: what the backoff
    counts. Unknown usernames count too, so a 429 says nothing about which users exist."""

    __tablename__ = "login_failures"

    username: Mapped[str] = mapped_column(String(64), primary_key=True)
    address: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer)
    last_failed_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    blocked_until: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Directory(Base):
    """An organisation's identity directory: an LDAP server or an OpenID provider it trusts
    (services/directories.py). ``settings`` holds everything but the LDAP bind password, which
    lives in the state directory (0600) and never in the database."""

    __tablename__ = "directories"

    org_id: Mapped[int] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(8), primary_key=True)  # "ldap" or "oidc"
    settings: Mapped[dict] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)


class AppCredential(Base):
    """An application credential: a secret a script sends as its bearer token, acting for its
    creator in one project of one organisation with a role no higher than theirs there, until it
    expires or is revoked
    (services/credentials.py). Only a SHA-256 of the secret is kept: it is 256 random bits, so a
    fast hash is as safe as a slow one and costs nothing per request."""

    __tablename__ = "app_credentials"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"))
    # The one project it acts in (migration 0014 bound the older ones to their default project).
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    secret_sha256: Mapped[str] = mapped_column(String(64))
    role: Mapped[Role] = mapped_column(Enum(Role, name="role", native_enum=False, length=16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
