"""VPCs, subnets and ports through the API (issue 11): create, list, get, delete, tenancy, bad input.

Runs on SQLite and on PostgreSQL, like every API test (tests/conftest.py).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from cloudland_api.models import Role
from tests.api.conftest import Api, Launcher, settle
from tests.api.test_pagination import walk

API = "/api/v1"


def post(api: Api, headers: dict[str, str], path: str, body: dict[str, Any], expect: int = 201) -> dict[str, Any]:
    reply = api.client.post(f"{API}/{path}", json=body, headers=headers)
    assert reply.status_code == expect, reply.text
    result: dict[str, Any] = reply.json()
    return result


def network(api: Api, headers: dict[str, str], cidr: str = "10.0.0.0/24", vpc: str = "v1", subnet: str = "s1",
            **spec: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A VPC (made if new) and a subnet of it."""
    found = api.client.get(f"{API}/vpcs", headers=headers).json()["items"]
    made = next((v for v in found if v["name"] == vpc), None) or post(api, headers, "vpcs", {"name": vpc})
    return made, post(api, headers, "subnets", {"name": subnet, "vpc": made["id"], "cidr": cidr} | spec)


def error(reply: Any, status: int) -> str:
    assert reply.status_code == status, reply.text
    message: str = reply.json()["error"]["message"]
    return message


# -- create, read, delete ---------------------------------------------------------------------


def test_a_vpc_a_subnet_and_a_port_are_created_listed_and_deleted(api: Api, admin_headers: dict[str, str]) -> None:
    vpc, subnet = network(api, admin_headers, dns_servers=["10.0.0.2"])
    assert vpc["domain"] == f"vpc-{vpc['id']}.cloudland.internal" and vpc["mtu"] == 1450 and vpc["generation"] == 0
    assert subnet["gateway"] == "10.0.0.1" and subnet["dhcp"] is True and subnet["vpc_id"] == vpc["id"]
    assert subnet["allocation_pools"] == [{"start": "10.0.0.1", "end": "10.0.0.254"}]
    assert subnet["vni"] == 4096 and subnet["dns_servers"] == ["10.0.0.2"]
    assert subnet["dhcp_server"] == "10.0.0.254"  # never a port's: its DHCP and DNS server answers there
    port = post(api, admin_headers, "ports", {"subnet": "s1", "name": "p"})
    assert port["fixed_ips"] == ["10.0.0.2"] and port["mac"].startswith("02:c1:")
    assert (port["instance_id"], port["hypervisor_id"], port["vpc_id"]) == (None, None, vpc["id"])
    fixed = post(api, admin_headers, "ports", {"subnet": subnet["id"], "fixed_ips": ["10.0.0.77"],
                                              "mac": "02:AA:bb:cc:dd:ee"})
    assert fixed["fixed_ips"] == ["10.0.0.77"] and fixed["mac"] == "02:aa:bb:cc:dd:ee"
    assert api.client.get(f"{API}/ports/{port['id']}", headers=admin_headers).json() == port
    listed = api.client.get(f"{API}/ports", params={"subnet": subnet["id"]}, headers=admin_headers).json()
    assert [p["id"] for p in listed["items"]] == [port["id"], fixed["id"]]
    assert api.client.get(f"{API}/subnets", params={"vpc": vpc["id"]}, headers=admin_headers).json()["items"] == [subnet]
    assert api.client.get(f"{API}/vpcs/{vpc['id']}", headers=admin_headers).json() == vpc

    # Not while it has ports: 409, naming them.
    assert "still has 2 ports" in error(api.client.delete(f"{API}/subnets/{subnet['id']}", headers=admin_headers), 409)
    assert "still has 2 ports" in error(api.client.delete(f"{API}/vpcs/{vpc['id']}", headers=admin_headers), 409)
    for p in (port, fixed):
        assert api.client.delete(f"{API}/ports/{p['id']}", headers=admin_headers).status_code == 204
    # The VPC goes with its empty subnets.
    assert api.client.delete(f"{API}/vpcs/{vpc['id']}", headers=admin_headers).status_code == 204
    assert api.client.get(f"{API}/subnets/{subnet['id']}", headers=admin_headers).status_code == 404
    # Its VNI is free again.
    assert network(api, admin_headers, vpc="v2")[1]["vni"] == 4096


