"""The storage driver: volumes on one hypervisor's backends, and their disks in its domains.

Vocabulary
    volume      block storage that outlives VMs, named by CloudLand's id in one *backend*.
    backend     a ``Store`` (store.py) configured on the hypervisor under a name: ``local``
                (local.py: qcow2 files) or an rbd one (rbd.py: a Ceph pool).
    snapshot    a volume's content at one moment, named by CloudLand's snapshot id.
    attachment  one volume as disk ``device`` (vdb...) of one domain, named by its id; the disk
                carries alias ``ua-clatt-<id>`` and serial ``cl-vol-<volume id>`` (disks.py).

Verbs and their postconditions (``Volumes`` here, ``FakeVolumes`` in fake.py; each returns the
result message of its operation, proto/v1/storage.proto, whose comments are the contract)
    create(ref, size, image)        the volume exists, at least ``size`` (whole MiB), blank or with the
                                    image's content. Replay: as it is.
    clone(ref, source, snap, size)  the volume exists with the snapshot's content, standalone.
    delete(ref)                     no such volume. Refused (VolumeBusy) while it has snapshots or
                                    a domain here holds it.
    extend(ref, size, domain)       its size is at least ``size``; live under a running ``domain``.
    snapshot(ref, snap)             the snapshot exists (local: refused while a running domain holds it).
    snapshot_delete(ref, snap)      no such snapshot.
    attach(ref, domain, device, attachment, read_only)
                                    the domain has the disk, persistently and, if it runs, live.
    detach(ref, domain, attachment) the domain has no disk of that attachment (others untouched).
    disks(domain)                   the domain's disks (``AttachedDisk``), from its definition.
    boot_disk(ref, attachment)      the ``<disk>`` XML of a VM that boots from the volume (vda, by
                                    the attachment's alias), for vm.create to define it with.

Verbs on one volume are serialised by a lock per volume, those that edit a domain by a lock per
domain (agents/locks.py); others proceed. Every libvirtError is translated here into a
VolumeError naming the hypervisor, the volume and the domain.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol

import libvirt

from cloudland.errors import InvalidRequest, VolumeBusy, VolumeError, VolumeNotFound
from cloudland_agents.locks import KeyLocks
from cloudland_agents.storage.disks import ALIAS_PREFIX, DEVICE, disk_xml, disks_of, with_disk, without_alias
from cloudland_agents.storage.store import MAX_BYTES, Store, virtual_size, whole_mib
from cloudland_proto.v1 import image_pb2 as ipb
from cloudland_proto.v1 import storage_pb2 as spb

DETACH_WAIT_S = 30.0  # a live unplug needs the guest's consent; its kernel answers within seconds


class VolumeDriver(Protocol):
    """The verbs, as the contract suite (tests/storage/test_storage_contract.py) calls them."""

    def create(self, ref: spb.VolumeRef, size_bytes: int,
               image: ipb.ImageSource | None = None) -> spb.VolumeCreateResult: ...
    def clone(self, ref: spb.VolumeRef, source: spb.VolumeRef, snapshot_id: int,
              size_bytes: int) -> spb.VolumeCloneResult: ...
    def delete(self, ref: spb.VolumeRef) -> spb.VolumeDeleteResult: ...
    def extend(self, ref: spb.VolumeRef, size_bytes: int, domain: str = "") -> spb.VolumeExtendResult: ...
    def snapshot(self, ref: spb.VolumeRef, snapshot_id: int) -> spb.VolumeSnapshotResult: ...
    def snapshot_delete(self, ref: spb.VolumeRef, snapshot_id: int) -> spb.VolumeSnapshotDeleteResult: ...
    def attach(self, ref: spb.VolumeRef, domain: str, device: str, attachment_id: int,
               read_only: bool = False) -> spb.VolumeAttachResult: ...
    def detach(self, ref: spb.VolumeRef, domain: str, attachment_id: int) -> spb.VolumeDetachResult: ...
    def disks(self, domain: str) -> list[spb.AttachedDisk]: ...
    def boot_disk(self, ref: spb.VolumeRef, attachment_id: int) -> str: ...


# -- validation, shared with the fake ----------------------------------------------------------


def check_id(value: int, field: str) -> int:
    if value <= 0:
        raise InvalidRequest(f"{field} must be a positive id, got {value}")
    return value


def check_size(size_bytes: int, field: str = "size_bytes") -> int:
    """``size_bytes`` as volumes are made (whole MiB); InvalidRequest out of (0, 64 TiB]."""
    if not 0 < size_bytes <= MAX_BYTES:
        raise InvalidRequest(f"{field} must be in (0, {MAX_BYTES}], got {size_bytes}")
    return whole_mib(size_bytes)


ROOT_DEVICE = "vda"  # a VM's root disk: a boot volume's device


def check_device(device: str) -> str:
    if DEVICE.fullmatch(device) is None:
        raise InvalidRequest(f"device must be vdb..vdz or vdaa..vdaz (vda is the root disk's), got {device!r}")
    return device


def check_domain(domain: str) -> str:
    if not domain or len(domain) > 128:
        raise InvalidRequest(f"domain must name a domain (1-128 characters), got {domain!r}")
    return domain


def shrinks(ref: spb.VolumeRef, have: int, want: int) -> InvalidRequest:
    return InvalidRequest(f"volume {ref.id} is {have} bytes; volumes never shrink, so {want} is refused")


# -- the libvirt driver ---------------------------------------------------------------------------


class Volumes:
    """Volumes of hypervisor ``hypervisor`` in ``stores`` (backend name -> Store), attached to the
    domains of libvirt connection ``conn``. ``changed(uuid)`` is told after a domain's disks change,
    so the hypervisor's report reads them again."""

    def __init__(self, hypervisor: int, conn: libvirt.virConnect, stores: dict[str, Store],
                 changed: Callable[[str], None] = lambda _uuid: None,
                 images: Callable[[ipb.ImageSource], Path] | None = None) -> None:
        self.hypervisor = hypervisor
        self.conn = conn
        self.stores = stores
        self.changed = changed
        self.images = images  # an image's file in the hypervisor's cache (agents/images/cache.py)
        self._locks = KeyLocks()

    def close(self) -> None:
        for store in self.stores.values():
            store.close()

    # -- helpers ---------------------------------------------------------------------------------

    def _store(self, ref: spb.VolumeRef) -> Store:
        check_id(ref.id, "volume.id")
        store = self.stores.get(ref.backend)
        if store is None:
            raise InvalidRequest(f"volume.backend {ref.backend!r} is not configured on this hypervisor "
                                 f"(it has {', '.join(sorted(self.stores)) or 'none'})")
        return store

    @contextmanager
    def _volume(self, ref: spb.VolumeRef) -> Iterator[Store]:
        store = self._store(ref)
        with self._locks.hold(("volume", ref.backend, ref.id)):
            yield store

    def _error(self, ref: spb.VolumeRef, domain: str, what: str, exc: libvirt.libvirtError) -> VolumeError:
        where = f" on domain {domain}" if domain else ""
        return VolumeError(self.hypervisor, f"{what} of volume {ref.id} ({ref.backend}){where}: {exc}")

    def _domain(self, name: str) -> libvirt.virDomain | None:
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise VolumeError(self.hypervisor, f"looking up domain {name}: {exc}") from exc

    def _holders(self, ref: spb.VolumeRef, store: Store) -> list[tuple[str, bool]]:
        """(name, running) of every domain here whose definition or live state has the volume."""
        path = store.path(ref.id)
        held = []
        for dom in self.conn.listAllDomains():
            try:
                active = bool(dom.isActive())
                xmls = [dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)] + ([dom.XMLDesc(0)] if active else [])
            except libvirt.libvirtError:
                continue  # undefined meanwhile
            if any(d.source == path for xml in xmls for d in disks_of(xml)):
                held.append((dom.name(), active))
        return held

    # -- volumes ---------------------------------------------------------------------------------

    def create(self, ref: spb.VolumeRef, size_bytes: int,
               image: ipb.ImageSource | None = None) -> spb.VolumeCreateResult:
        size = check_size(size_bytes)
        if image is not None and self.images is None:
            raise InvalidRequest(f"volume {ref.id}: this hypervisor has no image cache to make a volume from image "
                                 f"{image.image_id}")
        with self._volume(ref) as store:
            created = not store.exists(ref.id)
            if created and image is not None and self.images is not None:
                base = self.images(image)
                fmt = image.disk_format or "qcow2"
                needs = virtual_size(base, fmt, lambda m: VolumeError(self.hypervisor, m))
                if needs > size:
                    raise VolumeError(self.hypervisor, f"image {image.image_id} needs {needs} bytes: volume {ref.id} "
                                                       f"of {size} is too small")
                store.create_from(ref.id, base, fmt, size)
            elif created:
                store.create(ref.id, size)
            return spb.VolumeCreateResult(size_bytes=store.size(ref.id), created=created, path=store.path(ref.id))

    def clone(self, ref: spb.VolumeRef, source: spb.VolumeRef, snapshot_id: int,
              size_bytes: int) -> spb.VolumeCloneResult:
        check_id(snapshot_id, "snapshot_id")
        size = check_size(size_bytes) if size_bytes else 0
        if source.backend != ref.backend:
            raise InvalidRequest(f"source.backend {source.backend!r} differs from volume.backend {ref.backend!r}: "
                                 f"a clone stays in its backend")
        self._store(source)
        with self._volume(ref) as store:
            created = not store.exists(ref.id)
            if created:
                store.clone(ref.id, source.id, snapshot_id)
            if size > store.size(ref.id):
                store.resize(ref.id, size)
            return spb.VolumeCloneResult(size_bytes=store.size(ref.id), created=created, path=store.path(ref.id))

    def delete(self, ref: spb.VolumeRef) -> spb.VolumeDeleteResult:
        with self._volume(ref) as store:
            if not store.exists(ref.id):
                return spb.VolumeDeleteResult(deleted=False)
            snaps = store.snapshots(ref.id)
            if snaps:
                raise VolumeBusy(self.hypervisor, f"volume {ref.id} ({ref.backend}) has snapshots "
                                                  f"{', '.join(map(str, snaps))}: delete them first")
            holders = self._holders(ref, store)
            if holders:
                raise VolumeBusy(self.hypervisor, f"volume {ref.id} ({ref.backend}) is in use by domain "
                                                  f"{holders[0][0]}: detach it first")
            return spb.VolumeDeleteResult(deleted=store.delete(ref.id))

    def extend(self, ref: spb.VolumeRef, size_bytes: int, domain: str = "") -> spb.VolumeExtendResult:
        size = check_size(size_bytes)
        with self._volume(ref) as store:
            have = store.size(ref.id)
            if size < have:
                raise shrinks(ref, have, size)
            if size == have:
                return spb.VolumeExtendResult(size_bytes=have)
            dom = self._domain(domain) if domain else None
            if dom is not None and dom.isActive():
                device = next((d.device for d in disks_of(dom.XMLDesc(0)) if d.source == store.path(ref.id)), "")
                if device:
                    try:
                        dom.blockResize(device, size, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)
                        return spb.VolumeExtendResult(size_bytes=store.size(ref.id), online=True)
                    except libvirt.libvirtError as exc:
                        if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:  # test:///: no QEMU has it open
                            raise self._error(ref, domain, "live resize", exc) from exc
            store.resize(ref.id, size)
            return spb.VolumeExtendResult(size_bytes=store.size(ref.id))

    def snapshot(self, ref: spb.VolumeRef, snapshot_id: int) -> spb.VolumeSnapshotResult:
        check_id(snapshot_id, "snapshot_id")
        with self._volume(ref) as store:
            if snapshot_id in store.snapshots(ref.id):
                return spb.VolumeSnapshotResult(size_bytes=store.snapshot_size(ref.id, snapshot_id))
            size = store.size(ref.id)  # VolumeNotFound first
            running = [name for name, active in self._holders(ref, store) if active]
            if running and not store.live_snapshots:
                raise VolumeBusy(self.hypervisor, f"volume {ref.id} ({ref.backend}) is in use by running domain "
                                                  f"{running[0]}: a local volume is snapshotted detached or "
                                                  f"stopped (this slice)")
            store.snapshot(ref.id, snapshot_id)
            return spb.VolumeSnapshotResult(size_bytes=size, created=True)

    def snapshot_delete(self, ref: spb.VolumeRef, snapshot_id: int) -> spb.VolumeSnapshotDeleteResult:
        check_id(snapshot_id, "snapshot_id")
        with self._volume(ref) as store:
            return spb.VolumeSnapshotDeleteResult(deleted=store.snapshot_delete(ref.id, snapshot_id))

    # -- attachments -------------------------------------------------------------------------------

    def attach(self, ref: spb.VolumeRef, domain: str, device: str, attachment_id: int,
               read_only: bool = False) -> spb.VolumeAttachResult:
        check_domain(domain)
        check_device(device)
        check_id(attachment_id, "attachment_id")
        with self._volume(ref) as store, self._locks.hold(("domain", domain)):
            if not store.exists(ref.id):
                raise VolumeNotFound(self.hypervisor, f"volume {ref.id} not found in backend {ref.backend}")
            dom = self._domain(domain)
            if dom is None:
                raise VolumeNotFound(self.hypervisor, f"domain {domain} not found to attach volume {ref.id}")
            try:
                for held in self.disks(domain) + (disks_of(dom.XMLDesc(0)) if dom.isActive() else []):
                    if held.attachment_id == attachment_id:
                        return spb.VolumeAttachResult(attached=False)
                    if held.device == device:
                        raise VolumeBusy(self.hypervisor, f"device {device} of domain {domain} holds "
                                                          f"{held.source or 'a disk'}: volume {ref.id} cannot take it")
                xml = disk_xml(store.disk(ref.id, attachment_id, device, read_only))
                flags = libvirt.VIR_DOMAIN_AFFECT_CONFIG | (libvirt.VIR_DOMAIN_AFFECT_LIVE if dom.isActive() else 0)
                try:
                    dom.attachDeviceFlags(xml, flags)
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                        raise
                    # test:///: no hotplug; the definition is what a simulated domain has.
                    self.conn.defineXML(with_disk(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE),
                                                  store.disk(ref.id, attachment_id, device, read_only)))
            except libvirt.libvirtError as exc:
                raise self._error(ref, domain, f"attach as {device}", exc) from exc
            self.changed(dom.UUIDString())
            return spb.VolumeAttachResult(attached=True)

    def detach(self, ref: spb.VolumeRef, domain: str, attachment_id: int) -> spb.VolumeDetachResult:
        check_domain(domain)
        check_id(attachment_id, "attachment_id")
        self._store(ref)
        alias = f"{ALIAS_PREFIX}{attachment_id}"
        with self._locks.hold(("domain", domain)):
            dom = self._domain(domain)
            if dom is None:
                return spb.VolumeDetachResult(detached=False)
            try:
                in_config = any(d.attachment_id == attachment_id for d in self.disks(domain))
                in_live = bool(dom.isActive()) and self._live_has(dom, attachment_id)
                if not (in_config or in_live):
                    return spb.VolumeDetachResult(detached=False)
                flags = ((libvirt.VIR_DOMAIN_AFFECT_CONFIG if in_config else 0)
                         | (libvirt.VIR_DOMAIN_AFFECT_LIVE if in_live else 0))
                try:
                    dom.detachDeviceAlias(alias, flags)
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() != libvirt.VIR_ERR_NO_SUPPORT:
                        raise
                    edited = without_alias(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), alias)
                    if edited is not None:
                        self.conn.defineXML(edited)
                if in_live:
                    self._await_unplug(dom, ref, domain, attachment_id)
            except libvirt.libvirtError as exc:
                raise self._error(ref, domain, f"detach of attachment {attachment_id}", exc) from exc
            self.changed(dom.UUIDString())
            return spb.VolumeDetachResult(detached=True)

    def _live_has(self, dom: libvirt.virDomain, attachment_id: int) -> bool:
        return any(d.attachment_id == attachment_id for d in disks_of(dom.XMLDesc(0)))

    def _await_unplug(self, dom: libvirt.virDomain, ref: spb.VolumeRef, domain: str, attachment_id: int) -> None:
        """A live unplug ends when the guest lets go of the disk: wait for it, or fail naming it (a
        replay of the job asks again)."""
        deadline = time.monotonic() + DETACH_WAIT_S
        while dom.isActive() and self._live_has(dom, attachment_id):
            if time.monotonic() > deadline:
                raise VolumeError(self.hypervisor, f"domain {domain} did not release volume {ref.id} (attachment "
                                                   f"{attachment_id}) within {DETACH_WAIT_S:g}s")
            time.sleep(0.1)

    def boot_disk(self, ref: spb.VolumeRef, attachment_id: int) -> str:
        check_id(attachment_id, "attachment_id")
        with self._volume(ref) as store:
            if not store.exists(ref.id):
                raise VolumeNotFound(self.hypervisor, f"boot volume {ref.id} not found in backend {ref.backend}")
            return disk_xml(store.disk(ref.id, attachment_id, ROOT_DEVICE, False))

    def disks(self, domain: str) -> list[spb.AttachedDisk]:
        dom = self._domain(domain)
        if dom is None:
            raise VolumeNotFound(self.hypervisor, f"domain {domain} not found")
        return disks_of(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
