"""A private libvirtd per lab host (cloudland_lab.libvirt): ``qemu:///system`` inside a host is a
daemon of its own, whose domains and secrets neither another host nor the machine sees, and
whose stop leaves nothing: no domain, no QEMU, no daemon, no mount, no copy."""

from __future__ import annotations

import os
import uuid

import libvirt
import pytest

from cloudland_lab.libvirt import BOUND, PRIVATE, HostLibvirt

pytestmark = [pytest.mark.root]

# A guest with no disk: QEMU runs (SeaBIOS finds nothing to boot and waits), enough for a QEMU process.
DOMAIN = """<domain type='qemu'><name>{name}</name><memory unit='MiB'>32</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os><devices/></domain>"""


def test_each_host_has_its_own_daemon_and_its_stop_leaves_nothing(lab_factory, host_libvirt_factory):
    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    lab = lab_factory(["h1", "h2"])
    one, two = host_libvirt_factory(lab, "h1"), host_libvirt_factory(lab, "h2")
    running, defined = f"lab-run-{uuid.uuid4().hex[:8]}", f"lab-def-{uuid.uuid4().hex[:8]}"
    one.conn.createXML(DOMAIN.format(name=running), 0)
    one.conn.defineXML(DOMAIN.format(name=defined))
    assert (one.conn.getHostname(), two.conn.getHostname()) == ("h1", "h2")
    assert (one.domains(), two.domains()) == (sorted([running, defined]), [])
    # Inside the host, the plain URI reaches its own daemon (what an agent there opens).
    inside = lab.run("h1", ["virsh", "-c", "qemu:///system", "list", "--all", "--name"], capture_output=True,
                     text=True, check=True, timeout=60).stdout.split()
    assert sorted(inside) == sorted([running, defined])
    [qemu] = one.qemu_pids()
    assert two.qemu_pids() == []
    # Not the machine's: its definition is in the host's copy of /etc/libvirt only.
    assert not os.path.exists(f"/etc/libvirt/qemu/{defined}.xml")
    assert lab.run("h1", ["test", "-e", f"/etc/libvirt/qemu/{defined}.xml"]).returncode == 0

    one.stop()
    assert qemu not in one.qemu_pids() and one.qemu_pids() == [] and one.procs == {}
    mounts = lab.run("h1", ["cat", "/proc/self/mountinfo"], capture_output=True, text=True, check=True).stdout
    assert not [point for point in BOUND.values() if f" {point} " in mounts], mounts
    assert lab.run("h1", ["test", "-e", PRIVATE]).returncode == 1
    assert two.domains() == []  # the other host's daemon runs on
    two.stop()
