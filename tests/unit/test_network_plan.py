"""What a hypervisor must have of its VPCs (agents/network/desired.py), its names, and the checks
of net.sync's input: a table of states in, subnets, entries and leases out; no kernel."""

from __future__ import annotations

import pytest

from cloudland.errors import InvalidRequest
from cloudland_agents.network.desired import HeldStates, check_vpc, plan
from cloudland_agents.network.names import Names
from cloudland_agents.network.delta import applied
from cloudland_proto.v1 import network_pb2 as npb

SUBNET = npb.NetSubnet(id=1, vpc_id=7, vni=100, cidr="10.0.0.0/24", gateway="10.0.0.1", dhcp=True)


def port(n: int, hypervisor: int, subnet: int = 1, vtep: str = "") -> npb.NetPort:
    return npb.NetPort(id=n, subnet_id=subnet, mac=f"02:00:00:00:00:{n:02x}", ips=[f"10.0.0.{n}"],
                       hostname=f"Web_{n}", hypervisor=hypervisor, vtep=vtep or f"192.0.2.{hypervisor}")


def vpc(*ports: npb.NetPort, subnets: tuple[npb.NetSubnet, ...] = (SUBNET,)) -> npb.NetVpcState:
    return npb.NetVpcState(vpc_id=7, generation=1, domain="vpc-7.test", subnets=subnets, ports=ports)


def test_remote_ports_are_entries_local_ports_leases_and_every_port_a_name() -> None:
    plans = plan([vpc(port(5, 1), port(6, 2), port(7, 3))], hypervisor=1, local_vtep="192.0.2.1")
    assert list(plans) == [100]
    subnet = plans[100]
    assert subnet.mtu == 1450
    assert subnet.fdb == {"02:00:00:00:00:06": "192.0.2.2", "02:00:00:00:00:07": "192.0.2.3"}
    assert subnet.neighbours == {"10.0.0.6": "02:00:00:00:00:06", "10.0.0.7": "02:00:00:00:00:07"}
    assert subnet.dhcp is not None
    assert subnet.dhcp.leases == (("02:00:00:00:00:05", "10.0.0.5", "web-5"),)
    assert subnet.dhcp.names == (("10.0.0.5", "web-5"), ("10.0.0.6", "web-6"), ("10.0.0.7", "web-7"))
    assert str(subnet.dhcp.address) == "10.0.0.254" and subnet.dhcp.dns == ("10.0.0.254",)


def test_a_subnet_without_a_port_here_is_not_made() -> None:
    assert plan([vpc(port(6, 2), port(7, 3))], hypervisor=1, local_vtep="192.0.2.1") == {}


def test_two_subnets_with_one_vni_are_refused() -> None:
    other = npb.NetVpcState(vpc_id=8, subnets=[npb.NetSubnet(id=2, vpc_id=8, vni=100, cidr="10.0.0.0/24")],
                            ports=[port(9, 1, subnet=2)])
    with pytest.raises(InvalidRequest, match="vni 100"):
        plan([vpc(port(5, 1)), other], hypervisor=1, local_vtep="")


@pytest.mark.parametrize(("change", "message"), [
    ({"cidr": "10.0.0.1/24"}, "not an IPv4 network"),
    ({"vni": 0}, r"vni must be in \[1, 16777215\]"),
    ({"vni": 1 << 24}, "vni must be"),
    ({"gateway": "10.1.0.1"}, "gateway '10.1.0.1' is not an address inside"),
])
def test_bad_subnets_are_refused_naming_the_field(change: dict[str, object], message: str) -> None:
    subnet = npb.NetSubnet()
    subnet.CopyFrom(SUBNET)
    for key, value in change.items():
        setattr(subnet, key, value)
    with pytest.raises(InvalidRequest, match=message):
        check_vpc(vpc(port(5, 1), subnets=(subnet,)))


def test_bad_ports_are_refused_naming_the_field() -> None:
    with pytest.raises(InvalidRequest, match="port 5: mac '02:00:00:00:00:0G'"):
        check_vpc(vpc(npb.NetPort(id=5, subnet_id=1, mac="02:00:00:00:00:0G")))
    with pytest.raises(InvalidRequest, match="port 5: ip '10.9.0.5' is not inside 10.0.0.0/24"):
        check_vpc(vpc(npb.NetPort(id=5, subnet_id=1, mac="02:00:00:00:00:05", ips=["10.9.0.5"])))


def test_a_delta_keeps_only_ports_of_subnets_held() -> None:
    delta = npb.NetApplyRequest(vpc_id=7, from_generation=1, generation=2, upsert_ports=[port(6, 2), port(9, 2, subnet=3)],
                                remove_ports=[5])
    state = applied(vpc(port(5, 1)), delta)
    assert (state.generation, [p.id for p in state.ports]) == (2, [6])


def test_names_carry_the_prefix_and_only_they_are_ours() -> None:
    names = Names("t12")
    assert (names.bridge(7), names.vxlan(16777215), names.dhcp(7)) == ("t12b7", "t12v16777215", "t12d7")
    assert names.parse("t12b7") == ("b", 7) and names.parse("t12d16777215") == ("d", 16777215)
    for foreign in ("t12b07", "t123b7", "t12x7", "t12b16777216", "t1b7", "clb7", "t12ga1", "t12b"):
        assert names.parse(foreign) is None, foreign
    with pytest.raises(ValueError):
        Names("toolong7")


def test_held_states_survive_a_restart_in_0600_files(tmp_path) -> None:
    held = HeldStates(tmp_path / "net")
    held.put(vpc(port(5, 1)))
    (path,) = (tmp_path / "net").glob("vpc-*.pb")
    assert path.stat().st_mode & 0o777 == 0o600
    assert HeldStates(tmp_path / "net").vpcs == {7: vpc(port(5, 1))}
    held.drop(7)
    assert HeldStates(tmp_path / "net").vpcs == {}
