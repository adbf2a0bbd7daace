"""A VM's NICs in vm.create (agents/compute/nics.py) on a simulated hypervisor with the fake data
plane: a NIC named by its subnet's VNI lands on this agent's bridge of that VNI with a tap named by
its MAC, both with the agent's prefix; bad NICs are refused before anything is defined. The test
guests that play NICs on the kernel's plane are shown in the lab (tests/network/test_vms.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloudland.errors import InvalidRequest, VMNotFound
from cloudland_agents import ops
from cloudland_agents.compute import nics
from cloudland_agents.compute import ops as _compute_ops  # noqa: F401 - registers vm.*
from cloudland_agents.hypervisor import open_simulated
from cloudland_agents.network.names import Names
from cloudland_agents.network.ops import Network, network_for
from tests.unit.agentcall import call

UUID = "6f1c2a9e-3b7d-4c1e-9a5f-0d2b8c7e4a10"


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[ops.Context]:
    hv = open_simulated(1, tmp_path, vtep="192.0.2.1")
    network_for.set(hv, Network(hv, Names("zq"), fake=True))
    yield ops.Context(hv, "job-1", 0.0, lambda _: None)
    hv.close()


def spec(*nic: dict[str, Any]) -> dict[str, Any]:
    return {"spec": {"name": "cl-web", "uuid": UUID, "vcpus": 1, "memory_mib": 64, "nics": list(nic)}}


def test_a_tenant_nic_is_on_the_vni_bridge_with_a_tap_named_by_its_mac(ctx: ops.Context) -> None:
    port = {"mac": "02:c1:0a:0b:0c:0d", "vni": 4100, "mtu": 1450, "ips": ["10.0.0.2/24"], "gateway": "10.0.0.1",
            "dns_servers": ["10.0.0.254"], "port_id": 7}
    own = {"bridge": "br-own", "mac": "02:c1:00:00:00:01"}  # a bridge of the caller's: left as given
    created = call(ctx, "vm.create", spec(port, own))
    assert [{k: n[k] for k in ("bridge", "mac", "target", "mtu")} for n in created["vm"]["nics"]] == [
        {"bridge": "zqb4100", "mac": "02:c1:0a:0b:0c:0d", "target": "zqt0a0b0c0d", "mtu": 1450},
        {"bridge": "br-own", "mac": "02:c1:00:00:00:01", "target": "", "mtu": 0}]
    # A replay finds it as it was; the fake plane plays no guests and waits for no bridge.
    assert call(ctx, "vm.create", spec(port, own))["created"] is False
    assert not nics.plays_guests(ctx.hypervisor)
    assert call(ctx, "vm.delete", {"name": "cl-web"})["deleted"] is True


@pytest.mark.parametrize(("nic", "message"), [
    ({"mac": "02:c1:00:00:00:01"}, "spec.nics[0] needs a bridge or a vni"),
    ({"mac": "02:c1:00:00:00:01", "vni": 1 << 24}, "spec.nics[0].vni must be in"),
    ({"mac": "02:C1:00:00:00:01", "vni": 5}, "mac must be a lower-case"),
    ({"mac": "02:c1:00:00:00:01", "vni": 5, "mtu": 100}, "'nics[0].mtu' must be 0 or an integer in [576, 9000]"),
])
def test_bad_nics_are_refused_before_anything_is_defined(ctx: ops.Context, nic: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        call(ctx, "vm.create", spec(nic))
    assert message in str(refused.value)
    assert call(ctx, "vm.list")["vms"] == []


def test_tap_names_are_the_prefix_t_and_the_macs_last_four_bytes() -> None:
    names = Names("cl")
    assert names.tap("02:c1:de:ad:be:ef") == "cltdeadbeef"
    assert names.is_tap("cltdeadbeef") and not names.is_tap("xltdeadbeef") and not names.is_tap("cltdeadbee")
    assert len(Names("abcdef").tap("02:c1:de:ad:be:ef")) == 15  # IFNAMSIZ - 1 with the longest prefix
    assert names.parse("cltdeadbeef") is None  # the data plane never takes a NIC for its own object


def test_a_nic_is_attached_and_detached_on_a_running_vm_idempotently(ctx: ops.Context) -> None:
    """The test driver cannot hot-plug: the domain is defined again with the NIC, and runs on."""
    call(ctx, "vm.create", spec({"mac": "02:c1:00:00:00:01", "vni": 4100}))
    nic = {"mac": "02:c1:00:00:00:02", "vni": 4101, "mtu": 1450}
    attached = call(ctx, "vm.attach_nic", {"name": "cl-web", "nic": nic})
    assert attached["attached"] is True and attached["vm"]["state"] == "running"
    assert [(n["bridge"], n["target"]) for n in attached["vm"]["nics"]] == [("zqb4100", "zqt00000001"),
                                                                            ("zqb4101", "zqt00000002")]
    assert call(ctx, "vm.attach_nic", {"name": "cl-web", "nic": nic})["attached"] is False  # a replay
    detached = call(ctx, "vm.detach_nic", {"name": "cl-web", "mac": "02:c1:00:00:00:02"})
    assert detached["detached"] is True and detached["vm"]["state"] == "running"
    assert [n["mac"] for n in detached["vm"]["nics"]] == ["02:c1:00:00:00:01"]
    assert call(ctx, "vm.detach_nic", {"name": "cl-web", "mac": "02:c1:00:00:00:02"})["detached"] is False
    with pytest.raises(InvalidRequest, match="nic is required"):
        call(ctx, "vm.attach_nic", {"name": "cl-web"})
    with pytest.raises(VMNotFound, match="'cl-gone' not found"):
        call(ctx, "vm.detach_nic", {"name": "cl-gone", "mac": "02:c1:00:00:00:02"})
