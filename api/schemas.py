"""Request and response bodies (Pydantic), kept apart from the database models.

Request schemas are strict (no "2" for 2, no true for 1) and forbid unknown fields, so a
typo in a field name is an error rather than a silently ignored value.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

# Ids are 32-bit INTEGER in PostgreSQL; a larger path id is refused before it reaches SQL.
MAX_ID = 2**31 - 1
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class LoginRequest(_Request):
    """Credentials for ``POST /api/v1/login``."""

    username: Annotated[str, Field(min_length=1, max_length=64)]
    password: Annotated[str, Field(min_length=1, max_length=1024)]
    organisation: Name | None = Field(
        default=None, description="Organisation to act in; defaults to the user's first membership."
    )


class TokenPublic(BaseModel):
    """A bearer token and when it stops working."""

    token: str
    expires_at: datetime


class FlavorCreate(_Request):
    """A new flavor; the name must be unused in the caller's organisation."""

    name: Name
    vcpus: Annotated[int, Field(ge=1, le=1024)]
    memory_mib: Annotated[int, Field(ge=1, le=16 * 1024 * 1024)]  # up to 16 TiB
    disk_gib: Annotated[int, Field(ge=0, le=1024 * 1024)]         # up to 1 PiB


class FlavorPublic(BaseModel):
    """A flavor as the API shows it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    vcpus: int
    memory_mib: int
    disk_gib: int
    created_at: datetime


class FlavorList(BaseModel):
    """One page of flavors and the total across all pages."""

    items: list[FlavorPublic]
    total: int
    limit: int
    offset: int


class ErrorBody(BaseModel):
    """The ``error`` member of every 4xx/5xx response."""

    code: str
    message: str


class ErrorResponse(BaseModel):
    """Every error response: ``{"error": {"code": ..., "message": ...}}``."""

    error: ErrorBody
