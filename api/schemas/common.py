"""What every request and response body shares: strict requests, names, references, pages, errors.

Request schemas are strict (no "2" for 2, no true for 1) and forbid unknown fields, so a
typo in a field name is an error rather than a silently ignored value.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field


# Ids are 32-bit INTEGER in PostgreSQL; a larger path id is refused before it reaches SQL.
MAX_ID = 2**31 - 1
Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
# Free text that reaches the database: PostgreSQL's text cannot hold NUL (a 500 before issue 15's fuzzing).
NO_NUL = r"^[^\x00]*$"


class _Request(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


Arch = Literal["x86_64", "i686", "aarch64"]
DiskFormat = Literal["qcow2", "raw"]
# A flavor, image or key may be named by id or by name within the organisation.
Ref = Annotated[int, Field(ge=1, le=MAX_ID)] | Name
MAX_COUNT = 1000  # VMs per create request
MAX_VOLUME_GIB = 65536  # 64 TiB: the agents' ceiling (proto/v1/storage.proto)
SizeGib = Annotated[int, Field(ge=1, le=MAX_VOLUME_GIB, description="Size in GiB")]
JobStateName = Literal["pending", "dispatched", "succeeded", "failed", "timeout"]
InstanceStatus = Literal["building", "running", "stopped", "error", "deleting", "deleted"]


class Page(BaseModel):
    """What every list answers besides its ``items``: keyset pagination with an opaque cursor.

    Pass ``next_after`` back as ``after`` (same filters) for the next page, until it is null.
    """

    limit: int
    next_after: str | None


class ErrorBody(BaseModel):
    """The ``error`` member of every 4xx/5xx response."""

    code: str
    message: str


class ErrorResponse(BaseModel):
    """Every error response: ``{"error": {"code": ..., "message": ...}}``."""

    error: ErrorBody
