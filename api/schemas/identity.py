"""Sign-in bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, Field

from cloudland_api.schemas.common import NO_NUL, Name, _Request


class LoginRequest(_Request):
    """Credentials for ``POST /api/v1/login``."""

    username: Annotated[str, Field(min_length=1, max_length=64, pattern=NO_NUL)]
    password: Annotated[str, Field(min_length=1, max_length=1024)]
    organisation: Name | None = Field(
        default=None, description="Organisation to act in; defaults to the user's first membership."
    )


class TokenPublic(BaseModel):
    """A bearer token and when it stops working."""

    token: str
    expires_at: datetime
