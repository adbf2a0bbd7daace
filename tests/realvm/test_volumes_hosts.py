"""An ``rbd`` volume moved between QEMU guests on two hypervisors in two lab hosts (issue 13,
must-show 2 across hosts): API -> tree across the lab -> each host's agent -> that host's own
libvirtd -> QEMU (TCG) -> librbd -> a Ceph on the underlay.

The cluster is brought up as an operator would (tests/multihost/cluster.py): ``cloudland up`` on
the controller ``ctl``, one hypervisor on each of ``h1`` and ``h2``, with the libvirt driver on
``qemu:///system``. Inside each of those hosts that URI is a libvirtd of its own
(cloudland_lab.libvirt.HostLibvirt: private /etc/libvirt, /var/lib/libvirt, /var/cache/libvirt,
/var/log/libvirt and /run), so neither hypervisor sees the other's domains, nor does the
machine's shared daemon see either. The throwaway Ceph listens on this machine's address on the
lab's underlay (``Lab.attach_machine``), which QEMU and the ``rbd`` tool in every host reach; each
host's agent gives its own daemon the cephx key as a private libvirt secret.

A guest on h1 writes a marker to the volume, read back on its serial console through the API; the
volume is detached and attached to a guest on h2, which reads the marker.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import libvirt
import pytest

from cloudland_lab import Lab
from cloudland_lab.libvirt import HostLibvirt
from tests.integration.cloud import Cloud
from tests.multihost.cluster import STATE_BASE, LabCloud
from tests.realvm.test_api_to_qemu import BOOT_TIMEOUT_S, console_until, type_until, upload_guest
from tests.realvm.qemu_host import QemuSession, qemu_processes  # noqa: I001 (after test_api_to_qemu: its rewrite)
from tests.realvm.test_volumes_real import PROMPT, ok
from tests.storage.ceph import POOL, USER, CephCluster, ceph_missing

pytest_plugins = ["tests.realvm.qemu_host"]
pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.realvm, pytest.mark.lab, pytest.mark.mpi,
              pytest.mark.timeout(900)]

HOSTS = ("h1", "h2")
BACKEND = "labceph"


@dataclass
class TwoHosts:
    lab: Lab
    cluster: LabCloud
    daemons: dict[str, HostLibvirt]  # host -> its private libvirtd
    ceph: CephCluster
    hv: dict[str, int]  # host -> its hypervisor id

    @property
    def cloud(self) -> Cloud:
        assert self.cluster.cloud is not None
        return self.cluster.cloud

    def only(self, host: str) -> None:
        """Only ``host``'s hypervisor takes new VMs (the scheduler chooses among the enabled)."""
        for name, hv in self.hv.items():
            self.cloud.patch(f"/hypervisors/{hv}", {"enabled": name == host})

    def guest(self, host: str, name: str) -> dict[str, Any]:
        """A running VM ``name`` on ``host``, at its shell prompt (read through the API)."""
        self.only(host)
        [vm] = self.cloud.post("/instances", {"name": name, "flavor": "tiny", "image": "guest"})["instances"]
        ok(self.cloud, {"job": {"id": vm["job_id"]}}, timeout=BOOT_TIMEOUT_S)
        vm = self.cloud.get(f"/instances/{vm['id']}")
        assert (vm["status"], vm["hypervisor_id"]) == ("running", self.hv[host]), vm
        console_until(self.cloud, vm["id"], PROMPT, BOOT_TIMEOUT_S)
        return vm


