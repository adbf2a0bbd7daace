"""Projects inside organisations (issue 14): who holds tenant resources, the roles users hold on
one project, and the quota limits of a project and of its organisation.

A tenant table opts into project scoping with one line, the mixin ``ProjectOwned``::

    class FloatingIp(ProjectOwned, Base):

which gives it ``project_id`` (a foreign key to ``projects``, indexed). ``services/crud.py``
then scopes every read of it to the caller's project, and a row inserted without a
``project_id`` lands in its organisation's default project (``fill_default_project`` below),
so a service written for organisation scoping keeps working unchanged.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Enum, ForeignKey, Integer, String, UniqueConstraint, event, false, insert, select
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Mapped, Mapper, mapped_column

from cloudland_api.models.base import Base, UTCDateTime, utcnow
from cloudland_api.models.identity import Organisation, Role

DEFAULT_PROJECT = "default"  # every organisation's first project, made with it


class Project(Base):
    """A project of an organisation: the unit that owns tenant resources and carries a quota."""

    __tablename__ = "projects"
    __table_args__ = (UniqueConstraint("org_id", "name", name="uq_projects_org_name"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(primary_key=True)
    org_id: Mapped[int] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(64))
    # The organisation's default project: where requests that name none act; never deleted.
    is_default: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ProjectRole(Base):
    """A user's role on one project, beside (and never lower than) their role on its organisation."""

    __tablename__ = "project_roles"

    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True)
    role: Mapped[Role] = mapped_column(Enum(Role, name="role", native_enum=False, length=16))


class ProjectQuota(Base):
    """A project's limit of one quota key (services/quotas.py KEYS); no row: unlimited."""

    __tablename__ = "project_quotas"

    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), primary_key=True)
    resource: Mapped[str] = mapped_column(String(32), primary_key=True)
    hard_limit: Mapped[int] = mapped_column(Integer)


class OrganisationQuota(Base):
    """An organisation's ceiling of one quota key over all its projects; no row: unlimited."""

    __tablename__ = "organisation_quotas"

    org_id: Mapped[int] = mapped_column(ForeignKey("organisations.id", ondelete="CASCADE"), primary_key=True)
    resource: Mapped[str] = mapped_column(String(32), primary_key=True)
    hard_limit: Mapped[int] = mapped_column(Integer)


class ProjectOwned:
    """Mixin of a tenant table whose rows belong to a project (the module's docstring)."""

    project_id: Mapped[int] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)


def default_project_id(connection: Connection, org_id: int) -> int | None:
    """The id of organisation ``org_id``'s default project."""
    return connection.scalar(select(Project.id).where(Project.org_id == org_id, Project.is_default.is_(True)))


@event.listens_for(ProjectOwned, "before_insert", propagate=True)
def fill_default_project(_mapper: Mapper[object], connection: Connection, row: object) -> None:
    """A row inserted without a project goes to its organisation's default project."""
    if getattr(row, "project_id", None) is None and getattr(row, "org_id", None) is not None:
        setattr(row, "project_id", default_project_id(connection, getattr(row, "org_id")))


@event.listens_for(Organisation, "after_insert")
def make_default_project(_mapper: Mapper[object], connection: Connection, org: Organisation) -> None:
    """Every organisation has its default project from the start, however it was made."""
    connection.execute(insert(Project).values(org_id=org.id, name=DEFAULT_PROJECT, is_default=True,
                                              created_at=utcnow()))
