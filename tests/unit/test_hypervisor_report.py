"""Hypervisor.report() while worker threads delete VMs on the same libvirt connection.

The report is read on the rank's MPI thread (hello, every heartbeat), where nothing
catches an exception: a domain undefined between ``listAllDomains`` and the
per-domain calls once raised VIR_ERR_NO_DOMAIN there and killed the leaf
(1000 VMs deleted at once through the all-in-one cloud lost two leaves).
"""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import libvirt

from cloudland_agents.compute.driver import DomainSpec, LibvirtCompute
from cloudland_agents.hypervisor import open_simulated, underlay_address

HV = 2


def spec(name: str, memory_mib: int = 256) -> DomainSpec:
    return DomainSpec(name=name, uuid=str(uuid.uuid5(uuid.NAMESPACE_DNS, name)), vcpus=1, memory_mib=memory_mib)


class DeleteAfterListing:
    """The connection, except that ``victim`` is deleted just after every domain is listed."""

    def __init__(self, conn: libvirt.virConnect, compute: LibvirtCompute, victim: str) -> None:
        self._conn, self._compute, self._victim = conn, compute, victim

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def listAllDomains(self, flags: int = 0) -> list[libvirt.virDomain]:  # noqa: N802 - libvirt's name
        domains = self._conn.listAllDomains(flags)
        self._compute.delete(self._victim)
        return domains


def test_report_leaves_out_a_vm_deleted_while_it_was_listing(tmp_path: Path) -> None:
    hv = open_simulated(HV, tmp_path)
    compute = LibvirtCompute(hv.conn, hv.id)
    compute.create(spec("keep", memory_mib=512))
    compute.create(spec("gone", memory_mib=1024))
    memory_kib = hv.report().memory_kib
    hv.conn = DeleteAfterListing(hv.conn, compute, "gone")  # type: ignore[assignment]

    report = hv.report()  # raised DriverError: Domain not found ... (vm 'gone')

    assert [(vm.name, vm.state) for vm in report.vms] == [("keep", "running")]
    assert (report.domains, report.running_domains) == (1, 1)
    assert report.free_memory_kib == memory_kib - 512 * 1024  # 'gone' holds no memory any more
    hv.close()


def test_report_beside_64_threads_deleting_300_vms(tmp_path: Path) -> None:
    """The leaf's situation: heartbeats report while the worker pool deletes every VM."""
    hv = open_simulated(HV, tmp_path)
    compute = LibvirtCompute(hv.conn, hv.id)
    names = [f"vm-{i:03d}" for i in range(300)]
    for name in names:
        compute.create(spec(name))
    done = threading.Event()
    reports = []

    def heartbeat() -> None:
        while not done.is_set():
            reports.append(hv.report())

    beats = ThreadPoolExecutor(1)
    beating = beats.submit(heartbeat)
    try:
        with ThreadPoolExecutor(64) as pool:
            deleted = list(pool.map(compute.delete, names))
    finally:
        done.set()
        beats.shutdown()
    beating.result()  # re-raises what report() raised
    assert all(d["deleted"] for d in deleted)
    assert reports and all(r.domains == len(r.vms) >= r.running_domains for r in reports)
    final = hv.report()
    assert (final.domains, list(final.vms), final.free_memory_kib) == (0, [], final.memory_kib)
    hv.close()


def test_the_report_names_the_hosts_vtep_from_its_listen_address(tmp_path: Path) -> None:
    # The leaf's listen address (the host's address toward the root) is where its VXLAN tunnels end.
    assert [underlay_address(a) for a in ("10.77.0.3", "127.0.0.1", "0.0.0.0", "", "host-1", "::1")] == [
        "10.77.0.3", "127.0.0.1", "", "", "", ""]
    hypervisor = open_simulated(HV, tmp_path, vtep="10.77.0.3")
    try:
        assert hypervisor.report().vtep == "10.77.0.3"
    finally:
        hypervisor.close()
    assert open_simulated(HV, tmp_path).report().vtep == ""
