"""Benchmark volumes on each backend (issue 13, must-show 7, the agent's half): the latency of a
volume's create and attach through the storage driver, and sequential writes with ``qemu-img
bench`` on the same backend, beside the same writes to a raw file of this disk in the same run.

    local   qcow2 files (agents/storage/local.py) attached to a simulated (test:///) domain
    rbd     RBD images on a throwaway single-node Ceph (tests/storage/ceph.py, memstore OSD)
            attached likewise, so the figure is the driver's and Ceph's, not QEMU's

Each latency is the median of ``--volumes`` create + attach pairs. Throughput: ``qemu-img bench
-w -t none`` of ``--count`` 64 KiB sequential writes, depth 1. Not here yet: writes from inside a
guest (tests/realvm). Prints a Markdown table for the README.

    .venv/bin/python bench/volume_bench.py [--volumes 20] [--count 4096]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=20)
    parser.add_argument("--count", type=int, default=4096)
    args = parser.parse_args()
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
        finally:
            ceph.stop()
    print(f"Ceph up with its pool in {ceph_s:.1f} s\n")
    print("| backend | create (median) | attach (median) | qemu-img bench, 64 KiB sequential writes |")
    print("|---|---|---|---|")
    print(f"| raw file, same disk (baseline) | – | – | {baseline:.0f} MiB/s |")
    for backend, create_s, attach_s, mib_s in rows:
        print(f"| {backend} | {create_s * 1000:.0f} ms | {attach_s * 1000:.1f} ms | {mib_s:.0f} MiB/s |")


if __name__ == "__main__":
    main()
