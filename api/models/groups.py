"""Groups of users inside an organisation (issue 14): a group holds users and roles, on its
organisation (all its projects) and on single projects; a member of a group holds what the group
holds (services/groups.py). Changes to these tables end cached callers (api/tokencache.py)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Enum, ForeignKey, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from cloudland_api.models.base import Base, UTCDateTime, utcnow
from cloudland_api.models.identity import Role


class Group(Base):
    """A named set of an organisation's users; ``role``: the group's role on the organisation
    (None: none, only its project roles)."""

    __tablename__ = "groups"
    __table_args__ = (UniqueConstraint("org_id", "name", name="uq_groups_org_name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    role: Mapped[Role | None] = mapped_column(Enum(Role, name="role", native_enum=False, length=16), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class GroupMember(Base):
    """A user in a group."""

    __tablename__ = "group_members"

    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True)
    # The directory (ldap, oidc) whose sign-in put the user here, which takes them out again when
    # it stops saying so (services/directory_groups.py); None: an admin's doing, which no sign-in undoes.
    directory: Mapped[str | None] = mapped_column(String(8), nullable=True)


class GroupProjectRole(Base):
    """A group's role on one project of its organisation."""

    __tablename__ = "group_project_roles"

    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True)
    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True,
                                            index=True)
    role: Mapped[Role] = mapped_column(Enum(Role, name="role", native_enum=False, length=16))


class DirectoryGroup(Base):
    """A group of an organisation's directory (``directory`` ldap: an LDAP group's DN or name;
    oidc: a value of the ID token's groups claim; matched without case) mapped onto a local group:
    at each sign-in through that directory the user is in the local group exactly when the
    directory says they are in its group (services/directory_groups.py)."""

    __tablename__ = "directory_groups"
    __table_args__ = (UniqueConstraint("org_id", "directory", "name", "group_id", name="uq_directory_groups"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"), index=True)
    directory: Mapped[str] = mapped_column(String(8))
    name: Mapped[str] = mapped_column(String(512))
    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
