"""The address arithmetic of tenant subnets (api/services/ipam.py), by tables."""

from __future__ import annotations

from ipaddress import IPv4Address

import pytest

from cloudland.errors import InvalidRequest
from cloudland_api.services import ipam

LAYOUTS = [
    # cidr, gateway, default gateway, pools -> gateway, pools, capacity
    ("10.0.0.0/24", None, True, None, "10.0.0.1", [["10.0.0.1", "10.0.0.254"]], 253),
    ("10.0.0.0/24", None, False, None, None, [["10.0.0.1", "10.0.0.254"]], 254),
    ("10.0.0.0/24", "10.0.0.254", False, [("10.0.0.100", "10.0.0.109"), ("10.0.0.10", "10.0.0.19")],
     "10.0.0.254", [["10.0.0.10", "10.0.0.19"], ["10.0.0.100", "10.0.0.109"]], 20),
    ("192.168.4.0/29", None, True, None, "192.168.4.1", [["192.168.4.1", "192.168.4.6"]], 5),
    ("10.0.0.0/8", None, True, None, "10.0.0.1", [["10.0.0.1", "10.255.255.254"]], 2**24 - 3),
]


@pytest.mark.parametrize(("cidr", "gateway", "default", "pools", "want_gw", "want_pools", "capacity"), LAYOUTS)
def test_layouts(cidr: str, gateway: str | None, default: bool, pools: list[tuple[str, str]] | None,
                 want_gw: str | None, want_pools: list[list[str]], capacity: int) -> None:
    found = ipam.layout(cidr, gateway, default, pools)
    assert (str(found.gateway) if found.gateway else None, found.stored_pools(), found.capacity) == (
        want_gw, want_pools, capacity)


BAD = [
    ("10.0.0.1/24", None, True, None, "not a network (host bits are set): did you mean 10.0.0.0/24?"),
    ("10.0.0.0/30", None, True, None, "the prefix must be /8 to /29"),
    ("10.0.0.0/7", None, True, None, "the prefix must be /8 to /29"),
    ("10.0.0.0", None, True, None, "has no prefix length"),
    ("garbage/24", None, True, None, "is not an IPv4 network"),
    ("10.0.0.0/24", "10.0.0.0", False, None, "gateway 10.0.0.0 is the network address"),
    ("10.0.0.0/24", "10.1.0.1", False, None, "gateway 10.1.0.1 is outside 10.0.0.0/24"),
    ("10.0.0.0/24", "x", False, None, "gateway 'x' is not an IPv4 address"),
    ("10.0.0.0/29", None, True, [("10.0.0.1", "10.0.0.1")], "hold no address"),
    ("10.0.0.0/24", None, True, [("10.0.0.9", "10.0.0.8")], "the start is after the end"),
]


@pytest.mark.parametrize(("cidr", "gateway", "default", "pools", "message"), BAD)
def test_bad_layouts(cidr: str, gateway: str | None, default: bool, pools: list[tuple[str, str]] | None,
                     message: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        ipam.layout(cidr, gateway, default, pools)
    assert message in str(caught.value)


def test_with_dhcp_the_last_usable_address_is_its_servers() -> None:
    subnet = ipam.layout("10.0.0.0/24", None, True, None, dhcp=True)
    assert subnet.capacity == 252 and ipam.dhcp_server(subnet.net) == IPv4Address("10.0.0.254")
    assert ipam.allocate(subnet, {f"10.0.0.{n}" for n in range(2, 253)}, 1) == ["10.0.0.253"]
    assert ipam.allocate(subnet, {f"10.0.0.{n}" for n in range(2, 254)}, 1) is None
    assert ipam.free(subnet, {"10.0.0.2", "10.0.0.254"}) == 251
    with pytest.raises(InvalidRequest, match="is the DHCP server's address"):
        ipam.requested(subnet, ["10.0.0.254"])
    with pytest.raises(InvalidRequest, match="choose another gateway, or turn DHCP off"):
        ipam.layout("10.0.0.0/24", "10.0.0.254", False, None, dhcp=True)
    assert ipam.layout("10.0.0.0/24", "10.0.0.254", False, None).capacity == 253  # DHCP off: any


def test_allocation_takes_the_lowest_free_addresses_in_pool_order_and_never_the_gateway() -> None:
    subnet = ipam.layout("10.0.0.0/24", "10.0.0.11", False, [("10.0.0.200", "10.0.0.201"), ("10.0.0.10", "10.0.0.12")])
    assert ipam.allocate(subnet, {"10.0.0.10"}, 3) == ["10.0.0.12", "10.0.0.200", "10.0.0.201"]
    assert ipam.allocate(subnet, {"10.0.0.10"}, 4) is None
    assert ipam.free(subnet, {"10.0.0.10", "10.0.0.99"}) == 3
    assert ipam.requested(subnet, ["10.0.0.99"]) == ["10.0.0.99"]  # outside the pools, inside the CIDR: fine
    for bad, message in (("10.0.0.11", "is the gateway"), ("10.0.1.1", "outside"), ("10.0.0.255", "broadcast")):
        with pytest.raises(InvalidRequest, match=message):
            ipam.requested(subnet, [bad])
    with pytest.raises(InvalidRequest, match="given twice"):
        ipam.requested(subnet, ["10.0.0.5", "10.0.0.5"])


def test_macs_are_locally_administered_unicast_under_our_prefix() -> None:
    macs = {ipam.new_mac() for _ in range(100)}
    assert len(macs) == 100
    for mac in macs:
        first = int(mac[:2], 16)
        assert mac.startswith("02:c1:") and len(mac) == 17 and first & 0b10 and not first & 0b1


def test_overlap_names_the_other_subnet() -> None:
    assert ipam.overlapping("10.0.0.128/25", [("a", "10.1.0.0/16"), ("b", "10.0.0.0/24")]) == "b (10.0.0.0/24)"
    assert ipam.overlapping("10.0.1.0/24", [("b", "10.0.0.0/24")]) is None
