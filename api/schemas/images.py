"""Image and SSH key bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from cloudland_api.schemas.common import NO_NUL, Arch, DiskFormat, Name, Page, _Request


class ImageCreate(_Request):
    """A new image record; its bytes follow with ``PUT /images/{id}/file``."""

    name: Name
    arch: Arch = "x86_64"
    disk_format: DiskFormat = "qcow2"


class ImagePublic(BaseModel):
    """An image: ``queued`` until its file is uploaded (``saving`` while captured from an instance),
    then ``active`` with size and sha256; ``error`` if its capture failed (the job says why)."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    arch: str
    disk_format: str
    status: str
    size_bytes: int
    sha256: str | None
    created_at: datetime


class ImageList(Page):
    """One page of images, by id."""

    items: list[ImagePublic]


class SshKeyCreate(_Request):
    """An OpenSSH public key line: ``<type> <base64> [comment]``."""

    name: Name
    public_key: Annotated[str, Field(min_length=1, max_length=16384, pattern=NO_NUL)]


class SshKeyPublic(BaseModel):
    """An SSH key with its ``SHA256:...`` fingerprint (as ``ssh-keygen -l`` prints it)."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    public_key: str
    fingerprint: str
    created_at: datetime


class SshKeyList(Page):
    """One page of SSH keys, by id."""

    items: list[SshKeyPublic]
