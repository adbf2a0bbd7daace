"""The ``vol.*`` operations as the leaf runs them (agents/storage/ops.py) on a simulated
hypervisor's real ``local`` backend, the hypervisor's report of each domain's disks
(VmState.disks), and the operator's rbd backends file."""

from __future__ import annotations

import json
from pathlib import Path

import libvirt
import pytest

from cloudland.errors import ConfigError, InvalidRequest
from cloudland_agents import ops
from cloudland_agents.compute.domain import DomainSpec, domain_xml
from cloudland_agents.hypervisor import DISKS_REREAD_REPORTS, open_simulated
from cloudland_agents.storage.disks import VolumeDisk, with_disk
from cloudland_agents.storage.ops import load_rbd_backends, storage_for
from tests.unit.agentcall import call

HV = 6
UUID = "00000000-0000-4000-8000-00000000abcd"


@pytest.fixture
def ctx(tmp_path: Path) -> ops.Context:
    hv = open_simulated(HV, tmp_path)
    hv.conn.defineXML(domain_xml(DomainSpec(name="cl-web", uuid=UUID, vcpus=1, memory_mib=64))).create()
    return ops.Context(hv, "job-1", 0.0, lambda _b: None)


def _vm_disks(ctx: ops.Context) -> list[tuple[str, int, int]]:
    [vm] = [vm for vm in ctx.hypervisor.report().vms if vm.name == "cl-web"]
    return [(d.device, d.volume_id, d.attachment_id) for d in vm.disks]


def test_operations_run_and_the_report_follows_attachments(ctx: ops.Context, tmp_path: Path) -> None:
    vol = {"id": 3, "backend": "local"}
    made = call(ctx, "vol.create", {"volume": vol, "size_bytes": 2 << 20})
    assert made["created"] is True and made["path"].startswith(str(tmp_path / "volumes" / f"hv{HV}"))
    assert call(ctx, "vol.create", {"volume": vol, "size_bytes": 2 << 20})["created"] is False  # replayed job
    assert _vm_disks(ctx) == []  # read once: the domain has no disk yet
    call(ctx, "vol.attach", {"volume": vol, "domain": "cl-web", "device": "vdb", "attachment_id": 11})
    assert _vm_disks(ctx) == [("vdb", 3, 11)]  # the attach made the report read the domain again
    assert call(ctx, "vol.extend", {"volume": vol, "size_bytes": 4 << 20, "domain": "cl-web"})["size_bytes"] == 4 << 20
    call(ctx, "vol.detach", {"volume": vol, "domain": "cl-web", "attachment_id": 11})
    assert _vm_disks(ctx) == []
    assert call(ctx, "vol.detach", {"volume": vol, "domain": "cl-web", "attachment_id": 11})["detached"] is False
    assert call(ctx, "vol.delete", {"volume": vol})["deleted"] is True
    assert storage_for(ctx.hypervisor) is storage_for(ctx.hypervisor)  # one driver per hypervisor: one set of locks


def test_a_bad_request_names_its_field(ctx: ops.Context) -> None:
    with pytest.raises(InvalidRequest, match="device must be vdb"):
        call(ctx, "vol.attach", {"volume": {"id": 1, "backend": "local"}, "domain": "cl-web", "device": "sda",
                                 "attachment_id": 1})
    with pytest.raises(InvalidRequest, match="backend 'ceph' is not configured on this hypervisor"):
        call(ctx, "vol.create", {"volume": {"id": 1, "backend": "ceph"}, "size_bytes": 1 << 20})


def test_rbd_backends_file(tmp_path: Path) -> None:
    path = tmp_path / "rbd.json"
    path.write_text(json.dumps([{"name": "ceph", "pool": "volumes", "monitors": ["10.0.0.1:3300"],
                                 "user": "cloudland", "keyring": "/etc/ceph/k"}]))
    [config] = load_rbd_backends(str(path))
    assert (config.name, config.pool, config.monitors, config.user) == ("ceph", "volumes", (("10.0.0.1", 3300),),
                                                                        "cloudland")
    assert load_rbd_backends("") == []
    path.write_text(json.dumps([{"name": "local", "pool": "p", "monitors": ["h:1"], "user": "u", "keyring": "k"}]))
    with pytest.raises(ConfigError, match="entry 0: a name other than 'local'"):
        load_rbd_backends(str(path))
    path.write_text(json.dumps([{"name": "ceph"}]))
    with pytest.raises(ConfigError, match="entry 0: needs name, pool, monitors"):
        load_rbd_backends(str(path))


def test_a_disk_attached_by_hand_is_reported_within_a_round_of_reports(ctx: ops.Context, tmp_path: Path) -> None:
    """Disks are read once per domain, then again in turns (DISKS_REREAD_REPORTS): a disk someone
    attached with libvirt, not through a vol.* verb, shows up, with no attachment id."""
    hv = ctx.hypervisor
    for i in range(2, 2 + 2 * DISKS_REREAD_REPORTS):  # more domains than one report re-reads
        uuid = f"00000000-0000-4000-8000-{i:012x}"
        hv.conn.defineXML(domain_xml(DomainSpec(name=f"cl-{uuid}", uuid=uuid, vcpus=1, memory_mib=64))).create()
    assert _vm_disks(ctx) == []
    dom = hv.conn.lookupByName("cl-web")
    by_hand = VolumeDisk(volume_id=0, attachment_id=0, device="vdq", path=str(tmp_path / "x.qcow2"))
    hv.conn.defineXML(with_disk(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), by_hand))
    seen = [_vm_disks(ctx) for _ in range(DISKS_REREAD_REPORTS + 1)]
    assert seen[-1] == [("vdq", 0, 0)]
