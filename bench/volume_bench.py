"""Benchmark volumes on each backend (issue 13, must-show 7, the agent's half): the latency of a
volume's create and attach through the storage driver, and sequential writes with ``qemu-img
bench`` on the same backend, beside the same writes to a raw file of this disk in the same run.

    local   qcow2 files (agents/storage/local.py) attached to a simulated (test:///) domain
    rbd     RBD images on a throwaway single-node Ceph (tests/storage/ceph.py, memstore OSD)
            attached likewise, so the figure is the driver's and Ceph's, not QEMU's

Each latency is the median of ``--volumes`` create + attach pairs. Throughput: ``qemu-img bench
-w -t none`` of ``--count`` 64 KiB sequential writes, depth 1.

``--guest`` (root, the machine's libvirtd on qemu:///system, deploy/libvirtd.sh) adds writes from
inside a guest: the test guest (deploy/guest, built here unless ``--guest-dir`` names a build)
boots under QEMU with a fresh ``local`` and a fresh ``rbd`` volume of the same size as vdb and
vdc (disks of its definition, as a boot volume is given), and the guest writes ``--count`` 64 KiB blocks of
zeros to each with busybox ``dd ... conv=fsync`` (through its page cache, flushed at the end: the
time, by the guest's /proc/uptime, includes the flush); beside it, in the same run, ``qemu-img bench`` on a fresh volume of the
same backend. Prints Markdown tables for the README.

    .venv/bin/python bench/volume_bench.py [--volumes 20] [--count 4096] [--guest [--guest-dir DIR]]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tests/ is a package of the repository: the throwaway Ceph

from cloudland_agents.compute.domain import DomainSpec, domain_xml  # noqa: E402
from cloudland_agents.hypervisor import open_simulated  # noqa: E402
from cloudland_agents.storage.driver import Volumes  # noqa: E402
from cloudland_agents.storage.local import LocalStore  # noqa: E402
from cloudland_agents.storage.rbd import RbdConfig, RbdStore  # noqa: E402
from cloudland_agents.storage.store import Store  # noqa: E402
from cloudland_proto.v1 import storage_pb2 as spb  # noqa: E402
from tests.storage.ceph import POOL, USER, CephCluster  # noqa: E402

MIB = 1 << 20
BLOCK = 64 * 1024


def latency(volumes: Volumes, backend: str, count: int) -> tuple[float, float]:
    """Median seconds of a create, and of an attach, of ``count`` 64 MiB volumes."""
    creates, attaches = [], []
    for i in range(1, count + 1):
        ref = spb.VolumeRef(id=i, backend=backend)
        started = time.perf_counter()
        volumes.create(ref, 64 * MIB)
        creates.append(time.perf_counter() - started)
        started = time.perf_counter()
        volumes.attach(ref, "cl-bench", "vdb", i)
        attaches.append(time.perf_counter() - started)
        volumes.detach(ref, "cl-bench", i)
    return statistics.median(creates), statistics.median(attaches)


def throughput(target: str, fmt: str, count: int) -> float:
    """MiB/s of ``count`` sequential 64 KiB writes by ``qemu-img bench`` to ``target``."""
    done = subprocess.run(["qemu-img", "bench", "-w", "-t", "none", "-f", fmt, "-c", str(count), "-d", "1",
                           "-s", str(BLOCK), target], capture_output=True, text=True, timeout=600, check=True)
    seconds = float(re.search(r"Run completed in ([0-9.]+) seconds", done.stdout).group(1))  # type: ignore[union-attr]
    return count * BLOCK / MIB / seconds


GUEST_READY = b"cloudland-guest: ready"


def guest_writes(base: Path, ceph: CephCluster, count: int, guest_dir: Path | None) -> list[tuple[str, float, float]]:
    """(backend, MiB/s written by a guest's dd, MiB/s of qemu-img bench beside it) for ``local``
    and ``rbd`` volumes on the real hypervisor (qemu:///system)."""
    import libvirt

    from cloudland_agents.compute.driver import Disk, LibvirtCompute
    from cloudland_agents.compute.configdrive import build_config_drive
    from cloudland_agents.compute.ops import kvm_usable
    from cloudland_agents.storage.disks import disk_xml
    from cloudland_agents.storage.ops import pool_name
    from cloudland_agents.storage.rbd import forget_secret
    from tests.realvm.qemu_host import console_echo

    work = base / "guest-run"
    work.mkdir(mode=0o755)
    for directory in (base, work):
        directory.chmod(0o755)  # QEMU runs as libvirt-qemu: it must reach the kernel, console log, files
    if guest_dir is None:
        guest_dir = work / "guest"
        subprocess.run([str(REPO / "deploy" / "guest" / "build.sh"), str(guest_dir)], check=True, timeout=600,
                       capture_output=True)
    conn = libvirt.open("qemu:///system")
    name, uuid = f"cl-volbench-{os.getpid()}", str(uuidlib.uuid4())
    drive = work / "config-2.iso"
    build_config_drive(drive, hostname="volbench", uuid=uuid)
    console = work / "console.log"
    spec = DomainSpec(name=name, uuid=uuid, vcpus=1, memory_mib=256, domain_type="kvm" if kvm_usable() else "qemu",
                      disks=(Disk(str(drive), "raw", "hdc", "cdrom"),), kernel=str(guest_dir / "vmlinuz"),
                      initrd=str(guest_dir / "initrd.img"), cmdline="console=ttyS0 quiet", console_log=str(console))
    root = work / "volumes"
    local = LocalStore(0, root, conn=conn, pool=pool_name(root))
    # The libvirt secret's usage is per backend: a name of this run's, so runs never share one.
    rbd_name = f"guestbench{os.getpid()}"
    rbd = RbdStore(0, RbdConfig(name=rbd_name, pool=POOL, monitors=ceph.monitors, user=USER, keyring=ceph.keyring,
                                prefix="guestbench-"), conn)
    volumes = Volumes(0, conn, {"local": local, rbd_name: rbd})
    compute = LibvirtCompute(conn, 0)
    size = count * BLOCK
    rows = []
    targets = ((1, "local", "vdb"), (2, rbd_name, "vdc"))
    try:
        # The volumes are in the domain's definition from its start, as vm.create gives a boot volume.
        disks = []
        for vid, backend, device in targets:
            volumes.create(spb.VolumeRef(id=vid, backend=backend), size)
            disks.append(disk_xml(volumes.stores[backend].disk(vid, vid, device, False)))
        compute.create(spec, tuple(disks))
        deadline = time.monotonic() + 600
        while GUEST_READY not in (console.read_bytes() if console.exists() else b""):
            if time.monotonic() > deadline:
                raise SystemExit(f"the bench guest did not boot within 600 s: {console}")
            time.sleep(0.5)
        dom = conn.lookupByName(name)
        for vid, backend, device in targets:
            # Busybox's dd prints no rate: the guest's own clock (/proc/uptime, 10 ms) times it.
            command = (f"s=$(cut -d' ' -f1 /proc/uptime); dd if=/dev/zero of=/dev/{device} bs=64k count={count} "
                       f"conv=fsync 2>/dev/null; e=$(cut -d' ' -f1 /proc/uptime); echo dd-end-$((1+1))-{device} $s $e")
            done = f"dd-end-2-{device}".encode()
            echoed = console_echo(dom, command.encode(), done, timeout=900)
            found = re.search(done + rb" ([0-9.]+) ([0-9.]+)", echoed)
            if found is None:
                raise SystemExit(f"no dd result from the guest for {device}: {echoed[-600:]!r}")
            guest_mib_s = size / MIB / (float(found.group(2)) - float(found.group(1)))
            bench_ref = spb.VolumeRef(id=10 + vid, backend=backend)
            volumes.create(bench_ref, size)
            target = (local.path(10 + vid) if backend == "local" else
                      f"rbd:{POOL}/guestbench-vol-{10 + vid}:id={USER}:keyring={ceph.keyring}:conf={ceph.client_conf}")
            bench_mib_s = throughput(target, "qcow2" if backend == "local" else "raw", count)
            rows.append(("local" if backend == "local" else "rbd", guest_mib_s, bench_mib_s))
    finally:
        try:
            compute.delete(name)
        finally:
            for pool in conn.listAllStoragePools():
                if pool.name() == pool_name(root):
                    pool.destroy()
            forget_secret(conn, rbd.secret_uuid)
            conn.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=20)
    parser.add_argument("--count", type=int, default=4096)
    parser.add_argument("--guest", action="store_true", help="also writes from inside a QEMU guest (root, libvirtd)")
    parser.add_argument("--guest-dir", type=Path, help="a built test guest (deploy/guest/build.sh) to reuse")
    args = parser.parse_args()
    load = os.getloadavg()[0]
    guest_rows: list[tuple[str, float, float]] = []
    size = args.count * BLOCK
    with tempfile.TemporaryDirectory(prefix="cloudland-volume-bench-") as tmp:
        base = Path(tmp)
        hv = open_simulated(0, base)
        hv.conn.defineXML(domain_xml(DomainSpec(name="cl-bench", uuid="00000000-0000-4000-8000-00000000be7c",
                                                vcpus=1, memory_mib=64))).create()
        ceph = CephCluster(base / "ceph")
        began = time.perf_counter()
        ceph.start()
        ceph_s = time.perf_counter() - began
        try:
            local = LocalStore(0, base / "volumes")
            rbd = RbdStore(0, RbdConfig(name="ceph", pool=POOL, monitors=ceph.monitors, user=USER,
                                        keyring=ceph.keyring, prefix="bench-"), hv.conn)
            stores: dict[str, Store] = {"local": local, "ceph": rbd}
            volumes = Volumes(0, hv.conn, stores)
            rows = []
            raw = base / "baseline.raw"
            subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(raw), str(size)], check=True)
            baseline = throughput(str(raw), "raw", args.count)
            for backend, target, fmt in (
                    ("local", None, "qcow2"),
                    ("ceph", f"rbd:{POOL}/bench-vol-9999:id={USER}:keyring={ceph.keyring}:conf={ceph.client_conf}",
                     "raw")):
                create_s, attach_s = latency(volumes, backend, args.volumes)
                volumes.create(spb.VolumeRef(id=9999, backend=backend), size)
                mib_s = throughput(target or stores[backend].path(9999), fmt, args.count)
                rows.append((backend, create_s, attach_s, mib_s))
            if args.guest:
                guest_rows = guest_writes(base, ceph, args.count, args.guest_dir)
        finally:
            ceph.stop()
    print(f"Ceph up with its pool in {ceph_s:.1f} s; load average {load:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end\n")
    print("| backend | create (median) | attach (median) | qemu-img bench, 64 KiB sequential writes |")
    print("|---|---|---|---|")
    print(f"| raw file, same disk (baseline) | – | – | {baseline:.0f} MiB/s |")
    for backend, create_s, attach_s, mib_s in rows:
        print(f"| {backend} | {create_s * 1000:.0f} ms | {attach_s * 1000:.1f} ms | {mib_s:.0f} MiB/s |")
    if guest_rows:
        print(f"\n| backend | a guest's dd, {args.count} x 64 KiB, conv=fsync | qemu-img bench beside it |")
        print("|---|---|---|")
        for backend, guest_mib_s, bench_mib_s in guest_rows:
            print(f"| {backend} | {guest_mib_s:.0f} MiB/s | {bench_mib_s:.0f} MiB/s |")


if __name__ == "__main__":
    main()
