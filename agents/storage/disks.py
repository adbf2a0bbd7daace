"""A volume's disk in a domain: its XML, built with ElementTree, and a domain's disks read back.

Kept apart from the VM's own domain XML (agents/compute/domain.py): a volume is added to and
removed from a defined domain, never part of its spec. The disk carries the alias
``ua-clatt-<attachment id>`` (libvirt keeps ``ua-`` aliases in the persistent definition) and
the serial ``cl-vol-<volume id>`` (the guest's /dev/disk/by-id/virtio-cl-vol-<id>):
proto/README.md §11.1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from xml.etree import ElementTree as ET

from cloudland_proto.v1 import storage_pb2 as spb

ALIAS_PREFIX = "ua-clatt-"
SERIAL_PREFIX = "cl-vol-"
DEVICE = re.compile(r"vd([b-z]|a[a-z])")  # vda is the root disk's


@dataclass(frozen=True)
class RbdSource:
    """Where QEMU finds an RBD image: pool/image on these monitors, as a cephx user whose key
    libvirt holds as the secret ``secret_uuid``."""

    pool: str
    image: str
    monitors: tuple[tuple[str, int], ...]
    user: str
    secret_uuid: str = ""


@dataclass(frozen=True)
class VolumeDisk:
    """One attachment's disk: a file (``path``) or an RBD image (``rbd``)."""

    volume_id: int
    attachment_id: int
    device: str
    path: str = ""
    format: str = "qcow2"
    rbd: RbdSource | None = None
    read_only: bool = False

    @property
    def alias(self) -> str:
        return f"{ALIAS_PREFIX}{self.attachment_id}"


def disk_xml(disk: VolumeDisk) -> str:
    """The ``<disk>`` element libvirt attaches for ``disk``."""
    kind = "network" if disk.rbd is not None else "file"
    root = ET.Element("disk", type=kind, device="disk")
    # cache none: the guest's flushes reach the store, and a live migration of rbd stays safe.
    ET.SubElement(root, "driver", name="qemu", type="raw" if disk.rbd is not None else disk.format, cache="none")
    if disk.rbd is not None:
        if disk.rbd.secret_uuid:
            auth = ET.SubElement(root, "auth", username=disk.rbd.user)
            ET.SubElement(auth, "secret", type="ceph", uuid=disk.rbd.secret_uuid)
        source = ET.SubElement(root, "source", protocol="rbd", name=f"{disk.rbd.pool}/{disk.rbd.image}")
        for host, port in disk.rbd.monitors:
            ET.SubElement(source, "host", name=host, port=str(port))
    else:
        ET.SubElement(root, "source", file=disk.path)
    ET.SubElement(root, "target", dev=disk.device, bus="virtio")
    if disk.read_only:
        ET.SubElement(root, "readonly")
    ET.SubElement(root, "serial").text = f"{SERIAL_PREFIX}{disk.volume_id}"
    ET.SubElement(root, "alias", name=disk.alias)
    return ET.tostring(root, encoding="unicode")


def _id_after(prefix: str, text: str | None) -> int:
    if text and text.startswith(prefix) and text[len(prefix):].isdigit():
        return int(text[len(prefix):])
    return 0


def disks_of(domain_xml: str) -> list[spb.AttachedDisk]:
    """Every disk (not CD-ROMs) of a domain's XML, with the volume and attachment ids read back
    from serial and alias (0 when absent: a disk CloudLand did not attach)."""
    found: list[spb.AttachedDisk] = []
    for disk in ET.fromstring(domain_xml).findall("devices/disk"):
        if disk.get("device", "disk") != "disk":
            continue
        target, source = disk.find("target"), disk.find("source")
        alias = disk.find("alias")
        where = ""
        if source is not None:
            if source.get("protocol"):
                where = f"{source.get('protocol')}:{source.get('name', '')}"
            else:
                where = source.get("file") or source.get("dev") or source.get("name") or ""
        found.append(spb.AttachedDisk(
            device=target.get("dev", "") if target is not None else "",
            source=where,
            volume_id=_id_after(SERIAL_PREFIX, disk.findtext("serial")),
            attachment_id=_id_after(ALIAS_PREFIX, alias.get("name") if alias is not None else None)))
    return found


def with_disk(domain_xml: str, disk: VolumeDisk) -> str:
    """``domain_xml`` with ``disk`` added: a persistent definition edited where libvirt cannot
    attach (the ``test:///`` driver)."""
    dom = ET.fromstring(domain_xml)
    devices = dom.find("devices")
    if devices is None:
        devices = ET.SubElement(dom, "devices")
    devices.append(ET.fromstring(disk_xml(disk)))
    return ET.tostring(dom, encoding="unicode")


def without_alias(domain_xml: str, alias: str) -> str | None:
    """``domain_xml`` without the disk aliased ``alias``; None if it has none."""
    dom = ET.fromstring(domain_xml)
    devices = dom.find("devices")
    for disk in devices.findall("disk") if devices is not None else []:
        found = disk.find("alias")
        if found is not None and found.get("name") == alias:
            devices.remove(disk)  # type: ignore[union-attr]
            return ET.tostring(dom, encoding="unicode")
    return None
