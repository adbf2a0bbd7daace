"""A real guest's files on its hypervisor: its disk, its config drive and its console log.

Layout under the agent's state directory (each directory 0755: QEMU runs as libvirt-qemu
and must reach the files, which libvirt then chowns to it):

    image-cache/<sha256>.<format>   bases, shared by every guest of an image (agents/images/)
    guests/<uuid>/disk.qcow2        the guest's disk: a qcow2 overlay on its image's base
    guests/<uuid>/config-2.iso      its config drive (agents/compute/configdrive.py): hostname, SSH keys,
                                    user data and network data (a link per NIC, its static addresses)
    guests/<uuid>/console.log       what its serial console printed (virtlogd writes it)

``prepare`` is idempotent on the uuid (a replayed create finds the overlay on the same base
and rewrites the same drive); ``remove`` deletes the guest's directory, never a base;
``evict`` removes a base that no guest's disk is an overlay on (its image was deleted).
Simulated hypervisors (libvirt's test driver) run no guest and get no files.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudland.errors import DriverError
from cloudland_agents.compute.configdrive import build_config_drive
from cloudland_agents.compute.domain import Disk
from cloudland_agents.hypervisor import Hypervisor, PerHypervisor
from cloudland_agents.images.cache import ImageCache
from cloudland_agents.images.source import ImageSource

NEW_DISK = "disk.qcow2"  # a new guest's disk; a rebuild names its new one by its job


@dataclass(frozen=True)
class GuestFiles:
    """What ``prepare`` made: the disks to attach and the console log to name."""

    directory: Path
    disks: tuple[Disk, ...]
    console_log: Path
    downloaded: bool  # the image was fetched for this guest (False: it was cached already)


def _make_cache(hypervisor: Hypervisor) -> ImageCache:
    return ImageCache(_directory(hypervisor.state_dir / "image-cache", hypervisor.id), hypervisor.id)


# The image cache of each hypervisor, made on first use (one per hypervisor: its locks).
cache_for: PerHypervisor[ImageCache] = PerHypervisor(_make_cache)


def guest_dir(hypervisor: Hypervisor, uuid: str) -> Path:
    return hypervisor.state_dir / "guests" / uuid


@dataclass(frozen=True)
class NicConfig:
    """What a guest's NIC is configured with: its port's addresses (``10.0.0.3/24``), gateway,
    DNS servers and MTU (0: unset). A NIC without addresses is left to DHCP."""

    mac: str
    mtu: int = 0
    ips: tuple[str, ...] = ()
    gateway: str = ""
    dns: tuple[str, ...] = ()


def network_data(nics: Sequence[NicConfig]) -> dict[str, Any]:
    """The OpenStack ``network_data.json`` of a guest with ``nics``: one link per NIC, by MAC,
    with its MTU; a static ``ipv4`` network per address (the default route through the first
    NIC's gateway only, as nova writes a guest's), so a guest without a DHCP client comes up
    too; ``ipv4_dhcp`` for a NIC without addresses; the DNS servers as services. Empty lists
    for no NIC."""
    links: list[dict[str, Any]] = []
    networks: list[dict[str, Any]] = []
    services: list[dict[str, Any]] = []
    for i, nic in enumerate(nics):
        link: dict[str, Any] = {"id": f"tap{i}", "type": "phy", "ethernet_mac_address": nic.mac}
        if nic.mtu:
            link["mtu"] = nic.mtu
        links.append(link)
        dns = [{"type": "dns", "address": address} for address in nic.dns]
        services += [s for s in dns if s not in services]
        if not nic.ips:
            networks.append({"id": f"network{len(networks)}", "link": f"tap{i}", "type": "ipv4_dhcp"})
        for address in nic.ips:
            interface = ipaddress.IPv4Interface(address)
            default = nic.gateway and i == 0
            routes = [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": nic.gateway}] if default else []
            networks.append({"id": f"network{len(networks)}", "link": f"tap{i}", "type": "ipv4",
                             "ip_address": str(interface.ip), "netmask": str(interface.netmask),
                             "routes": routes, "services": dns})
    return {"links": links, "networks": networks, "services": services}


def own_disk(hypervisor: Hypervisor, uuid: str) -> str:
    """The name of the disk guest ``uuid`` boots from: the one it has, else ``disk.qcow2`` (new).

    A rebuilt guest's disk is named by its rebuild's job, so a create that defines a guest
    again on its own files (the reconciler's ``recover``) must find that one, not make a fresh
    ``disk.qcow2`` from the image beside it. Of several (a rebuild cut off before it removed
    the old one), the last written.
    """
    disks = list(guest_dir(hypervisor, uuid).glob("disk*.qcow2"))
    return max(disks, key=lambda p: p.stat().st_mtime_ns).name if disks else NEW_DISK


def prepare(hypervisor: Hypervisor, uuid: str, *, hostname: str, image: ImageSource | None, disk_gib: int,
            ssh_keys: list[str], user_data: bytes | None, disk_name: str | None = None,
            nics: Sequence[NicConfig] = ()) -> GuestFiles:
    """The disk (an overlay on the cached image) and config drive of guest ``uuid``; with no
    ``image`` (a guest that boots from a volume) the config drive only.

    ``disk_name``: None for the guest's own disk (``own_disk``); a rebuild names a new disk
    (by its job) so the old one stays until the domain has been redefined on the new one
    (``remove_other_disks``).
    """
    _directory(guest_dir(hypervisor, uuid).parent, hypervisor.id)  # guests/: QEMU must pass it too
    directory = _directory(guest_dir(hypervisor, uuid), hypervisor.id)
    disks: tuple[Disk, ...] = ()
    downloaded = False
    if image is not None:
        cache = cache_for(hypervisor)
        before = cache.downloads
        base = cache.base(image)
        downloaded = cache.downloads > before
        disk = cache.create_overlay(base, directory / (disk_name or own_disk(hypervisor, uuid)), disk_gib or None)
        disks = (Disk(str(disk), "qcow2", "vda"),)
    drive = build_config_drive(directory / "config-2.iso", hostname=hostname, uuid=uuid, ssh_keys=ssh_keys,
                               user_data=user_data, network_config=network_data(nics))
    disks += (Disk(str(drive), "raw", "hda", "cdrom"),)
    return GuestFiles(directory, disks, directory / "console.log", downloaded)


def evict(hypervisor: Hypervisor, sha256: str) -> bool:
    """No cached base of ``sha256`` remains, unless a guest's disk is an overlay on it (then
    it stays, and False is returned). A hypervisor that never cached an image does nothing."""
    if not (hypervisor.state_dir / "image-cache").is_dir():
        return True
    disks = hypervisor.state_dir.glob("guests/*/disk*.qcow2")
    return cache_for(hypervisor).evict(sha256, disks)


def remove_other_disks(hypervisor: Hypervisor, uuid: str, keep: Path) -> None:
    """Every disk of guest ``uuid`` but ``keep`` removed: the disks a rebuild replaced."""
    for disk in guest_dir(hypervisor, uuid).glob("disk*.qcow2"):
        if disk != keep:
            cache_for(hypervisor).remove_overlay(disk)


def remove(hypervisor: Hypervisor, uuid: str) -> bool:
    """No files of guest ``uuid`` remain; True if there were some. The image's base stays cached."""
    directory = guest_dir(hypervisor, uuid)
    if not directory.exists():
        return False
    try:
        shutil.rmtree(directory)
    except OSError as exc:
        raise DriverError(hypervisor.id, f"removing guest {uuid}'s files in {directory} failed: "
                                         f"{exc.strerror}") from exc
    return True


def _directory(path: Path, hypervisor_id: int) -> Path:
    """``path`` made (with parents) and opened to QEMU's user: 0755 on the directory itself."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o755)
    except OSError as exc:
        raise DriverError(hypervisor_id, f"cannot make directory {path}: {exc.strerror}") from exc
    return path