def test_vnis_are_unique_and_their_range_running_out_is_a_409_naming_it(api: Api,
                                                                       admin_headers: dict[str, str]) -> None:
    api.app.state.settings = api.settings.replace(vni_range="5000-5001")
    assert [network(api, admin_headers, f"10.{n}.0.0/24", subnet=f"s{n}")[1]["vni"] for n in (1, 2)] == [5000, 5001]
    reply = api.client.post(f"{API}/subnets", json={"name": "s3", "vpc": "v1", "cidr": "10.3.0.0/24"},
                            headers=admin_headers)
    assert "no VNI is free in the range 5000-5001" in error(reply, 409)


def test_tenants_overlap_freely_and_cannot_see_each_other(api: Api, admin_headers: dict[str, str]) -> None:
    other = api.add_user("bob", "other", Role.admin)
    mine_vpc, mine = network(api, admin_headers)
    theirs_vpc, theirs = network(api, other)  # the same names and CIDR in another organisation
    assert mine["cidr"] == theirs["cidr"] and mine["vni"] != theirs["vni"]
    mine_port = post(api, admin_headers, "ports", {"subnet": mine["id"]})
    assert post(api, other, "ports", {"subnet": theirs["id"]})["fixed_ips"] == mine_port["fixed_ips"]
    for path in (f"vpcs/{mine_vpc['id']}", f"subnets/{mine['id']}", f"ports/{mine_port['id']}"):
        assert api.client.get(f"{API}/{path}", headers=other).status_code == 404
        assert api.client.delete(f"{API}/{path}", headers=other).status_code == 404
    # Another tenant's network id is not found, never forbidden.
    assert "subnet" in error(api.client.post(f"{API}/ports", json={"subnet": mine["id"]}, headers=other), 404)
    assert "vpc" in error(api.client.post(f"{API}/subnets", json={"name": "x", "vpc": mine_vpc["id"],
                                                                  "cidr": "10.9.0.0/24"}, headers=other), 404)
    assert [p["id"] for p in api.client.get(f"{API}/ports", headers=other).json()["items"]] != [mine_port["id"]]


def test_roles_readers_read_members_create_admins_delete(api: Api, admin_headers: dict[str, str]) -> None:
    reader = api.add_user("rita", "admin", Role.reader)
    member = api.add_user("mo", "admin", Role.member)
    vpc, subnet = network(api, admin_headers)
    assert api.client.post(f"{API}/vpcs", json={"name": "r"}, headers=reader).status_code == 403
    port = post(api, member, "ports", {"subnet": subnet["id"]})
    assert api.client.get(f"{API}/ports/{port['id']}", headers=reader).status_code == 200
    assert api.client.delete(f"{API}/ports/{port['id']}", headers=member).status_code == 403


BAD_SUBNETS = [
    ({"gateway": "10.0.0.254"}, 400, "gateway 10.0.0.254 is the DHCP server's address of 10.0.0.0/24"),
    ({"cidr": "10.0.0.1/24"}, 400, "is not a network (host bits are set): did you mean 10.0.0.0/24?"),
    ({"cidr": "10.0.0.0/31"}, 400, "the prefix must be /8 to /29"),
    ({"cidr": "300.0.0.0/24"}, 400, "is not an IPv4 network"),
    ({"cidr": "fd00::/64"}, 422, "cidr"),
    ({"gateway": "10.0.1.1"}, 400, "gateway 10.0.1.1 is outside 10.0.0.0/24"),
    ({"gateway": "10.0.0.255"}, 400, "is the broadcast address of 10.0.0.0/24"),
    ({"allocation_pools": [{"start": "10.0.0.50", "end": "10.0.0.10"}]}, 400, "the start is after the end"),
    ({"allocation_pools": [{"start": "10.0.0.10", "end": "10.0.1.10"}]}, 400, "pool end 10.0.1.10 is outside"),
    ({"allocation_pools": [{"start": "10.0.0.10", "end": "10.0.0.20"}, {"start": "10.0.0.15", "end": "10.0.0.30"}]},
     400, "overlaps another pool"),
    ({"dns_servers": ["10.0.0.999"]}, 400, "dns server '10.0.0.999' is not an IPv4 address"),
    ({"vpc": 999}, 404, "vpc 999 not found"),
    ({"vpc": "nope"}, 404, "vpc 'nope' not found"),
    ({"dhcp": "yes"}, 422, "dhcp"),
]


@pytest.mark.parametrize(("change", "status", "message"), BAD_SUBNETS, ids=[str(c) for c, _, _ in BAD_SUBNETS])
def test_bad_subnets_get_a_clear_4xx(api: Api, admin_headers: dict[str, str], change: dict[str, Any], status: int,
                                     message: str) -> None:
    post(api, admin_headers, "vpcs", {"name": "v1"})
    reply = api.client.post(f"{API}/subnets", json={"name": "s", "vpc": "v1", "cidr": "10.0.0.0/24"} | change,
                            headers=admin_headers)
    assert message in error(reply, status)