@pytest.fixture(scope="module")
def two_hosts(session_lab_factory: Any, host_libvirt_factory: Any, qemu_libvirt: QemuSession) -> Iterator[TwoHosts]:
    """The lab (ctl, h1, h2), a private libvirtd in h1 and h2, a Ceph on the underlay, and the
    cluster with a volume type ``ceph`` of it; all stopped and removed afterwards, in that
    order reversed, also when the module failed."""
    reason = ceph_missing()
    if reason is not None:
        pytest.skip(reason)
    lab = session_lab_factory(["ctl", *HOSTS])
    daemons: dict[str, HostLibvirt] = {}
    ceph: CephCluster | None = None
    cluster: LabCloud | None = None
    try:
        underlay = lab.attach_machine()
        for host in HOSTS:
            daemons[host] = host_libvirt_factory(lab, host)
        # /var/tmp, not /tmp: the hosts' agents read the keyring and the backends' file (private /tmp).
        ceph = CephCluster(Path(tempfile.mkdtemp(prefix="cloudland-ceph-", dir="/var/tmp")), underlay).start()
        print(f"\nprivate libvirtds answered in {', '.join(f'{d.started_s:.2f}' for d in daemons.values())} s; "
              f"ceph on {underlay} ready in {ceph.started_s:.1f} s")
        backends = ceph.base / "rbd-backends.json"
        backends.write_text(json.dumps([{"name": BACKEND, "pool": POOL, "user": USER, "keyring": str(ceph.keyring),
                                         "monitors": [f"{h}:{p}" for h, p in ceph.monitors]}]))
        os.chmod(backends, 0o600)
        cluster = LabCloud(lab, list(HOSTS), STATE_BASE / f"cloudland-{lab.prefix}", settings={
            "CLOUDLAND_DRIVER": "libvirt", "CLOUDLAND_LIBVIRT_URI": "qemu:///system",
            "CLOUDLAND_NETWORK_PREFIX": f"v{os.getpid() % 100000}",
            "CLOUDLAND_RBD_BACKENDS": str(backends), "CLOUDLAND_API_VOLUME_TYPES": f"local=local,ceph={BACKEND}"})
        cluster.start(hypervisors=len(HOSTS), per_leaf=1, fanout=4)
        assert cluster.cloud is not None
        cluster.cloud.wait_hypervisors(len(HOSTS))
        ids = cluster.host_ids()
        world = TwoHosts(lab, cluster, daemons, ceph, {host: ids[host][0] for host in HOSTS})
        world.cloud.post("/flavors", {"name": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1})
        upload_guest(world.cloud, qemu_libvirt.guest)
        yield world
    finally:
        errors = []
        if cluster is not None:
            cluster.stop()
        for daemon in daemons.values():  # the guests go with their daemon (all of its domains are ours)
            try:
                daemon.stop()
            except Exception as error:  # noqa: BLE001 - stop every one, report all
                errors.append(str(error))
        if cluster is not None:
            shutil.rmtree(cluster.state_dir, ignore_errors=True)
        if ceph is not None:
            ceph.stop()  # before the lab: it listens on the machine's cable to the lab
        lab.down()
        assert not errors, errors


def test_an_rbd_volume_written_on_one_host_is_read_on_another(two_hosts: TwoHosts,
                                                              qemu_libvirt: QemuSession) -> None:
    world, cloud = two_hosts, two_hosts.cloud
    started = time.monotonic()
    writer = world.guest("h1", "rbd-writer")
    made = cloud.post("/volumes", {"name": "moved", "size_gib": 1, "type": "ceph"})
    ok(cloud, made)
    volume = made["volume"]
    assert (volume["backend"], volume["hypervisor_id"]) == (BACKEND, None)
    ok(cloud, cloud.post(f"/volumes/{volume['id']}/attachments", {"instance": writer["id"]}))
    type_until(cloud, writer["id"], "cat /sys/block/vdb/serial; echo", f"cl-vol-{volume['id']}".encode())
    type_until(cloud, writer["id"], "echo cl-hosts-$((6*7)) | dd of=/dev/vdb bs=512 count=1 conv=fsync "
                                    "2>/dev/null && echo written-$((2*3))", b"written-6")
    attachment = cloud.get(f"/volumes/{volume['id']}")["attachment"]
    ok(cloud, cloud.request("DELETE", f"/volumes/{volume['id']}/attachments/{attachment['id']}"))
    type_until(cloud, writer["id"], "test -e /sys/block/vdb || echo gone-$((1+1))", b"gone-2")

    reader = world.guest("h2", "rbd-reader")
    ok(cloud, cloud.post(f"/volumes/{volume['id']}/attachments", {"instance": reader["id"]}))
    type_until(cloud, reader["id"], "dd if=/dev/vdb bs=14 count=1 2>/dev/null; echo", b"cl-hosts-42")
    moved = time.monotonic() - started

    # Each domain is in its own host's daemon only, its QEMU in that host, with the volume
    # through librbd and the key in that daemon's secret; the machine's daemon has neither.
    domains = {host: f"cl-{vm['uuid']}" for host, vm in (("h1", writer), ("h2", reader))}
    seen = {host: daemon.domains() for host, daemon in world.daemons.items()}
    assert seen == {host: [name] for host, name in domains.items()}, seen
    for host, daemon in world.daemons.items():
        qemu = qemu_processes({domains[host]})
        assert qemu and set(qemu) <= set(daemon.qemu_pids()), (host, qemu, daemon.qemu_pids())
        [secret] = daemon.conn.listAllSecrets()
        assert secret.usageType() == libvirt.VIR_SECRET_USAGE_TYPE_CEPH
    reader_xml = world.daemons["h2"].conn.lookupByName(domains["h2"]).XMLDesc(0)
    assert "protocol='rbd'" in reader_xml and f"name='{world.ceph.address}'" in reader_xml, reader_xml
    machine = {d.name() for d in qemu_libvirt.conn.listAllDomains()}
    assert not machine & set(domains.values()), machine
    print(f"rbd volume written on h1 and read on h2 in {moved:.1f} s (two guests booted under TCG)")
