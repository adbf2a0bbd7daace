"""What the control plane asks of the hypervisors' agents: the request message of each VM
job's operation (``agent_request``, with the guest's image source and an upload target from
``GuestSource``; the messages are proto/v1/compute.proto's).

The job engine (api/jobs/) sends the jobs; this module only says what they carry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from google.protobuf.message import Message
from sqlalchemy.orm import Session

from cloudland_api.models import Image, Instance, Job, SshKey
from cloudland_api.security import UPLOAD_AUDIENCE, issue_image_token
from cloudland_proto.v1 import compute_pb2 as cpb
from cloudland_proto.v1 import image_pb2 as ipb

log = logging.getLogger(__name__)


def vm_spec(instance: Instance, image_id: int | None = None) -> cpb.DomainSpec:
    """The domain spec of ``instance`` (``image_id``: a rebuild's new image) for ``vm.create``
    and ``vm.rebuild``."""
    metadata = {"instance_id": str(instance.id), "org_id": str(instance.org_id), "name": instance.name}
    image_id = image_id if image_id is not None else instance.image_id
    if image_id is not None:
        metadata["image_id"] = str(image_id)
    return cpb.DomainSpec(name=instance.domain_name, uuid=instance.uuid, vcpus=instance.vcpus,
                          memory_mib=instance.memory_mib, arch=instance.arch, metadata=metadata)


@dataclass(frozen=True)
class GuestSource:
    """How agents fetch a guest's image: the API's URL for images and the key to sign tokens."""

    image_url_base: str        # settings.image_url_base: ``<public url>/api/v1/images``
    signing_key: bytes
    token_lifetime_s: int

    def guest(self, session: Session, instance: Instance, image_id: int | None = None) -> cpb.Guest | None:
        """What a real hypervisor needs to build the guest's files (None: an image without bytes).

        The image source carries a token for that one image (security.issue_image_token);
        simulated hypervisors ignore all of it.
        """
        image_id = image_id if image_id is not None else instance.image_id  # a rebuild's new image
        image = session.get(Image, image_id) if image_id is not None else None
        if image is None or image.sha256 is None:
            return None
        key = session.get(SshKey, instance.ssh_key_id) if instance.ssh_key_id is not None else None
        return cpb.Guest(image=self.image_source(image), hostname=instance.name, disk_gib=instance.disk_gib,
                         ssh_keys=[key.public_key] if key is not None else [],
                         user_data=instance.user_data.encode() if instance.user_data is not None else b"")

    def image_source(self, image: Image) -> ipb.ImageSource:
        """Where a hypervisor downloads ``image`` (which has its bytes), with a token for that one image."""
        token = issue_image_token(self.signing_key, image.id, self.token_lifetime_s)
        return ipb.ImageSource(image_id=image.id, sha256=image.sha256 or "", size_bytes=image.size_bytes,
                               disk_format=image.disk_format, url=f"{self.image_url_base}/{image.id}/download",
                               token=token)

    def capture_target(self, image_id: int, disk_format: str, upload_lifetime_s: float) -> ipb.ImageTarget:
        """Where a ``vm.capture`` uploads the captured disk: the image's upload URL and a token
        for that one image that outlives the copy (``upload_lifetime_s``)."""
        token = issue_image_token(self.signing_key, image_id, int(self.token_lifetime_s + upload_lifetime_s),
                                  UPLOAD_AUDIENCE)
        return ipb.ImageTarget(image_id=image_id, disk_format=disk_format,
                               url=f"{self.image_url_base}/{image_id}/upload", token=token)


def agent_request(job: Job, instance: Instance, guest: cpb.Guest | None = None,
                  target: ipb.ImageTarget | None = None) -> Message:
    """The agent operation's request message for ``job``, built from the instance as it is now
    (``guest``: a create's, recover's or rebuild's files; ``target``: a capture's upload)."""
    name = instance.domain_name
    if job.action in ("create", "recover"):  # recover: the same domain again, on its own disk
        return cpb.VmCreateRequest(spec=vm_spec(instance), guest=guest)
    if job.action == "rebuild":
        return cpb.VmRebuildRequest(spec=vm_spec(instance, job.args["image_id"]), guest=guest)
    if job.action == "resize":
        return cpb.VmResizeRequest(name=name, vcpus=job.args["vcpus"], memory_mib=job.args["memory_mib"])
    if job.action == "stop":
        return cpb.VmStopRequest(name=name, force=bool(job.args.get("force", False)))
    if job.action == "reboot":
        return cpb.VmRebootRequest(name=name, force=bool(job.args.get("force", False)))
    if job.action == "delete":
        return cpb.VmDeleteRequest(name=name, uuid=instance.uuid)  # a real hypervisor removes the guest's files too
    if job.action == "capture":
        return cpb.VmCaptureRequest(name=name, target=target or ipb.ImageTarget(
            image_id=job.args["image_id"], disk_format=job.args["disk_format"]))
    if job.action == "start":
        return cpb.VmStartRequest(name=name)
    raise ValueError(f"no agent request for VM action {job.action!r}")