def test_overlapping_subnets_of_one_vpc_are_refused(api: Api, admin_headers: dict[str, str]) -> None:
    network(api, admin_headers)
    reply = api.client.post(f"{API}/subnets", json={"name": "s2", "vpc": "v1", "cidr": "10.0.0.128/25"},
                            headers=admin_headers)
    assert "overlaps subnet s1 (10.0.0.0/24)" in error(reply, 409)
    assert network(api, admin_headers, vpc="v2", subnet="s2")[1]["cidr"] == "10.0.0.0/24"  # another VPC may


def test_bad_ports_get_a_clear_4xx(api: Api, admin_headers: dict[str, str]) -> None:
    _, subnet = network(api, admin_headers, "10.0.0.0/29", gateway=None)
    assert subnet["gateway"] is None and subnet["dhcp_server"] == "10.0.0.6"
    taken = post(api, admin_headers, "ports", {"subnet": subnet["id"], "fixed_ips": ["10.0.0.3"]})
    cases = [({"fixed_ips": ["10.0.0.3"]}, 409, "address 10.0.0.3 of subnet"),
             ({"fixed_ips": ["10.0.1.3"]}, 400, "fixed ip 10.0.1.3 is outside 10.0.0.0/29"),
             ({"fixed_ips": ["10.0.0.7"]}, 400, "broadcast address"),
             ({"fixed_ips": ["10.0.0.6"]}, 400, "fixed ip 10.0.0.6 is the DHCP server's address of 10.0.0.0/29"),
             ({"mac": taken["mac"]}, 409, "is already used by another port"),
             ({"mac": "zz:00:00:00:00:00"}, 422, "mac"),
             ({"subnet": 12345}, 404, "subnet 12345 not found")]
    for change, status, message in cases:
        reply = api.client.post(f"{API}/ports", json={"subnet": subnet["id"]} | change, headers=admin_headers)
        assert message in error(reply, status), change
    # A /29 without a gateway holds 6 addresses, one the DHCP server's; one is taken.
    assert len([post(api, admin_headers, "ports", {"subnet": subnet["id"]}) for _ in range(4)]) == 4
    reply = api.client.post(f"{API}/ports", json={"subnet": subnet["id"]}, headers=admin_headers)
    assert "is full: 1 address wanted, 0 free" in error(reply, 409)


def test_network_lists_walk_by_cursor(api: Api, admin_headers: dict[str, str]) -> None:
    for n in range(5):
        network(api, admin_headers, f"10.{n}.0.0/24", vpc=f"v{n}", subnet=f"s{n}")
        post(api, admin_headers, "ports", {"subnet": f"s{n}"})
    for route in ("vpcs", "subnets", "ports"):
        pages = walk(api, admin_headers, route, 2)
        assert [len(p["items"]) for p in pages] == [2, 2, 1], route


# -- IP allocation is atomic ------------------------------------------------------------------


def test_500_concurrent_ports_on_a_slash_24_get_253_addresses_and_247_conflicts(
        api: Api, admin_headers: dict[str, str]) -> None:
    """Issue 11: never a duplicate, every refusal a clear 409 ("subnet full"), on both databases.
    (DHCP off: with it on, its server holds 10.0.0.254 and the /24 gives 252.)"""
    _, subnet = network(api, admin_headers, dhcp=False)

    def create(_: int) -> tuple[int, dict[str, Any]]:
        reply = api.client.post(f"{API}/ports", json={"subnet": subnet["id"]}, headers=admin_headers)
        return reply.status_code, reply.json()

    with ThreadPoolExecutor(32) as pool:
        replies = list(pool.map(create, range(500)))
    statuses = sorted(status for status, _ in replies)
    assert statuses.count(201) == 253 and statuses.count(409) == 247, statuses[-5:]
    addresses = [body["fixed_ips"][0] for status, body in replies if status == 201]
    assert len(set(addresses)) == 253 and "10.0.0.1" not in addresses
    assert all("is full" in body["error"]["message"] for status, body in replies if status == 409)
    assert len(walk(api, admin_headers, "ports", 500)[0]["items"]) == 253


# -- instances' NICs --------------------------------------------------------------------------


