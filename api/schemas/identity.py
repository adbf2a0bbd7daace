"""Sign-in, account, organisation, user and membership bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

from cloudland_api.models import Role
from cloudland_api.schemas.common import NO_NUL, Name, Page, _Request

# A new user's name: letters, digits and . _ @ -, starting with a letter or digit (an email will do).
Username = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._@-]*$")]
Password = Annotated[str, Field(min_length=8, max_length=1024, description="At least 8 characters")]
# A Literal, not the Role enum: strict models take an enum member only from Python, not from JSON text.
RoleName = Annotated[Literal["admin", "member", "reader"], Field(description="admin, member or reader")]


class LoginRequest(_Request):
    """Credentials for ``POST /api/v1/login``."""

    username: Annotated[str, Field(min_length=1, max_length=64, pattern=NO_NUL)]
    password: Annotated[str, Field(min_length=1, max_length=1024)]
    organisation: Name | None = Field(
        default=None, description="Organisation to act in; defaults to the user's first membership."
    )
    lifetime_s: Annotated[int | None, Field(ge=1, le=86400, description=(
        "Seconds the token lives; default CLOUDLAND_API_TOKEN_LIFETIME_S, at most "
        "CLOUDLAND_API_TOKEN_MAX_LIFETIME_S"))] = None


class TokenPublic(BaseModel):
    """A bearer token and when it stops working."""

    token: str
    expires_at: datetime


class PasswordChange(_Request):
    """``POST /api/v1/me/password``: every token of the user ends; the answer is a new one."""

    current_password: Annotated[str, Field(min_length=1, max_length=1024)]
    new_password: Password


class AccountPublic(BaseModel):
    """Who the token speaks for: ``GET /api/v1/me``."""

    user_id: int
    username: str
    org_id: int
    organisation: str
    role: Role
    operator: bool
    expires_at: datetime | None
    project_id: int | None = None      # the project this request acted in (X-CloudLand-Project)
    project: str = ""
    project_role: Role | None = None   # the role there (None: none)


class NewAdmin(_Request):
    """A new organisation's first admin: a new user (with ``password``) or an existing one (without)."""

    username: Username
    password: Password | None = None


class OrganisationCreate(_Request):
    """``POST /api/v1/organisations`` (operators)."""

    name: Name
    admin: NewAdmin


class OrganisationPublic(BaseModel):
    """An organisation as operators see it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    operator: bool
    created_at: datetime


class OrganisationList(Page):
    """One page of organisations, by id."""

    items: list[OrganisationPublic]


class UserCreate(_Request):
    """``POST /api/v1/users``: a new user, a member of the caller's organisation with ``role``."""

    username: Username
    password: Password
    role: RoleName = "member"


class MembershipCreate(_Request):
    """``POST /api/v1/memberships``: an existing user joins the caller's organisation."""

    username: Annotated[str, Field(min_length=1, max_length=64)]
    role: RoleName = "member"


class MembershipUpdate(_Request):
    """``PATCH /api/v1/memberships/{user_id}``: the member's new role."""

    role: RoleName


class UserPublic(BaseModel):
    """A user as the organisation's members see them: their role in this organisation."""

    id: int
    username: str
    role: Role
    created_at: datetime


class UserList(Page):
    """One page of the organisation's users, by id."""

    items: list[UserPublic]


class AuditEventPublic(BaseModel):
    """One row of the audit trail: who, in which organisation and project, what (and on which
    resource), how it ended, from where, when."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    at: datetime
    org_id: int | None
    user_id: int | None
    username: str | None
    project_id: int | None = Field(description="The project the request acted in")
    resource_type: str | None = Field(description="Its policy entry's resource type, e.g. instance")
    resource_id: str | None = Field(description="The id its path named (none for a create)")
    method: str
    path: str
    status: int
    address: str


class AuditEventList(Page):
    """One page of the audit trail, newest first."""

    items: list[AuditEventPublic]


class AppCredentialCreate(_Request):
    """``POST /api/v1/app-credentials``: a credential for scripts, bound to the project the request acts in."""

    name: Name
    role: RoleName | None = Field(default=None, description="At most yours; default yours")
    lifetime_s: Annotated[int, Field(ge=60, le=366 * 86400, description="Seconds until it expires")] = 90 * 86400


class AppCredentialPublic(BaseModel):
    """An application credential as listed: never its secret."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    role: Role
    project_id: int = Field(description="The one project it acts in")
    created_at: datetime
    expires_at: datetime


class AppCredentialSecret(AppCredentialPublic):
    """A new credential and its secret, the bearer token scripts send: shown this once."""

    secret: str


class AppCredentialList(Page):
    """One page of the caller's credentials, by id."""

    items: list[AppCredentialPublic]
