"""Projects, the roles users hold on them, and quotas (issue 14)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from cloudland_api.models import Role
from cloudland_api.schemas.common import Name, Page, _Request
from cloudland_api.schemas.identity import RoleName


class ProjectCreate(_Request):
    """``POST /api/v1/projects``: a project of the caller's organisation."""

    name: Name


class ProjectPublic(BaseModel):
    """A project; ``role`` is the caller's there (None: none)."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    is_default: bool
    created_at: datetime
    role: Role | None = None


class ProjectList(Page):
    """One page of the organisation's projects the caller holds a role on, by id."""

    items: list[ProjectPublic]


class ProjectRoleGrant(_Request):
    """``PUT /api/v1/projects/{id}/members/{user_id}``: the user's role on the project."""

    role: RoleName


class ProjectMemberPublic(BaseModel):
    """A user's own role on a project (their organisation role may be higher)."""

    user_id: int
    username: str
    role: Role


class ProjectMemberList(Page):
    """One page of a project's own members, by user id."""

    items: list[ProjectMemberPublic]


Limit = Annotated[int, Field(ge=0, le=2**31 - 1)]


class QuotaUpdate(_Request):
    """``PUT .../quota``: limits to set (a key set to null is unlimited again); keys not named
    keep theirs."""

    limits: dict[str, Limit | None] = Field(description="Quota key → limit (services/quotas.py KEYS)")


class QuotaLine(BaseModel):
    """One quota key: what is used and the limits that bound it (None: unlimited)."""

    resource: str
    used: int
    limit: int | None
    organisation_used: int
    organisation_limit: int | None


class QuotaPublic(BaseModel):
    """A project's usage and limits, beside its organisation's ceiling."""

    project_id: int
    project: str
    org_id: int
    items: list[QuotaLine]


class OrganisationQuotaPublic(BaseModel):
    """An organisation's ceilings (None: unlimited) and its usage over all its projects."""

    org_id: int
    limits: dict[str, int | None]
    used: dict[str, int]
