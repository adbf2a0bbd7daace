"""An ``rbd`` backend: volumes as RBD images of one Ceph pool, made with the ``rbd`` tool.

``vol-<id>`` is a volume and ``vol-<id>@snap-<sid>`` its snapshot (after the backend's prefix). A volume from a snapshot is
an RBD clone, flattened before it takes its name (it is made as ``vol-<id>.part`` and renamed),
so it never depends on the snapshot and a crash leaves no half-made volume under the real name.
QEMU opens the images itself through librbd (this kernel has no rbd module): the disk is a
libvirt ``<disk type='network'>`` whose cephx key libvirt holds as a private ``ceph`` secret,
defined here from the hypervisor's keyring; the key is never logged, passed on a command line
or sent in a request (the ``rbd`` tool reads it from the keyring file).
"""

from __future__ import annotations

import base64
import json
import uuid
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree as ET

import libvirt

from cloudland.errors import ConfigError, VolumeError, VolumeNotFound
from cloudland_agents.storage.disks import RbdSource, VolumeDisk
from cloudland_agents.storage.store import MIB, run

_NAMESPACE = uuid.UUID("5b0c2f5e-6c2e-4d55-9c5a-1f0c8e0a7d13")  # of the libvirt secrets' uuids


@dataclass(frozen=True)
class RbdConfig:
    """How a hypervisor reaches one Ceph pool: its monitors (msgr2 host and port), the cephx
    user and the keyring file holding that user's key (0600, the operator's)."""

    name: str
    pool: str
    monitors: tuple[tuple[str, int], ...]
    user: str
    keyring: Path
    prefix: str = ""  # before each image's name: clouds (or test runs) sharing one pool stay apart


def keyring_key(keyring: Path, user: str) -> bytes:
    """The raw cephx key of ``client.<user>`` in ``keyring``; ConfigError if it has none."""
    section = ""
    for line in keyring.read_text().splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
        elif section == f"client.{user}" and line.replace(" ", "").startswith("key="):
            return base64.b64decode(line.split("=", 1)[1].strip())
    raise ConfigError(f"keyring {keyring} holds no key for client.{user}")


