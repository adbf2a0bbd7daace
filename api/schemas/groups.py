"""Groups of an organisation's users and the roles they hold (issue 14)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field

from cloudland_api.models import Role
from cloudland_api.schemas.common import Name, Page, Ref, _Request
from cloudland_api.schemas.identity import RoleName


class GroupCreate(_Request):
    """``POST /api/v1/groups``: a group of the caller's organisation."""

    name: Name
    role: RoleName | None = Field(default=None, description="The group's role on the organisation (none: none)")


class GroupRole(_Request):
    """``PUT /api/v1/groups/{id}/role`` and ``.../projects/{project_id}``: the group's role there."""

    role: RoleName


class GroupMemberPublic(BaseModel):
    """A user in a group."""

    user_id: int
    username: str


class GroupProjectRolePublic(BaseModel):
    """A group's role on one project."""

    project_id: int
    project: str
    role: Role


class GroupPublic(BaseModel):
    """A group: its role on the organisation (None: none); listed without members, shown with them
    and with its roles on projects."""

    id: int
    name: str
    role: Role | None
    created_at: datetime
    members: list[GroupMemberPublic] | None = None
    projects: list[GroupProjectRolePublic] | None = None


class GroupList(Page):
    """One page of the organisation's groups, by id."""

    items: list[GroupPublic]


class DirectoryGroupCreate(_Request):
    """``POST /api/v1/directory-groups``: map a group of the organisation's directory onto a local group."""

    directory: Literal["ldap", "oidc"] = Field(description="The LDAP directory or the OpenID provider")
    name: Annotated[str, Field(min_length=1, max_length=512, pattern=r"^[^\x00-\x1f]+$", description=(
        "The directory's group: an LDAP group's DN or name (cn), or a value of the ID token's groups claim; "
        "matched without case"))]
    group: Ref = Field(description="The local group (id or name)")


class DirectoryGroupPublic(BaseModel):
    """A directory's group mapped onto a local group."""

    id: int
    directory: str
    name: str
    group_id: int
    group: str
    created_at: datetime


class DirectoryGroupList(Page):
    """One page of the organisation's directory group map, by id."""

    items: list[DirectoryGroupPublic]
