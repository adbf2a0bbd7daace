"""FakeVolumes: the storage verbs in memory, for unit tests of upper layers.

Same verbs and postconditions as ``Volumes`` (driver.py); the contract suite in
tests/storage/test_storage_contract.py runs against both. It records every call in ``.calls``;
``fail_next(verb, error)`` makes the next call of ``verb`` raise ``error`` (failures injected
through data, as cri-api's fake runtime does). Domains are seeded with ``add_domain``.
"""

from __future__ import annotations

import threading
from typing import Any

from cloudland.errors import InvalidRequest, VolumeBusy, VolumeError, VolumeNotFound
from cloudland_agents.storage.disks import VolumeDisk, disk_xml
from cloudland_agents.storage.driver import ROOT_DEVICE, check_device, check_domain, check_id, check_size, shrinks
from cloudland_proto.v1 import image_pb2 as ipb
from cloudland_proto.v1 import storage_pb2 as spb

Key = tuple[str, int]  # (backend, volume id)


class FakeVolumes:
    """Volumes of backends ``backends`` and the disks of seeded domains, in dicts."""

    def __init__(self, hypervisor: int = 0, backends: tuple[str, ...] = ("local",),
                 live_snapshots: tuple[str, ...] = ()) -> None:
        self.hypervisor = hypervisor
        self.backends = backends
        self.live_snapshots = live_snapshots  # the backends that snapshot under a running guest (rbd's)
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.sizes: dict[Key, int] = {}
        self.content: dict[Key, bytes] = {}  # what a test wrote, to follow snapshots and clones
        self.snaps: dict[Key, dict[int, tuple[int, bytes]]] = {}
        self.domains: dict[str, tuple[bool, list[spb.AttachedDisk]]] = {}  # name -> (running, disks)
        self.images: dict[int, tuple[int, bytes]] = {}  # image id -> (virtual size, content): what the cache holds
        self._failures: dict[str, Exception] = {}
        self._lock = threading.Lock()

    def fail_next(self, verb: str, error: Exception) -> None:
        """Make exactly the next call of ``verb`` raise ``error`` (then behave normally)."""
        with self._lock:
            self._failures[verb] = error

    def add_domain(self, name: str, running: bool = True) -> None:
        self.domains[name] = (running, [spb.AttachedDisk(device="vda", source=f"/fake/{name}.qcow2")])

    def close(self) -> None:
        return None

    def _enter(self, verb: str, *args: Any) -> None:
        self.calls.append((verb, args))
        error = self._failures.pop(verb, None)
        if error is not None:
            raise error

    def _key(self, ref: spb.VolumeRef) -> Key:
        check_id(ref.id, "volume.id")
        if ref.backend not in self.backends:
            raise InvalidRequest(f"volume.backend {ref.backend!r} is not configured on this hypervisor "
                                 f"(it has {', '.join(sorted(self.backends))})")
        return (ref.backend, ref.id)

    def _size(self, key: Key) -> int:
        if key not in self.sizes:
            raise VolumeNotFound(self.hypervisor, f"volume {key[1]} not found in backend {key[0]}")
        return self.sizes[key]

    def path(self, ref: spb.VolumeRef) -> str:
        return f"/fake/{ref.backend}/vol-{ref.id}"

    def _holders(self, ref: spb.VolumeRef) -> list[tuple[str, bool]]:
        return [(name, running) for name, (running, disks) in self.domains.items()
                if any(d.source == self.path(ref) for d in disks)]

    # -- volumes -------------------------------------------------------------------------------

    def create(self, ref: spb.VolumeRef, size_bytes: int,
               image: ipb.ImageSource | None = None) -> spb.VolumeCreateResult:
        with self._lock:
            self._enter("create", ref, size_bytes, image)
            size, key = check_size(size_bytes), self._key(ref)
            created = key not in self.sizes
            if created and image is not None:
                if image.image_id not in self.images:
                    raise VolumeError(self.hypervisor, f"image {image.image_id} cannot be fetched: not in the cache")
                needs, content = self.images[image.image_id]
                if needs > size:
                    raise VolumeError(self.hypervisor, f"image {image.image_id} needs {needs} bytes: volume {ref.id} "
                                                       f"of {size} is too small")
                self.sizes[key], self.content[key] = size, content
            elif created:
                self.sizes[key], self.content[key] = size, b""
            return spb.VolumeCreateResult(size_bytes=self.sizes[key], created=created, path=self.path(ref))

    def clone(self, ref: spb.VolumeRef, source: spb.VolumeRef, snapshot_id: int,
              size_bytes: int) -> spb.VolumeCloneResult:
        with self._lock:
            self._enter("clone", ref, source, snapshot_id, size_bytes)
            check_id(snapshot_id, "snapshot_id")
            size = check_size(size_bytes) if size_bytes else 0
            if source.backend != ref.backend:
                raise InvalidRequest(f"source.backend {source.backend!r} differs from volume.backend "
                                     f"{ref.backend!r}: a clone stays in its backend")
            key, source_key = self._key(ref), self._key(source)
            created = key not in self.sizes
            if created:
                snap = self.snaps.get(source_key, {}).get(snapshot_id)
                if snap is None:
                    raise VolumeNotFound(self.hypervisor, f"snapshot {snapshot_id} of volume {source.id} not found "
                                                          f"in backend {source.backend}")
                self.sizes[key], self.content[key] = snap
            self.sizes[key] = max(self.sizes[key], size)
            return spb.VolumeCloneResult(size_bytes=self.sizes[key], created=created, path=self.path(ref))

    def delete(self, ref: spb.VolumeRef) -> spb.VolumeDeleteResult:
        with self._lock:
            self._enter("delete", ref)
            key = self._key(ref)
            if key not in self.sizes:
                return spb.VolumeDeleteResult(deleted=False)
            if self.snaps.get(key):
                raise VolumeBusy(self.hypervisor, f"volume {ref.id} ({ref.backend}) has snapshots "
                                                  f"{', '.join(map(str, sorted(self.snaps[key])))}: delete them first")
            holders = self._holders(ref)
            if holders:
                raise VolumeBusy(self.hypervisor, f"volume {ref.id} ({ref.backend}) is in use by domain "
                                                  f"{holders[0][0]}: detach it first")
            del self.sizes[key], self.content[key]
            return spb.VolumeDeleteResult(deleted=True)

    def extend(self, ref: spb.VolumeRef, size_bytes: int, domain: str = "") -> spb.VolumeExtendResult:
        with self._lock:
            self._enter("extend", ref, size_bytes, domain)
            size, key = check_size(size_bytes), self._key(ref)
            have = self._size(key)
            if size < have:
                raise shrinks(ref, have, size)
            online = size > have and any(name == domain and running for name, running in self._holders(ref))
            self.sizes[key] = size
            return spb.VolumeExtendResult(size_bytes=size, online=online)

    def snapshot(self, ref: spb.VolumeRef, snapshot_id: int) -> spb.VolumeSnapshotResult:
        with self._lock:
            self._enter("snapshot", ref, snapshot_id)
            check_id(snapshot_id, "snapshot_id")
            key = self._key(ref)
            held = self.snaps.get(key, {}).get(snapshot_id)
            if held is not None:
                return spb.VolumeSnapshotResult(size_bytes=held[0])
            size = self._size(key)
            running = [name for name, active in self._holders(ref) if active]
            if running and ref.backend not in self.live_snapshots:
                raise VolumeBusy(self.hypervisor, f"volume {ref.id} ({ref.backend}) is in use by running domain "
                                                  f"{running[0]}: a local volume is snapshotted detached or "
                                                  f"stopped (this slice)")
            self.snaps.setdefault(key, {})[snapshot_id] = (size, self.content[key])
            return spb.VolumeSnapshotResult(size_bytes=size, created=True)

    def snapshot_delete(self, ref: spb.VolumeRef, snapshot_id: int) -> spb.VolumeSnapshotDeleteResult:
        with self._lock:
            self._enter("snapshot_delete", ref, snapshot_id)
            check_id(snapshot_id, "snapshot_id")
            snaps = self.snaps.get(self._key(ref), {})
            return spb.VolumeSnapshotDeleteResult(deleted=snaps.pop(snapshot_id, None) is not None)

    # -- attachments -----------------------------------------------------------------------------

    def attach(self, ref: spb.VolumeRef, domain: str, device: str, attachment_id: int,
               read_only: bool = False) -> spb.VolumeAttachResult:
        with self._lock:
            self._enter("attach", ref, domain, device, attachment_id, read_only)
            check_domain(domain)
            check_device(device)
            check_id(attachment_id, "attachment_id")
            self._size(self._key(ref))
            if domain not in self.domains:
                raise VolumeNotFound(self.hypervisor, f"domain {domain} not found to attach volume {ref.id}")
            disks = self.domains[domain][1]
            for held in disks:
                if held.attachment_id == attachment_id:
                    return spb.VolumeAttachResult(attached=False)
                if held.device == device:
                    raise VolumeBusy(self.hypervisor, f"device {device} of domain {domain} holds {held.source}: "
                                                      f"volume {ref.id} cannot take it")
            disks.append(spb.AttachedDisk(device=device, source=self.path(ref), volume_id=ref.id,
                                          attachment_id=attachment_id))
            return spb.VolumeAttachResult(attached=True)

    def detach(self, ref: spb.VolumeRef, domain: str, attachment_id: int) -> spb.VolumeDetachResult:
        with self._lock:
            self._enter("detach", ref, domain, attachment_id)
            check_domain(domain)
            check_id(attachment_id, "attachment_id")
            self._key(ref)
            disks = self.domains.get(domain, (False, []))[1]
            kept = [d for d in disks if d.attachment_id != attachment_id]
            detached = len(kept) != len(disks)
            disks[:] = kept
            return spb.VolumeDetachResult(detached=detached)

    def boot_disk(self, ref: spb.VolumeRef, attachment_id: int) -> str:
        with self._lock:
            self._enter("boot_disk", ref, attachment_id)
            check_id(attachment_id, "attachment_id")
            if self._key(ref) not in self.sizes:
                raise VolumeNotFound(self.hypervisor, f"boot volume {ref.id} not found in backend {ref.backend}")
            return disk_xml(VolumeDisk(volume_id=ref.id, attachment_id=attachment_id, device=ROOT_DEVICE,
                                       path=self.path(ref)))

    def disks(self, domain: str) -> list[spb.AttachedDisk]:
        with self._lock:
            if domain not in self.domains:
                raise VolumeNotFound(self.hypervisor, f"domain {domain} not found")
            return list(self.domains[domain][1])