def test_a_vm_gets_a_port_on_each_network_in_order_and_loses_them_when_deleted(
        api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    network(api, admin_headers)
    network(api, admin_headers, "192.168.0.0/24", subnet="s2")
    launch("warm")  # the flavor and image
    body = {"name": "web", "flavor": "small", "image": "img", "count": 2, "networks": ["s2", "s1"]}
    accepted = post(api, admin_headers, "instances", body, 202)
    ports = api.client.get(f"{API}/ports", headers=admin_headers).json()["items"]
    first = accepted["instances"][0]["id"]
    mine = sorted((p for p in ports if p["instance_id"] == first), key=lambda p: p["device_index"])
    assert [(p["device_index"], p["fixed_ips"], p["name"]) for p in mine] == [
        (0, ["192.168.0.2"], "web-1-nic0"), (1, ["10.0.0.2"], "web-1-nic1")]
    assert all(p["hypervisor_id"] is None for p in ports)  # bound when placed (tests/api/test_net_jobs.py)
    assert len(ports) == 4
    # Deleted: the ports go, their addresses are free again.
    instance = accepted["instances"][0]
    settle(api, accepted["jobs"][0]["id"], "failed", "no room")  # never placed
    job = api.client.delete(f"{API}/instances/{instance['id']}", headers=admin_headers).json()
    settle(api, job["id"])
    assert len(api.client.get(f"{API}/ports", headers=admin_headers).json()["items"]) == 2
    assert post(api, admin_headers, "ports", {"subnet": "s1"})["fixed_ips"] == ["10.0.0.2"]


def test_a_vm_on_a_full_or_unknown_network_is_refused_whole(api: Api, admin_headers: dict[str, str],
                                                            launch: Launcher) -> None:
    network(api, admin_headers, "10.0.0.0/29")  # 4 addresses besides the gateway and the DHCP server
    launch("warm")
    body = {"name": "web", "flavor": "small", "image": "img", "count": 6, "networks": ["s1"]}
    assert "is full: 6 addresses wanted, 4 free" in error(api.client.post(f"{API}/instances", json=body,
                                                                          headers=admin_headers), 409)
    assert "subnet 'nope' not found" in error(api.client.post(f"{API}/instances", json=body | {"networks": ["nope"]},
                                                              headers=admin_headers), 404)
    twice = body | {"count": 1, "networks": ["s1", "s1"]}
    assert "named twice" in error(api.client.post(f"{API}/instances", json=twice, headers=admin_headers), 400)
    assert api.client.get(f"{API}/ports", headers=admin_headers).json()["items"] == []
    assert len(api.client.get(f"{API}/instances", headers=admin_headers).json()["items"]) == 1  # only "warm"
    port_of_vm = post(api, admin_headers, "instances", body | {"count": 1}, 202)["instances"][0]
    mine = api.client.get(f"{API}/ports", params={"instance": port_of_vm["id"]}, headers=admin_headers)
    [port] = mine.json()["items"]
    assert "deleted with the instance" in error(api.client.delete(f"{API}/ports/{port['id']}",
                                                                  headers=admin_headers), 409)


def test_0006_keeps_existing_hypervisors_and_its_downgrade_removes_the_network_tables(
        empty_database_url: str) -> None:
    from alembic import command
    from alembic.config import Config
    from sqlalchemy import inspect, text

    from cloudland_api.db import MIGRATIONS, make_engine, upgrade

    upgrade(empty_database_url, "0005")
    engine = make_engine(empty_database_url)
    try:
        with engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO hypervisors (id, hostname, arch, cpus, memory_mib, free_memory_mib, domains, "
                "running_domains, state, enabled, draining, cpu_ratio, memory_ratio, vcpus_claimed, "
                "memory_claimed_mib, last_seen) VALUES (3, 'hv3', 'x86_64', 8, 1024, 1024, 0, 0, 'up', true, false, "
                "4.0, 1.0, 0, 0, CURRENT_TIMESTAMP)"))
        upgrade(empty_database_url)
        with engine.connect() as connection:
            assert tuple(connection.execute(text("SELECT id, vtep FROM hypervisors")).one()) == (3, "")
        assert {"vpcs", "subnets", "ports", "port_ips"} <= set(inspect(engine).get_table_names())
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.set_main_option("sqlalchemy.url", empty_database_url.replace("%", "%%"))
        command.downgrade(config, "0005")
        engine.dispose()
        assert not {"vpcs", "subnets", "ports", "port_ips"} & set(inspect(engine).get_table_names())
        assert "vtep" not in {c["name"] for c in inspect(engine).get_columns("hypervisors")}
    finally:
        engine.dispose()
