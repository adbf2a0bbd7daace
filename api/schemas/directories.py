"""An organisation's directory (LDAP, OpenID Connect): settings operators write, what anyone
reads back (never the bind password), and the OpenID Connect sign-in's two bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field, field_validator

from cloudland_api.schemas.common import NO_NUL, Name, _Request
from cloudland_api.schemas.identity import RoleName

Text = Annotated[str, Field(min_length=1, max_length=512, pattern=NO_NUL)]
Url = Annotated[str, Field(min_length=8, max_length=512, pattern=r"^[a-z]+://[^\s\x00]+$")]
# Which groups give which role: the group's name (its cn, or a claim's value) or its whole DN,
# compared without regard to case; a user in several gets the highest of their roles.
RoleMap = Annotated[dict[Text, RoleName], Field(min_length=1, max_length=256, description=(
    "Group (cn or DN for LDAP, a value of the groups claim for OpenID Connect) -> admin, member or reader"))]


class LdapSettings(_Request):
    """``PUT /api/v1/organisations/{org_id}/ldap``: search-then-bind against the organisation's
    LDAP server. ``bind_password`` is kept in the API's state directory (0600), never in the
    database, never logged, never read back."""

    url: Annotated[Url, Field(description="ldap://host:port or ldaps://host:port")]
    bind_dn: Annotated[Text, Field(description="The service account CloudLand searches as")]
    bind_password: Annotated[str, Field(min_length=1, max_length=1024)]
    user_base: Text
    user_filter: Annotated[Text, Field(description="{username} is replaced by the escaped login name")] = \
        "(uid={username})"
    group_base: Text
    group_filter: Annotated[Text, Field(description="{dn} (the user's DN) and {username} are replaced, escaped")] = \
        "(member={dn})"
    roles: RoleMap
    start_tls: bool = False
    ca_cert: Annotated[str | None, Field(max_length=65536, pattern=r"^-----BEGIN CERTIFICATE-----[^\x00]*$", description=(
        "PEM of the CA that signed the server's certificate (ldaps:// or start_tls); default: the system's"))] = None
    timeout_s: Annotated[float, Field(ge=0.1, le=30)] = 5.0

    @field_validator("url")
    @classmethod
    def _ldap_url(cls, url: str) -> str:
        if not url.startswith(("ldap://", "ldaps://")):
            raise ValueError("must start with ldap:// or ldaps://")
        return url

    @field_validator("user_filter")
    @classmethod
    def _user_filter(cls, value: str) -> str:
        return _filter(value, "{username}")

    @field_validator("group_filter")
    @classmethod
    def _group_filter(cls, value: str) -> str:
        return _filter(value, "{dn}", "{username}")


def _filter(value: str, *needs: str) -> str:
    if not value.startswith("(") or not value.endswith(")"):
        raise ValueError("must be an LDAP filter in parentheses")
    if not any(need in value for need in needs):
        raise ValueError(f"must contain {' or '.join(needs)}")
    try:
        value.format(username="x", dn="x")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"only {{username}} and {{dn}} may appear in braces ({exc})") from None
    return value


class LdapPublic(BaseModel):
    """An organisation's LDAP settings as they are read back: without the bind password."""

    org_id: int
    url: str
    bind_dn: str
    user_base: str
    user_filter: str
    group_base: str
    group_filter: str
    roles: dict[str, str]
    start_tls: bool
    ca_cert: str | None = None
    timeout_s: float
    updated_at: datetime


class OidcSettings(_Request):
    """``PUT /api/v1/organisations/{org_id}/oidc``: an OpenID provider the organisation trusts.
    ``client_id`` is a public client (no secret) allowed the device authorization grant."""

    issuer: Annotated[Url, Field(description="The provider's issuer URL (its discovery document's 'issuer')")]
    client_id: Text
    groups_claim: Text = "groups"
    username_claim: Text = "preferred_username"
    scope: Text = "openid profile email groups"
    roles: RoleMap
    timeout_s: Annotated[float, Field(ge=0.1, le=30)] = 5.0

    @field_validator("issuer")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("https://", "http://")):
            raise ValueError("must be an https:// (or http://) URL")
        return url.rstrip("/")


class OidcPublic(BaseModel):
    """An organisation's OpenID Connect settings as they are read back."""

    org_id: int
    issuer: str
    client_id: str
    groups_claim: str
    username_claim: str
    scope: str
    roles: dict[str, str]
    timeout_s: float
    updated_at: datetime


class OidcStartRequest(_Request):
    """``POST /api/v1/login/oidc/start``: which organisation's provider to sign in with."""

    organisation: Name


class OidcStart(BaseModel):
    """What a client needs to run the device authorization grant (RFC 8628) with the provider,
    and the ``nonce`` to send with it (the API checks it when the ID token carries it back)."""

    issuer: str
    client_id: str
    scope: str
    device_authorization_endpoint: str
    token_endpoint: str
    nonce: str


class OidcLoginRequest(_Request):
    """``POST /api/v1/login/oidc``: the provider's ID token, exchanged for a CloudLand token."""

    organisation: Name
    id_token: Annotated[str, Field(min_length=16, max_length=16384, pattern=r"^[A-Za-z0-9_.-]+$")]
    lifetime_s: Annotated[int | None, Field(ge=1, le=86400)] = None
