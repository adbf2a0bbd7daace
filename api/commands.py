"""What the control plane asks of the hypervisors' agents: the arguments of each VM job's
operation (``agent_args``, with the guest's image source and an upload target from ``GuestSource``).

The job engine (api/jobs/) sends the jobs; this module only says what they carry.
"""

from __future__ import annotations

import base64
import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session

from cloudland.client import RootClient, struct_to_dict
from cloudland.errors import CloudLandError
from cloudland_api.models import Image, Instance, Job, SshKey
from cloudland_api.security import UPLOAD_AUDIENCE, issue_image_token
from cloudland_proto.v1 import envelope_pb2 as pb

log = logging.getLogger(__name__)


def vm_spec(instance: Instance) -> dict[str, Any]:
    """The ``vm.create``/``vm.rebuild`` arguments for ``instance`` (agents/compute/ops.py SPEC_KEYS)."""
    metadata = {"instance_id": str(instance.id), "org_id": str(instance.org_id), "name": instance.name}
    if instance.image_id is not None:
        metadata["image_id"] = str(instance.image_id)
    return {"name": instance.domain_name, "uuid": instance.uuid, "vcpus": instance.vcpus,
            "memory_mib": instance.memory_mib, "arch": instance.arch, "metadata": metadata}


@dataclass(frozen=True)
class GuestSource:
    """How agents fetch a guest's image: the API's URL for images and the key to sign tokens."""

    image_url_base: str        # settings.image_url_base: ``<public url>/api/v1/images``
    signing_key: bytes
    token_lifetime_s: int

    def guest_args(self, session: Session, instance: Instance, image_id: int | None = None) -> dict[str, Any]:
        """The ``vm.create`` arguments a real hypervisor needs to build the guest's files.

        The image source carries a token for that one image (security.issue_image_token);
        simulated hypervisors ignore all of it.
        """
        image_id = image_id if image_id is not None else instance.image_id  # a rebuild's new image
        image = session.get(Image, image_id) if image_id is not None else None
        if image is None or image.sha256 is None:
            return {}
        key = session.get(SshKey, instance.ssh_key_id) if instance.ssh_key_id is not None else None
        token = issue_image_token(self.signing_key, image.id, self.token_lifetime_s)
        args: dict[str, Any] = {
            "image": {"image_id": image.id, "sha256": image.sha256, "size_bytes": image.size_bytes,
                      "disk_format": image.disk_format, "url": f"{self.image_url_base}/{image.id}/download",
                      "token": token},
            "hostname": instance.name, "disk_gib": instance.disk_gib,
            "ssh_keys": [key.public_key] if key is not None else [],
        }
        if instance.user_data is not None:
            args["user_data"] = base64.b64encode(instance.user_data.encode()).decode()
        return args


    def capture_args(self, image_id: int, upload_lifetime_s: float) -> dict[str, Any]:
        """Where a ``vm.capture`` uploads the captured disk: the image's upload URL and a token
        for that one image that outlives the copy (``upload_lifetime_s``)."""
        token = issue_image_token(self.signing_key, image_id, int(self.token_lifetime_s + upload_lifetime_s),
                                  UPLOAD_AUDIENCE)
        return {"image_id": image_id, "url": f"{self.image_url_base}/{image_id}/upload", "token": token}


def agent_args(job: Job, instance: Instance, guest: dict[str, Any] | None = None) -> dict[str, Any]:
    """The agent operation's arguments for ``job``, built from the instance as it is now."""
    name = {"name": instance.domain_name}
    if job.action in ("create", "recover"):  # recover: the same domain again, on its own disk
        return vm_spec(instance) | (guest or {})
    if job.action == "rebuild":
        spec = vm_spec(instance)
        return spec | {"metadata": spec["metadata"] | {"image_id": str(job.args["image_id"])}} | (guest or {})
    if job.action == "resize":
        return name | {"vcpus": job.args["vcpus"], "memory_mib": job.args["memory_mib"]}
    if job.action in ("stop", "reboot"):
        return name | {"force": bool(job.args.get("force", False))}
    if job.action == "delete":
        return name | {"uuid": instance.uuid}  # a real hypervisor removes the guest's files too
    if job.action == "capture":
        return name | {"image": (guest or {}) | {"image_id": job.args["image_id"],
                                                 "disk_format": job.args["disk_format"]}}
    return name
