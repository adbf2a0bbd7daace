"""The ``local`` backend: qcow2 files in one directory of the hypervisor, made with qemu-img.

``vol-<id>.qcow2`` is a volume, ``vol-<id>.snap-<sid>.qcow2`` its snapshot: a standalone copy
(qemu-img convert, sparse), so a snapshot, a volume and a volume made from a snapshot never
depend on each other and each can go alone. Every file is written under a temporary name and
renamed into place, so a crash leaves either the whole file or none (a leftover temporary one
is removed by the next attempt). The directory is private (0700; searchable by QEMU's user on a
real hypervisor) and files are 0600; on a real hypervisor it is also a libvirt ``dir`` storage pool, refreshed after each change, so ``virsh vol-list`` shows it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from xml.etree import ElementTree as ET

import libvirt

from cloudland.errors import VolumeError, VolumeNotFound
from cloudland.statedir import open_for_qemu
from cloudland_agents.storage.disks import VolumeDisk
from cloudland_agents.storage.store import run


class LocalStore:
    """Volumes of hypervisor ``hypervisor`` as qcow2 files under ``root``."""

    live_snapshots = False  # a qcow2 file is not read consistently while QEMU writes it

    def __init__(self, hypervisor: int, root: Path, name: str = "local", qemu_img: str = "qemu-img",
                 conn: libvirt.virConnect | None = None, pool: str = "") -> None:
        self.hypervisor = hypervisor
        self.name = name
        self.root = root
        self.qemu_img = qemu_img
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(root, 0o700)
        if conn is not None:
            # QEMU runs as its own user and opens the files libvirt hands it (the one exception
            # to private state, cloudland/statedir.py): the directories are searchable, not listable.
            open_for_qemu(root)
        self._pool = self._define_pool(conn, pool) if conn is not None and pool else None

    # -- files ------------------------------------------------------------------------------

    def _file(self, volume_id: int) -> Path:
        return self.root / f"vol-{volume_id}.qcow2"

    def _snap_file(self, volume_id: int, snapshot_id: int) -> Path:
        return self.root / f"vol-{volume_id}.snap-{snapshot_id}.qcow2"

    def _error(self, message: str) -> VolumeError:
        return VolumeError(self.hypervisor, f"backend {self.name}: {message}")

    def _qemu_img(self, *args: str, what: str) -> str:
        return run([self.qemu_img, *args], what, self._error, "qemu-utils")

    def _virtual_size(self, path: Path) -> int:
        # -U: an attached volume is locked by its QEMU, and reading the header is safe.
        info = json.loads(self._qemu_img("info", "-U", "--output=json", "-f", "qcow2", str(path),
                                         what=f"info of {path.name}"))
        return int(info["virtual-size"])

    def _into_place(self, make: list[str], final: Path, what: str, after: tuple[str, ...] = (),
                    grow_to: int = 0) -> None:
        """Run qemu-img ``make`` writing a temporary file (then ``after``), grow it to ``grow_to``
        if that is larger, then rename it to ``final``."""
        temporary = final.with_name(final.name + ".part")
        temporary.unlink(missing_ok=True)
        try:
            self._qemu_img(*make, str(temporary), *after, what=what)
            if grow_to > self._virtual_size(temporary):
                self._qemu_img("resize", "-q", "-f", "qcow2", str(temporary), str(grow_to), what=what)
            os.chmod(temporary, 0o600)
            os.replace(temporary, final)
        finally:
            temporary.unlink(missing_ok=True)
        self._refresh()

    # -- the Store verbs ---------------------------------------------------------------------

    def exists(self, volume_id: int) -> bool:
        return self._file(volume_id).exists()

    def size(self, volume_id: int) -> int:
        path = self._file(volume_id)
        if not path.exists():
            raise VolumeNotFound(self.hypervisor, f"volume {volume_id} not found in backend {self.name}")
        return self._virtual_size(path)

    def path(self, volume_id: int) -> str:
        return str(self._file(volume_id))

    def create(self, volume_id: int, size_bytes: int) -> None:
        self._into_place(["create", "-q", "-f", "qcow2"], self._file(volume_id), f"create of volume {volume_id}",
                         after=(str(size_bytes),))

    def create_from(self, volume_id: int, image: Path, image_format: str, size_bytes: int) -> None:
        self._into_place(["convert", "-q", "-f", image_format, "-O", "qcow2", str(image)], self._file(volume_id),
                         f"volume {volume_id} from image {image.name}", grow_to=size_bytes)

    def clone(self, volume_id: int, source_id: int, snapshot_id: int) -> None:
        source = self._snap_file(source_id, snapshot_id)
        if not source.exists():
            raise VolumeNotFound(self.hypervisor, f"snapshot {snapshot_id} of volume {source_id} not found "
                                                  f"in backend {self.name}")
        self._into_place(["convert", "-q", "-f", "qcow2", "-O", "qcow2", str(source)], self._file(volume_id),
                         f"volume {volume_id} from snapshot {snapshot_id} of volume {source_id}")

    def delete(self, volume_id: int) -> bool:
        return self._remove(self._file(volume_id))

    def resize(self, volume_id: int, size_bytes: int) -> None:
        self._qemu_img("resize", "-q", "-f", "qcow2", str(self._file(volume_id)), str(size_bytes),
                       what=f"resize of volume {volume_id}")

    def snapshots(self, volume_id: int) -> list[int]:
        prefix = f"vol-{volume_id}.snap-"
        return sorted(int(p.name[len(prefix):-len(".qcow2")]) for p in self.root.glob(f"{prefix}*.qcow2")
                      if p.name[len(prefix):-len(".qcow2")].isdigit())

    def snapshot(self, volume_id: int, snapshot_id: int) -> None:
        self._into_place(["convert", "-q", "-f", "qcow2", "-O", "qcow2", str(self._file(volume_id))],
                         self._snap_file(volume_id, snapshot_id), f"snapshot {snapshot_id} of volume {volume_id}")

    def snapshot_delete(self, volume_id: int, snapshot_id: int) -> bool:
        return self._remove(self._snap_file(volume_id, snapshot_id))

    def _remove(self, path: Path) -> bool:
        """Remove ``path``; False if it was gone already."""
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        self._refresh()
        return True

    def snapshot_size(self, volume_id: int, snapshot_id: int) -> int:
        path = self._snap_file(volume_id, snapshot_id)
        if not path.exists():
            raise VolumeNotFound(self.hypervisor, f"snapshot {snapshot_id} of volume {volume_id} not found "
                                                  f"in backend {self.name}")
        return self._virtual_size(path)

    def disk(self, volume_id: int, attachment_id: int, device: str, read_only: bool) -> VolumeDisk:
        return VolumeDisk(volume_id=volume_id, attachment_id=attachment_id, device=device,
                          path=self.path(volume_id), format="qcow2", read_only=read_only)

    def close(self) -> None:
        return None

    # -- the libvirt pool ----------------------------------------------------------------------

    def _define_pool(self, conn: libvirt.virConnect, name: str) -> libvirt.virStoragePool | None:
        """The ``dir`` pool ``name`` over the directory: found, or made (transient, so nothing is
        left in libvirt's configuration by an agent that goes)."""
        try:
            try:
                pool = conn.storagePoolLookupByName(name)
            except libvirt.libvirtError:
                xml = ET.Element("pool", type="dir")
                ET.SubElement(xml, "name").text = name
                ET.SubElement(ET.SubElement(xml, "target"), "path").text = str(self.root)
                pool = conn.storagePoolCreateXML(ET.tostring(xml, encoding="unicode"), 0)
            return pool
        except libvirt.libvirtError as exc:
            raise self._error(f"libvirt storage pool {name} over {self.root}: {exc}") from exc

    def _refresh(self) -> None:
        if self._pool is not None:
            try:
                self._pool.refresh(0)
            except libvirt.libvirtError:
                pass  # a listing that lags costs nothing: the files are the truth