class RbdStore:
    """Volumes of backend ``config.name`` as RBD images, used from hypervisor ``hypervisor``."""

    live_snapshots = True  # an RBD snapshot is atomic: crash-consistent under a running guest

    def __init__(self, hypervisor: int, config: RbdConfig, conn: libvirt.virConnect | None = None) -> None:
        self.hypervisor = hypervisor
        self.name = config.name
        self.config = config
        self._cli = ["rbd", "--conf", "/dev/null", "--id", config.user, "--keyring", str(config.keyring),
                     "-m", ",".join(f"[v2:{host}:{port}]" for host, port in config.monitors)]
        self.secret_uuid = self._define_secret(conn) if conn is not None else ""

    def _error(self, message: str) -> VolumeError:
        return VolumeError(self.hypervisor, f"backend {self.name}: {message}")

    def _image(self, volume_id: int) -> str:
        return f"{self.config.pool}/{self.config.prefix}vol-{volume_id}"

    def _rbd(self, *args: str, what: str) -> str:
        return run([*self._cli, *args], what, self._error, "ceph-common")

    def _maybe(self, *args: str, what: str) -> str | None:
        """``_rbd``, or None when what it names does not exist (rbd's ENOENT)."""
        try:
            return self._rbd(*args, what=what)
        except VolumeError as exc:
            if "(2) No such file or directory" in str(exc):
                return None
            raise

    def _info(self, volume_id: int) -> dict[str, object] | None:
        out = self._maybe("info", "--format", "json", self._image(volume_id), what=f"info of volume {volume_id}")
        return None if out is None else json.loads(out)

    def _snaps(self, volume_id: int) -> dict[int, int]:
        """Snapshot id -> size, of the snapshots named snap-<id>."""
        out = self._maybe("snap", "ls", "--format", "json", self._image(volume_id),
                          what=f"snapshots of volume {volume_id}")
        found = {}
        for snap in json.loads(out) if out else []:
            name = str(snap.get("name", ""))
            if name.startswith("snap-") and name[5:].isdigit():
                found[int(name[5:])] = int(snap["size"])
        return found

    # -- the Store verbs ---------------------------------------------------------------------

    def exists(self, volume_id: int) -> bool:
        return self._info(volume_id) is not None

    def size(self, volume_id: int) -> int:
        info = self._info(volume_id)
        if info is None:
            raise VolumeNotFound(self.hypervisor, f"volume {volume_id} not found in backend {self.name}")
        return int(info["size"])  # type: ignore[call-overload]

    def path(self, volume_id: int) -> str:
        return f"rbd:{self._image(volume_id)}"

    def create(self, volume_id: int, size_bytes: int) -> None:
        self._rbd("create", "--size", f"{size_bytes // MIB}M", self._image(volume_id),
                  what=f"create of volume {volume_id}")

    def create_from(self, volume_id: int, image: Path, image_format: str, size_bytes: int) -> None:
        """The image converted to raw beside it (QEMU's rbd driver would need the monitors and key
        on its command line), imported under a temporary name, grown, then renamed."""
        part = f"{self._image(volume_id)}.part"
        raw = image.with_name(f"{image.name}.vol-{volume_id}.raw")
        try:
            run(["qemu-img", "convert", "-q", "-f", image_format, "-O", "raw", str(image), str(raw)],
                f"volume {volume_id} from image {image.name}", self._error, "qemu-utils")
            self._maybe("rm", "--no-progress", part, what=f"removing a leftover {part}")
            self._rbd("import", "--no-progress", str(raw), part, what=f"import of image {image.name}")
        finally:
            raw.unlink(missing_ok=True)
        info = self._maybe("info", "--format", "json", part, what=f"info of {part}")
        if info is not None and size_bytes > int(json.loads(info)["size"]):
            self._rbd("resize", "--no-progress", "--size", f"{size_bytes // MIB}M", part, what=f"growing {part}")
        self._rbd("rename", part, self._image(volume_id), what=f"naming volume {volume_id}")

    def clone(self, volume_id: int, source_id: int, snapshot_id: int) -> None:
        if snapshot_id not in self._snaps(source_id):
            raise VolumeNotFound(self.hypervisor, f"snapshot {snapshot_id} of volume {source_id} not found "
                                                  f"in backend {self.name}")
        snap = f"{self._image(source_id)}@snap-{snapshot_id}"
        part = f"{self._image(volume_id)}.part"
        try:
            self._rbd("snap", "protect", snap, what=f"protecting snapshot {snapshot_id} of volume {source_id}")
        except VolumeError as exc:
            if "(16) Device or resource busy" not in str(exc):  # protected already
                raise
        self._maybe("rm", "--no-progress", part, what=f"removing a leftover {part}")
        self._rbd("clone", snap, part, what=f"volume {volume_id} from snapshot {snapshot_id} of volume {source_id}")
        self._rbd("flatten", "--no-progress", part, what=f"flattening volume {volume_id}")
        self._rbd("rename", part, self._image(volume_id), what=f"naming volume {volume_id}")

    def delete(self, volume_id: int) -> bool:
        return self._maybe("rm", "--no-progress", self._image(volume_id), what=f"delete of volume {volume_id}") is not None

    def resize(self, volume_id: int, size_bytes: int) -> None:
        self._rbd("resize", "--no-progress", "--size", f"{size_bytes // MIB}M", self._image(volume_id),
                  what=f"resize of volume {volume_id}")

    def snapshots(self, volume_id: int) -> list[int]:
        return sorted(self._snaps(volume_id))

    def snapshot(self, volume_id: int, snapshot_id: int) -> None:
        self._rbd("snap", "create", "--no-progress", f"{self._image(volume_id)}@snap-{snapshot_id}",
                  what=f"snapshot {snapshot_id} of volume {volume_id}")

    def snapshot_delete(self, volume_id: int, snapshot_id: int) -> bool:
        if snapshot_id not in self._snaps(volume_id):
            return False
        snap = f"{self._image(volume_id)}@snap-{snapshot_id}"
        try:
            self._rbd("snap", "unprotect", snap, what=f"unprotecting snapshot {snapshot_id} of volume {volume_id}")
        except VolumeError as exc:
            if "already unprotected" not in str(exc) and "(22) Invalid argument" not in str(exc):
                raise
        self._rbd("snap", "rm", "--no-progress", snap, what=f"delete of snapshot {snapshot_id} of volume {volume_id}")
        return True

    def snapshot_size(self, volume_id: int, snapshot_id: int) -> int:
        size = self._snaps(volume_id).get(snapshot_id)
        if size is None:
            raise VolumeNotFound(self.hypervisor, f"snapshot {snapshot_id} of volume {volume_id} not found "
                                                  f"in backend {self.name}")
        return size

    def disk(self, volume_id: int, attachment_id: int, device: str, read_only: bool) -> VolumeDisk:
        source = RbdSource(pool=self.config.pool, image=f"{self.config.prefix}vol-{volume_id}", monitors=self.config.monitors,
                           user=self.config.user, secret_uuid=self.secret_uuid)
        return VolumeDisk(volume_id=volume_id, attachment_id=attachment_id, device=device, rbd=source,
                          read_only=read_only)

    def close(self) -> None:
        return None

    # -- the libvirt secret --------------------------------------------------------------------

    @staticmethod
    def secret_uuid_of(backend: str, user: str) -> str:
        """The uuid of the libvirt secret of ``backend``'s cephx ``user``: the same on every start."""
        return str(uuid.uuid5(_NAMESPACE, f"cloudland-{backend}-{user}"))

    def _define_secret(self, conn: libvirt.virConnect) -> str:
        """The uuid of the libvirt ``ceph`` secret holding the user's key: defined (private, so
        libvirt never hands the value back) or found, and its value set from the keyring. A
        driver without secrets (``test:///``, which runs no QEMU) gets none: ""."""
        usage = f"cloudland-{self.name}-{self.config.user}"
        secret_uuid = self.secret_uuid_of(self.name, self.config.user)
        xml = ET.Element("secret", ephemeral="no", private="yes")
        ET.SubElement(xml, "uuid").text = secret_uuid
        ET.SubElement(ET.SubElement(xml, "usage", type="ceph"), "name").text = usage
        try:
            secret = conn.secretDefineXML(ET.tostring(xml, encoding="unicode"), 0)
            secret.setValue(keyring_key(self.config.keyring, self.config.user), 0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT:
                return ""
            raise self._error(f"libvirt secret {secret_uuid} for client.{self.config.user}: {exc}") from exc
        return secret_uuid


def forget_secret(conn: libvirt.virConnect, secret_uuid: str) -> None:
    """Undefine the libvirt secret ``secret_uuid`` if it is there (a test's teardown)."""
    if not secret_uuid:
        return
    try:
        conn.secretLookupByUUIDString(secret_uuid).undefine()
    except libvirt.libvirtError:
        pass
