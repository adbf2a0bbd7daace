"""Request and response bodies (Pydantic), kept apart from the database models.

Request schemas are strict (no "2" for 2, no true for 1) and forbid unknown fields, so a
typo in a field name is an error rather than a silently ignored value.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

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
    vcpus: Annotated[int, Field(ge=1, le=256)]  # DomainSpec's MAX_VCPUS
    # 64 MiB is the least libvirt domain we define (agents/compute/domain.py MIN_MEMORY_MIB).
    memory_mib: Annotated[int, Field(ge=64, le=4 * 1024 * 1024)]  # up to 4 TiB, DomainSpec's limit
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


Arch = Literal["x86_64", "i686", "aarch64"]
DiskFormat = Literal["qcow2", "raw"]
# A flavor, image or key may be named by id or by name within the organisation.
Ref = Annotated[int, Field(ge=1, le=MAX_ID)] | Name
MAX_COUNT = 1000  # VMs per create request
JobStateName = Literal["pending", "dispatched", "succeeded", "failed", "timeout"]
InstanceStatus = Literal["building", "running", "stopped", "error", "deleting", "deleted"]


class Page(BaseModel):
    """Keyset pagination: pass ``next_after`` back as ``after`` until it is null."""

    limit: int
    next_after: int | None


# -- hypervisors --------------------------------------------------------------------------


class HypervisorPublic(BaseModel):
    """A hypervisor as the tree reports it, with its settings and what instances claim on it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    hostname: str
    arch: str
    state: str  # up | down | gone | removed (api/hypervisors.py)
    enabled: bool
    draining: bool
    cpus: int
    memory_mib: int
    free_memory_mib: int
    domains: int
    running_domains: int
    cpu_ratio: float
    memory_ratio: float
    vcpus_claimed: int
    memory_claimed_mib: int
    vcpus_capacity: int
    memory_capacity_mib: int
    last_seen: datetime


class HypervisorList(BaseModel):
    """One page of hypervisors and the total across all pages."""

    items: list[HypervisorPublic]
    total: int
    limit: int
    offset: int


class RemainingInstance(BaseModel):
    """A VM still on a hypervisor being drained: what the operator has to move or delete."""

    id: int
    name: str
    org_id: int
    organisation: str
    status: str


class HypervisorDrain(BaseModel):
    """A drained hypervisor and the VMs (not deleted) that remain on it, by id."""

    hypervisor: HypervisorPublic
    remaining: list[RemainingInstance]


class HypervisorUpdate(_Request):
    """Operator settings of one hypervisor; omitted fields stay as they are."""

    enabled: bool | None = None
    cpu_ratio: Annotated[float, Field(gt=0, le=64)] | None = None
    memory_ratio: Annotated[float, Field(gt=0, le=16)] | None = None


# -- images and SSH keys ------------------------------------------------------------------


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


class ImageList(BaseModel):
    """One page of images and the total across all pages."""

    items: list[ImagePublic]
    total: int
    limit: int
    offset: int


class SshKeyCreate(_Request):
    """An OpenSSH public key line: ``<type> <base64> [comment]``."""

    name: Name
    public_key: Annotated[str, Field(min_length=1, max_length=16384)]


class SshKeyPublic(BaseModel):
    """An SSH key with its ``SHA256:...`` fingerprint (as ``ssh-keygen -l`` prints it)."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    public_key: str
    fingerprint: str
    created_at: datetime


class SshKeyList(BaseModel):
    """One page of SSH keys and the total across all pages."""

    items: list[SshKeyPublic]
    total: int
    limit: int
    offset: int


# -- instances and jobs -------------------------------------------------------------------


class InstanceCreate(_Request):
    """``count`` VMs: named ``name`` when one, ``name-1`` ... ``name-N`` when more."""

    name: Name
    flavor: Ref
    image: Ref
    ssh_key: Ref | None = None
    count: Annotated[int, Field(ge=1, le=MAX_COUNT)] = 1
    # cloud-init user data for the guest's config drive; 64 KiB of UTF-8 at most (nova's limit).
    user_data: Annotated[str, Field(max_length=65535)] | None = None

    @field_validator("user_data")
    @classmethod
    def _user_data_fits(cls, value: str | None) -> str | None:
        if value is not None and len(value.encode()) > 65535:
            raise ValueError(f"must be at most 65535 bytes of UTF-8, got {len(value.encode())}")
        return value


class InstancePublic(BaseModel):
    """A VM: its size, where it runs, its status and the job now acting on it."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    uuid: str
    status: str
    status_reason: str | None
    flavor_id: int | None
    image_id: int | None
    ssh_key_id: int | None
    vcpus: int
    memory_mib: int
    disk_gib: int
    arch: str
    hypervisor_id: int | None
    job_id: str | None
    created_at: datetime
    updated_at: datetime


class InstanceList(Page):
    """One page of instances, by id."""

    items: list[InstancePublic]


class JobPublic(BaseModel):
    """A job: one action on one resource (its subject), sent to one, some or all hypervisors."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    batch: str
    kind: str
    action: str
    subject_type: str
    subject_id: int
    instance_id: int | None  # the subject, when it is an instance
    hypervisor_id: int | None  # the one target of a unicast job, once placed
    targets: dict[str, Any] | None
    state: JobStateName
    reason: str | None
    attempts: int
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class JobList(BaseModel):
    """One page of jobs (newest first) and, with a ``batch`` filter, how many are in each state."""

    items: list[JobPublic]
    limit: int
    offset: int
    counts: dict[str, int] | None = None


class BatchAccepted(BaseModel):
    """What a create or batch action started: one job per instance, all in ``batch``."""

    batch: str
    instances: list[InstancePublic]
    jobs: list[JobPublic]


class PowerAction(_Request):
    """Options of start, stop and reboot."""

    force: bool = False


class ResizeRequest(_Request):
    """The flavor to resize a stopped instance to."""

    flavor: Ref


class RebuildRequest(_Request):
    """The image to rebuild an instance from (its uuid and name stay)."""

    image: Ref


class CaptureRequest(_Request):
    """The new image a stopped instance's disk is captured into."""

    name: Name
    disk_format: DiskFormat = "qcow2"


class CaptureAccepted(BaseModel):
    """A capture started: its image (``saving`` until the hypervisor has uploaded it) and its job."""

    image: ImagePublic
    job: JobPublic


class BatchAction(_Request):
    """One action on many instances of the organisation, all or none."""

    action: Literal["start", "stop", "reboot", "delete"]
    ids: Annotated[list[Annotated[int, Field(ge=1, le=MAX_ID)]], Field(min_length=1, max_length=MAX_COUNT)]
    force: bool = False


class VncConsole(BaseModel):
    """Where a VNC client reaches a running instance's graphical console, as its hypervisor says now.

    ``host`` is the display's listen address, or the hypervisor's hostname when it listens on
    every interface; ``address`` is ``host:port`` (``[v6]:port``), what VNC clients take.
    """

    instance: int
    hypervisor: int
    host: str
    port: int
    address: str


class ErrorBody(BaseModel):
    """The ``error`` member of every 4xx/5xx response."""

    code: str
    message: str


class ErrorResponse(BaseModel):
    """Every error response: ``{"error": {"code": ..., "message": ...}}``."""

    error: ErrorBody
