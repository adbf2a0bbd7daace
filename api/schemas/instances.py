"""Instance, action, job and console bodies."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cloudland_api.schemas.common import (
    MAX_COUNT, MAX_ID, NO_NUL, DiskFormat, JobStateName, Name, Page, Ref, SizeGib, _Request,
)
from cloudland_api.schemas.images import ImagePublic
from cloudland_api.schemas.networks import MAX_NETWORKS


class NewBootVolume(_Request):
    """A new volume for each VM of a create, made from its ``image`` by the VM's create job, that
    the VM boots from (named ``<VM name>-boot``; at least the image's virtual size; ``type``: the
    operator's volume type, default the first)."""

    size_gib: SizeGib
    type: Name | None = None


class InstanceCreate(_Request):
    """``count`` VMs: named ``name`` when one, ``name-1`` ... ``name-N`` when more; from ``image``
    (a disk of their own, an overlay on it, or with ``new_boot_volume`` a new volume each, made
    from the image), or one VM booting from ``boot_volume`` (its root disk, vda). A boot volume
    is deleted with its VM only if ``delete_on_termination``."""

    name: Name
    flavor: Ref
    image: Ref | None = None
    boot_volume: Ref | None = None
    new_boot_volume: NewBootVolume | None = None
    delete_on_termination: bool = False
    ssh_key: Ref | None = None
    count: Annotated[int, Field(ge=1, le=MAX_COUNT)] = 1
    # cloud-init user data for the guest's config drive; 64 KiB of UTF-8 at most (nova's limit).
    user_data: Annotated[str, Field(max_length=65535, pattern=NO_NUL)] | None = None
    # Subnets, by id or name: one NIC (a port with an address) on each, in order; the first is primary.
    networks: Annotated[list[Ref], Field(max_length=MAX_NETWORKS)] = []
    # Security groups, by id or name, of every NIC made (none: the project's default group; issue 12).
    security_groups: Annotated[list[Ref], Field(max_length=16)] = []

    @model_validator(mode="after")
    def _one_root_disk(self) -> InstanceCreate:
        if (self.image is None) == (self.boot_volume is None):
            raise ValueError("give exactly one of image and boot_volume (the VM's root disk)")
        if self.boot_volume is not None and self.count != 1:
            raise ValueError(f"a volume boots one VM: count must be 1 with boot_volume, got {self.count}")
        if self.new_boot_volume is not None and self.image is None:
            raise ValueError("new_boot_volume is made from image: give image, not boot_volume")
        if self.delete_on_termination and self.boot_volume is None and self.new_boot_volume is None:
            raise ValueError("delete_on_termination is for a boot_volume or a new_boot_volume")
        return self

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
    boot_volume_id: int | None = None  # the volume it boots from (its vda), instead of an image
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


class JobList(Page):
    """One page of jobs (newest first) and, with a ``batch`` filter, how many are in each state."""

    items: list[JobPublic]
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


class NicAttach(_Request):
    """A NIC to attach to an instance: a new port on ``network`` (a subnet, by id or name), or
    ``port``, one of the organisation's ports bound to no instance. Exactly one of them."""

    network: Ref | None = None
    port: Annotated[int, Field(ge=1, le=2**63 - 1)] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> NicAttach:
        if (self.network is None) == (self.port is None):
            raise ValueError("give exactly one of network (a subnet) and port")
        return self


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


class ConsoleTicket(BaseModel):
    """A one-time ticket that opens the instance's console WebSocket (``.../console?ticket=``) once,
    before ``expires_at``: for clients that cannot send an ``Authorization`` header there."""

    ticket: str
    expires_at: datetime
