"""The router's plan (agents/network/router.py) and its nftables table (nat.py), pure: which
hypervisor runs which router with what, and the exact text ``nft list table`` prints."""

from __future__ import annotations

from cloudland_agents.network import nat
from cloudland_agents.network.desired import plan
from cloudland_agents.network.router import Interface, Uplink, gateway_mac, parse, plan_routers
from cloudland_proto.v1 import network_pb2 as npb


def state(router: bool = True, external: bool = True, floating: bool = True) -> npb.NetVpcState:
    subnets = [npb.NetSubnet(id=1, vpc_id=9, vni=101, cidr="10.0.1.0/24", gateway="10.0.1.1", dhcp=True),
               npb.NetSubnet(id=2, vpc_id=9, vni=102, cidr="10.0.2.0/24", gateway="10.0.2.1", dhcp=True)]
    ports = [npb.NetPort(id=11, subnet_id=1, mac="02:aa:00:00:00:01", ips=["10.0.1.5"], hypervisor=1, vtep="192.0.2.1"),
             npb.NetPort(id=12, subnet_id=2, mac="02:aa:00:00:00:02", ips=["10.0.2.5"], hypervisor=2, vtep="192.0.2.2")]
    message = npb.NetVpcState(vpc_id=9, generation=3, mtu=1450, subnets=subnets, ports=ports)
    if router:
        message.router.CopyFrom(npb.NetRouter(id=4, subnet_ids=[1, 2]))
        if external:
            message.router.external.CopyFrom(npb.NetExternal(id=1, cidr="203.0.113.0/24", gateway="203.0.113.1",
                                                             bridge="ext0"))
            message.router.snat_address = "203.0.113.10"
        if floating:
            message.router.floating_ips.append(npb.NetFloatingIp(id=5, address="203.0.113.20", port_id=12,
                                                                 fixed_ip="10.0.2.5"))
    return message


def test_each_hypervisor_of_the_router_makes_every_connected_subnet_and_serves_dhcp_only_for_its_own() -> None:
    plans = plan([state()], 1, "192.0.2.1")
    assert sorted(plans) == [101, 102]
    assert plans[101].dhcp is not None and plans[102].dhcp is None  # no guest of 102 here to serve
    assert plans[102].fdb == {"02:aa:00:00:00:02": "192.0.2.2"}  # the router here reaches 10.0.2.5 on hv 2
    assert sorted(plan([state(router=False)], 1, "192.0.2.1")) == [101]  # without a router: its own subnet only
    assert plan([state()], 3, "192.0.2.3") == {}  # no port here: nothing, router or not


def test_the_router_plan_sets_up_floating_ips_only_where_their_port_is() -> None:
    one, two = plan_routers([state()], 1)[9], plan_routers([state()], 2)[9]
    assert one.interfaces == (Interface(101, "10.0.1.1", 24), Interface(102, "10.0.2.1", 24))
    assert one.uplink == Uplink("ext0", 24, "203.0.113.1", "203.0.113.10")
    assert (one.floating, two.floating) == ((), (("203.0.113.20", "10.0.2.5"),))
    assert two.addresses() == {("203.0.113.10", 24), ("203.0.113.20", 32)}
    assert plan_routers([state()], 3) == {} and plan_routers([state(router=False)], 1) == {}
    multicast = state()  # one state for several hypervisors: each takes its own SNAT address
    multicast.router.snat_address = ""
    multicast.router.snat_addresses.extend([npb.NetSnatAddress(hypervisor=1, address="203.0.113.10"),
                                            npb.NetSnatAddress(hypervisor=2, address="203.0.113.11")])
    assert plan_routers([multicast], 2)[9].uplink == Uplink("ext0", 24, "203.0.113.1", "203.0.113.11")
    assert plan_routers([multicast], 1)[9].uplink == Uplink("ext0", 24, "203.0.113.1", "203.0.113.10")
    assert plan_routers([state(external=False, floating=False)], 1)[9].uplink is None
    assert gateway_mac(102) == "02:c0:00:00:00:66" and gateway_mac(0xABCDEF) == "02:c0:00:ab:cd:ef"
    assert parse("cl", "clr9") == ("r", 9) and parse("cl", "clg102") == ("g", 102)
    assert parse("cl", "xxr9") is None and parse("cl", "clb102") is None and parse("cl", "clga1") is None


def test_the_ruleset_is_nfts_own_listing() -> None:
    assert nat.ruleset(plan_routers([state(external=False, floating=False)], 1)[9]) == ""
    assert nat.ruleset(plan_routers([state()], 2)[9]) == """table ip router {
\tchain prerouting {
\t\ttype nat hook prerouting priority dstnat; policy accept;
\t\tip daddr 203.0.113.20 dnat to 10.0.2.5
\t}

\tchain postrouting {
\t\ttype nat hook postrouting priority srcnat; policy accept;
\t\toifname "x0" ip saddr 10.0.2.5 snat to 203.0.113.20
\t\toifname "x0" snat to 203.0.113.10
\t}

\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tiifname "x0" ct status dnat accept
\t\tiifname "x0" ct state established,related accept
\t\tiifname "x0" drop
\t}
}
"""
