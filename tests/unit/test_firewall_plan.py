"""agents/network/firewall.py's plan, without a kernel (issue 12): which chains, sets and rules
a hypervisor's ports need, checks of bad rules, and mark indexes that stay with their ports."""

from __future__ import annotations

import pytest

from cloudland.errors import InvalidRequest
from cloudland_agents.network.firewall import check_groups, plan, zone
from cloudland_agents.network.names import Names
from cloudland_proto.v1 import network_pb2 as npb

NAMES = Names("cl")


def state(ports: list[tuple[int, str, list[int]]], rules: list[npb.NetSecurityRule] | None = None,
          hypervisor: int = 1) -> npb.NetVpcState:
    subnet = npb.NetSubnet(id=1, vpc_id=7, vni=100, cidr="10.0.0.0/24", gateway="10.0.0.1", dhcp=True)
    return npb.NetVpcState(
        vpc_id=7, generation=1, subnets=[subnet],
        ports=[npb.NetPort(id=n, subnet_id=1, mac=f"02:c1:00:00:00:{n:02x}", ips=[ip], hypervisor=hypervisor,
                           security_groups=groups) for n, ip, groups in ports],
        security_groups=[npb.NetSecurityGroup(id=5, rules=rules or [], member_ips=[ip for _, ip, _ in ports])])


def test_a_groups_rules_live_once_whatever_the_number_of_ports() -> None:
    rules = [npb.NetSecurityRule(id=1, protocol="tcp", port_min=22, port_max=22, remote_cidr="0.0.0.0/0"),
             npb.NetSecurityRule(id=2, protocol="icmp", remote_group=5),
             npb.NetSecurityRule(id=3, egress=True, protocol="udp", port_min=53, port_max=60,
                                 remote_cidr="10.0.0.0/8")]
    bridge, inet = plan([state([(n, f"10.0.0.{n + 10}", [5]) for n in range(1, 6)], rules)], 1, NAMES, {})
    assert inet.rules["gi_7_5"] == ["meta l4proto tcp th dport 22 accept",
                                    "meta l4proto icmp ip saddr @gm_7_5 accept"]
    assert inet.rules["ge_7_5"] == ["meta l4proto udp th dport 53-60 ip daddr 10.0.0.0/8 accept"]
    assert inet.elements["gm_7_5"] == {f"10.0.0.{n + 10}" for n in range(1, 6)}
    assert inet.elements["zones"] == {f'"clb100" : {zone(7)}'}
    tap = NAMES.tap("02:c1:00:00:00:01")
    assert inet.rules[f"pi_{tap}"] == ["ip saddr 10.0.0.254 udp sport 67 udp dport 68 accept", "jump gi_7_5", "drop"]
    assert bridge.rules[f"as_{tap}"][0] == "ether saddr != 02:c1:00:00:00:01 drop"
    assert sum(1 for rules in inet.rules.values() for r in rules if "dport 22" in r) == 1


def test_indexes_stay_with_their_ports_and_a_port_without_groups_is_only_guarded() -> None:
    indexes: dict[str, int] = {}
    plan([state([(1, "10.0.0.11", [5]), (2, "10.0.0.12", [5])])], 1, NAMES, indexes)
    first = dict(indexes)
    bridge, inet = plan([state([(2, "10.0.0.12", [5]), (3, "10.0.0.13", [5]), (4, "10.0.0.14", [])])],
                        1, NAMES, indexes)
    port2, port3, port4 = (NAMES.tap(f"02:c1:00:00:00:{n:02x}") for n in (2, 3, 4))
    assert indexes[port2] == first[port2]  # kept: its packets keep their mark
    assert indexes[port3] not in {indexes[port2]} and port4 not in indexes
    assert f'"{port4}"' in bridge.elements["guarded"] and f"pi_{port4}" not in inet.rules
    remote, _ = plan([state([(1, "10.0.0.11", [5])], hypervisor=2)], 1, NAMES, {})
    assert remote.elements["spoof"] == set()  # another hypervisor's port: nothing here


@pytest.mark.parametrize(("rule", "message"), [
    (npb.NetSecurityRule(protocol="sctp"), "protocol must be one of"),
    (npb.NetSecurityRule(protocol="tcp", port_min=80, port_max=22), "port range 80-22"),
    (npb.NetSecurityRule(protocol="icmp", port_min=1, port_max=1), "needs protocol tcp or udp"),
    (npb.NetSecurityRule(protocol="any", remote_cidr="10.0.0.1/24"), "not an IPv4 address or network"),
    (npb.NetSecurityRule(protocol="any", remote_cidr="10.0.0.0/8", remote_group=3), "not both"),
])
def test_bad_rules_are_refused_naming_the_field(rule: npb.NetSecurityRule, message: str) -> None:
    bad = state([(1, "10.0.0.11", [5])], [rule])
    with pytest.raises(InvalidRequest, match=message):
        check_groups(bad)
