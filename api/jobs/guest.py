"""What the control plane asks of the hypervisors' agents: the request message of each VM
job's operation (``agent_request``, with the guest's image source and an upload target from
``GuestSource``, and its NICs from ``vm_nics``; the messages are proto/v1/compute.proto's).

The job engine (api/jobs/) sends the jobs; this module only says what they carry.
"""

from __future__ import annotations

import ipaddress
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from google.protobuf.message import Message
from sqlalchemy import select
from sqlalchemy.orm import Session

from cloudland_api.models import Image, Instance, Job, Port, SshKey, Subnet, Vpc
from cloudland_api.security import UPLOAD_AUDIENCE, issue_image_token
from cloudland_api.services import ipam, netstate
from cloudland_proto.v1 import compute_pb2 as cpb
from cloudland_proto.v1 import image_pb2 as ipb

log = logging.getLogger(__name__)


def vm_nics(session: Session, instance_ids: Iterable[int]) -> dict[int, list[cpb.Nic]]:
    """Each instance's NICs, primary first (``device_index``): its ports as the agent plugs them,
    on the bridge of their subnet's VNI, with the addresses, gateway, DNS servers (the subnet's
    DHCP server first while DHCP is on, as dnsmasq offers them) and MTU the config drive gives."""
    wanted = set(instance_ids)
    nics: dict[int, list[cpb.Nic]] = defaultdict(list)
    if not wanted:
        return nics
    ports = session.scalars(select(Port).where(Port.instance_id.in_(wanted))
                            .order_by(Port.instance_id, Port.device_index, Port.id)).all()
    subnets = {s.id: s for s in session.scalars(select(Subnet).where(Subnet.id.in_({p.subnet_id for p in ports})))}
    mtus = {vpc: mtu for vpc, mtu in session.execute(select(Vpc.id, Vpc.mtu)
                                                     .where(Vpc.id.in_({p.vpc_id for p in ports})))}
    ips = netstate.port_ips(session, (p.id for p in ports))
    for port in ports:
        subnet = subnets[port.subnet_id]
        net = ipaddress.IPv4Network(subnet.cidr)
        dns = ([str(ipam.dhcp_server(net))] if subnet.dhcp else []) + list(subnet.dns_servers)
        assert port.instance_id is not None
        nics[port.instance_id].append(cpb.Nic(
            mac=port.mac, vni=subnet.vni, mtu=mtus[port.vpc_id], ips=[f"{a}/{net.prefixlen}" for a in ips[port.id]],
            gateway=subnet.gateway or "", dns_servers=dns, port_id=port.id))
    return nics


def vm_spec(instance: Instance, image_id: int | None = None, nics: Iterable[cpb.Nic] = ()) -> cpb.DomainSpec:
    """The domain spec of ``instance`` (``image_id``: a rebuild's new image; ``nics``: its
    ``vm_nics``) for ``vm.create`` and ``vm.rebuild``."""
    metadata = {"instance_id": str(instance.id), "org_id": str(instance.org_id), "name": instance.name}
    image_id = image_id if image_id is not None else instance.image_id
    if image_id is not None:
        metadata["image_id"] = str(image_id)
    return cpb.DomainSpec(name=instance.domain_name, uuid=instance.uuid, vcpus=instance.vcpus,
                          memory_mib=instance.memory_mib, arch=instance.arch, metadata=metadata, nics=list(nics))


@dataclass(frozen=True)
class GuestSource:
    """How agents fetch a guest's image: the API's URL for images and the key to sign tokens."""

    image_url_base: str        # settings.image_url_base: ``<public url>/api/v1/images``
    signing_key: bytes
    token_lifetime_s: int

    def guest(self, session: Session, instance: Instance, image_id: int | None = None, *,
              boot_volume: bool = False) -> cpb.Guest | None:
        """What a real hypervisor needs to build the guest's files (None: an image without bytes);
        ``boot_volume``: its config drive only (no image: the root disk is a volume).

        The image source carries a token for that one image (security.issue_image_token);
        simulated hypervisors ignore all of it.
        """
        image_id = image_id if image_id is not None else instance.image_id  # a rebuild's new image
        image = session.get(Image, image_id) if image_id is not None and not boot_volume else None
        if not boot_volume and (image is None or image.sha256 is None):
            return None
        key = session.get(SshKey, instance.ssh_key_id) if instance.ssh_key_id is not None else None
        source = self.image_source(image) if image is not None else None
        return cpb.Guest(image=source, hostname=instance.name, disk_gib=instance.disk_gib,
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
                  target: ipb.ImageTarget | None = None, nics: Iterable[cpb.Nic] = (),
                  boot: cpb.BootVolume | None = None) -> Message:
    """The agent operation's request message for ``job``, built from the instance as it is now
    (``guest``: a create's, recover's or rebuild's files; ``target``: a capture's upload;
    ``nics``: the instance's NICs, for a create, recover, rebuild or NIC attach; ``boot``: the
    volume a create or recover boots from)."""
    name = instance.domain_name
    if job.action in ("create", "recover"):  # recover: the same domain again, on its own disk
        return cpb.VmCreateRequest(spec=vm_spec(instance, nics=nics), guest=guest, boot_volume=boot)
    if job.action == "rebuild":
        return cpb.VmRebuildRequest(spec=vm_spec(instance, job.args["image_id"], nics), guest=guest)
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
    if job.action == "attach_nic":  # its port's NIC (none when the port went: the agent refuses it)
        nic = next((n for n in nics if n.port_id == job.args["port_id"]), cpb.Nic())
        return cpb.VmAttachNicRequest(name=name, nic=nic)
    if job.action == "detach_nic":
        return cpb.VmDetachNicRequest(name=name, mac=job.args["mac"])
    raise ValueError(f"no agent request for VM action {job.action!r}")
