"""The ``vol.*`` agent operations (contract: proto/v1/storage.proto) and each hypervisor's backends.

Every hypervisor has the ``local`` backend: qcow2 files in ``<state dir>/volumes/hv<id>``, a
libvirt ``dir`` pool on a real hypervisor. The operator adds rbd backends with a JSON file
(``CLOUDLAND_RBD_BACKENDS``, the same path on every host; ``load_rbd_backends``): each names a
Ceph pool, its monitors, the cephx user and the keyring file on the host. The operations run on
worker threads: qemu-img, rbd and a live unplug take a moment.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

from cloudland.errors import ConfigError
from cloudland_agents.compute.guests import cache_for
from cloudland_agents.hypervisor import Hypervisor, PerHypervisor
from cloudland_agents.ops import Context, operation
from cloudland_agents.storage.driver import VolumeDriver, Volumes
from cloudland_agents.storage.local import LocalStore
from cloudland_agents.storage.rbd import RbdConfig, RbdStore
from cloudland_agents.storage.store import Store
from cloudland_proto.v1 import storage_pb2 as spb

LOCAL = "local"


def load_rbd_backends(path: str) -> list[RbdConfig]:
    """The rbd backends of the JSON file ``path`` ("" for none): a list of objects with ``name``,
    ``pool``, ``monitors`` (["host:port", ...], msgr2), ``user`` and ``keyring``, and optionally
    ``prefix``. ConfigError naming the file and the entry for anything else."""
    if not path:
        return []
    try:
        entries = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"CLOUDLAND_RBD_BACKENDS {path}: {exc}") from exc
    if not isinstance(entries, list):
        raise ConfigError(f"CLOUDLAND_RBD_BACKENDS {path}: must hold a JSON list of backends")
    backends = []
    for i, entry in enumerate(entries):
        where = f"CLOUDLAND_RBD_BACKENDS {path}, entry {i}"
        try:
            monitors = tuple((host, int(port)) for host, _, port in (m.rpartition(":") for m in entry["monitors"]))
            config = RbdConfig(name=str(entry["name"]), pool=str(entry["pool"]), monitors=monitors,
                               user=str(entry["user"]), keyring=Path(entry["keyring"]),
                               prefix=str(entry.get("prefix", "")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: needs name, pool, monitors (host:port), user and keyring ({exc!r})") from exc
        if config.name == LOCAL or not config.name or not config.monitors or not config.pool:
            raise ConfigError(f"{where}: a name other than {LOCAL!r}, a pool and at least one monitor are needed")
        backends.append(config)
    return backends


def volumes_of(hypervisor: Hypervisor, rbd: Sequence[RbdConfig] = ()) -> Volumes:
    """The storage driver of ``hypervisor``: ``local``, plus the rbd backends given."""
    real = not hypervisor.uri.startswith("test://")
    root = hypervisor.state_dir / "volumes" / f"hv{hypervisor.id}"
    stores: dict[str, Store] = {
        LOCAL: LocalStore(hypervisor.id, root, conn=hypervisor.conn if real else None, pool=pool_name(root)),
    }
    for config in rbd:
        stores[config.name] = RbdStore(hypervisor.id, config, hypervisor.conn)
    return Volumes(hypervisor.id, hypervisor.conn, stores, changed=hypervisor.forget_disks,
                   images=cache_for(hypervisor).base)


def pool_name(root: Path) -> str:
    """The libvirt pool over a local backend's directory: named after its path, so two agents
    (two test sessions) on one libvirtd never share one."""
    return f"cloudland-volumes-{hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:12]}"


# ``storage_for.set`` installs another (rbd backends from the leaf's settings, a fake in tests).
storage_for: PerHypervisor[VolumeDriver] = PerHypervisor(volumes_of)


@operation("vol.create")
def vol_create(ctx: Context, request: spb.VolumeCreateRequest) -> spb.VolumeCreateResult:
    return storage_for(ctx.hypervisor).create(request.volume, request.size_bytes,
                                              request.image if request.HasField("image") else None)


@operation("vol.clone")
def vol_clone(ctx: Context, request: spb.VolumeCloneRequest) -> spb.VolumeCloneResult:
    return storage_for(ctx.hypervisor).clone(request.volume, request.source, request.snapshot_id, request.size_bytes)


@operation("vol.delete")
def vol_delete(ctx: Context, request: spb.VolumeDeleteRequest) -> spb.VolumeDeleteResult:
    return storage_for(ctx.hypervisor).delete(request.volume)


@operation("vol.extend")
def vol_extend(ctx: Context, request: spb.VolumeExtendRequest) -> spb.VolumeExtendResult:
    return storage_for(ctx.hypervisor).extend(request.volume, request.size_bytes, request.domain)


@operation("vol.snapshot")
def vol_snapshot(ctx: Context, request: spb.VolumeSnapshotRequest) -> spb.VolumeSnapshotResult:
    return storage_for(ctx.hypervisor).snapshot(request.volume, request.snapshot_id)


@operation("vol.snapshot_delete")
def vol_snapshot_delete(ctx: Context, request: spb.VolumeSnapshotDeleteRequest) -> spb.VolumeSnapshotDeleteResult:
    return storage_for(ctx.hypervisor).snapshot_delete(request.volume, request.snapshot_id)


@operation("vol.attach")
def vol_attach(ctx: Context, request: spb.VolumeAttachRequest) -> spb.VolumeAttachResult:
    return storage_for(ctx.hypervisor).attach(request.volume, request.domain, request.device, request.attachment_id,
                                              request.read_only)


@operation("vol.detach")
def vol_detach(ctx: Context, request: spb.VolumeDetachRequest) -> spb.VolumeDetachResult:
    return storage_for(ctx.hypervisor).detach(request.volume, request.domain, request.attachment_id)
