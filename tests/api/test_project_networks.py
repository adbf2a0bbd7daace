"""Issue 12's tables per project (issue 14), on SQLite and PostgreSQL: routers, floating IPs and
security groups belong to the request's project, each project has its own default security
group, a port takes only its project's groups; floating IPs and security groups are quotas a
concurrent burst cannot exceed; migration 0013 moves existing rows into the default project."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sqlalchemy import inspect, text

from cloudland_api.db import make_engine, upgrade
from tests.api.conftest import Api
from tests.api.test_database import downgrade
from tests.api.test_networks import API, error, network, post
from tests.api.test_quotas import default_project, quota, set_project_quota
from tests.api.test_routers import EXTERNAL, put

PROJECT = "X-CloudLand-Project"
WIDE = EXTERNAL | {"allocation_pools": [{"start": "203.0.113.10", "end": "203.0.113.200"}]}


def rules(group: dict[str, Any]) -> list[tuple[str, str, int | None]]:
    return [(r["direction"], r["protocol"], r["remote_group_id"]) for r in group["rules"]]


def listed(api: Api, headers: dict[str, str], path: str) -> list[dict[str, Any]]:
    reply = api.client.get(f"{API}/{path}?limit=100", headers=headers)
    assert reply.status_code == 200, reply.text
    items: list[dict[str, Any]] = reply.json()["items"]
    return items


def test_routers_floating_ips_and_groups_belong_to_the_requests_project(api: Api,
                                                                       admin_headers: dict[str, str]) -> None:
    mine = admin_headers
    dev_project = post(api, mine, "projects", {"name": "dev"})
    dev = mine | {PROJECT: "dev"}
    post(api, mine, "external-networks", WIDE)
    vpc, subnet = network(api, mine, "10.0.1.0/24")
    port = post(api, mine, "ports", {"subnet": "s1"})
    router = post(api, mine, "routers", {"name": "r", "vpc": vpc["id"]})
    post(api, mine, f"routers/{router['id']}/subnets", {"subnet": subnet["id"]}, expect=200)
    put(api, mine, f"routers/{router['id']}/gateway", {"external_network": "public"})
    fip = post(api, mine, "floating-ips", {"external_network": "public"})
    put(api, mine, f"floating-ips/{fip['id']}/port", {"port": port["id"]})
    web = post(api, mine, "security-groups", {"name": "web"})

    # Each project has its default group from its creation: egress open, ingress from itself.
    [default] = [g for g in listed(api, mine, "security-groups") if g["is_default"]]
    [dev_default] = listed(api, dev, "security-groups")
    assert dev_default["name"] == "default" and dev_default["is_default"] and dev_default["id"] != default["id"]
    assert rules(dev_default) == [("egress", "any", None), ("ingress", "any", dev_default["id"])]
    assert api.client.get(f"{API}/security-groups/default", headers=dev).json()["id"] == dev_default["id"]

    # Another project of the organisation sees none of the default project's, and reaches none.
    assert listed(api, dev, "routers") == [] and listed(api, dev, "floating-ips") == []
    for path in (f"routers/{router['id']}", f"floating-ips/{fip['id']}", f"security-groups/{web['id']}",
                 "security-groups/web"):
        assert api.client.get(f"{API}/{path}", headers=dev).status_code == 404, path
    assert error(api.client.delete(f"{API}/floating-ips/{fip['id']}/port", headers=dev), 404) == \
        f"floating IP {fip['id']} not found"
    reply = api.client.post(f"{API}/routers", json={"name": "r2", "vpc": vpc["id"]}, headers=dev)
    assert error(reply, 404) == f"vpc {vpc['id']!r} not found"
    reply = api.client.post(f"{API}/security-groups/{web['id']}/rules", json={"protocol": "icmp"}, headers=dev)
    assert reply.status_code == 404, reply.text
    # A group's name is its project's: dev may have its own "web".
    dev_web = post(api, dev, "security-groups", {"name": "web"})
    assert dev_web["id"] != web["id"]
    # A port takes only groups of its own project: a rule's remote group and a port's groups alike.
    reply = api.client.patch(f"{API}/ports/{port['id']}", json={"security_groups": [dev_web["id"]]}, headers=mine)
    assert error(reply, 404) == f"security group {dev_web['id']!r} not found"
    reply = api.client.post(f"{API}/security-groups/web/rules", json={"protocol": "icmp",
                                                                     "remote_group": dev_web["id"]}, headers=mine)
    assert error(reply, 404) == f"security group {dev_web['id']!r} not found"
    _, dev_subnet = network(api, dev, "10.0.1.0/24", vpc="v2", subnet="s2")
    dev_port = post(api, dev, "ports", {"subnet": "s2"})
    reply = api.client.patch(f"{API}/ports/{dev_port['id']}", json={"security_groups": [web["id"]]}, headers=dev)
    assert reply.status_code == 404, reply.text
    reply = api.client.patch(f"{API}/ports/{dev_port['id']}", json={"security_groups": ["web"]}, headers=dev)
    assert reply.status_code == 200, reply.text
    # A floating IP of one project never lands on another project's port.
    dev_fip = post(api, dev, "floating-ips", {"external_network": "public"})
    reply = api.client.put(f"{API}/floating-ips/{dev_fip['id']}/port", json={"port": port["id"]}, headers=dev)
    assert error(reply, 404) == f"port {port['id']!r} not found"
    assert [f["id"] for f in listed(api, dev, "floating-ips")] == [dev_fip["id"]]
    assert [f["id"] for f in listed(api, mine, "floating-ips")] == [fip["id"]]
    # The external network stays the operator's, read from every project.
    assert [e["name"] for e in listed(api, dev, "external-networks")] == ["public"]
    # Usage counts per project.
    assert quota(api, dev)["floating_ips"]["used"] == 1 and quota(api, dev)["security_groups"]["used"] == 2
    assert quota(api, mine)["security_groups"]["organisation_used"] == 4
    # The owner's rows are all still there.
    assert api.client.get(f"{API}/floating-ips/{fip['id']}", headers=mine).json()["port_id"] == port["id"]
    assert api.client.get(f"{API}/routers/{router['id']}", headers=mine).json()["subnet_ids"] == [subnet["id"]]
    assert dev_project["id"] == quota_project(api, dev)


def quota_project(api: Api, headers: dict[str, str]) -> int:
    found: int = api.client.get(f"{API}/quota", headers=headers).json()["project_id"]
    return found


def burst(api: Api, headers: dict[str, str], path: str, bodies: list[dict[str, Any]]) -> list[Any]:
    with ThreadPoolExecutor(12) as pool:
        return list(pool.map(lambda body: api.client.post(f"{API}/{path}", json=body, headers=headers), bodies))


def test_concurrent_floating_ips_and_groups_never_exceed_their_quota(api: Api, admin_headers: dict[str, str]) -> None:
    """24 concurrent allocations against room for 7 floating IPs: exactly 7 (issue 14 must-show 3's
    pattern); 24 concurrent groups against room for 5 more (the default group counts): exactly 5."""
    post(api, admin_headers, "external-networks", WIDE)
    project = default_project(api, admin_headers)
    set_project_quota(api, admin_headers, project, floating_ips=7, security_groups=6)
    replies = burst(api, admin_headers, "floating-ips", [{"external_network": "public"}] * 24)
    accepted = [r for r in replies if r.status_code == 201]
    assert len(accepted) == 7, sorted(r.status_code for r in replies)
    assert len({r.json()["address"] for r in accepted}) == 7
    for reply in replies:
        if reply.status_code != 201:
            assert reply.status_code == 409 and reply.json()["error"]["code"] == "quota_exceeded", reply.text
            assert "quota floating_ips of project 'default' exceeded: limit 7, 7 used" in reply.json()["error"]["message"]
    replies = burst(api, admin_headers, "security-groups", [{"name": f"g{i}"} for i in range(24)])
    assert sum(r.status_code == 201 for r in replies) == 5, sorted(r.status_code for r in replies)
    assert all(r.status_code == 201 or "quota security_groups of project 'default' exceeded: limit 6, 6 used"
               in r.json()["error"]["message"] for r in replies)
    line = quota(api, admin_headers)
    assert (line["floating_ips"]["used"], line["security_groups"]["used"]) == (7, 6)
    assert len(listed(api, admin_headers, "security-groups")) == 6
    # Routers' SNAT addresses are not floating IPs: a gateway still takes its addresses.
    released = accepted[0].json()["id"]
    assert api.client.delete(f"{API}/floating-ips/{released}", headers=admin_headers).status_code == 204
    assert post(api, admin_headers, "floating-ips", {"external_network": "public"})["address"]


def test_0013_moves_routers_addresses_and_groups_into_the_default_project(empty_database_url: str) -> None:
    """0013 on a database with data: the rows of issue 12's tables go into their organisation's
    default project, a port keeps its groups, a second project gets its own default group; the
    downgrade keeps the rows."""
    upgrade(empty_database_url, "0012")
    engine = make_engine(empty_database_url)
    insert = [
        "INSERT INTO organisations (id, name, operator, created_at) VALUES (1, 'acme', false, CURRENT_TIMESTAMP)",
        "INSERT INTO projects (id, org_id, name, is_default, created_at) "
        "VALUES (10, 1, 'default', true, CURRENT_TIMESTAMP), (11, 1, 'dev', false, CURRENT_TIMESTAMP)",
        "INSERT INTO vpcs (id, org_id, project_id, name, mtu, domain, generation, created_at) "
        "VALUES (1, 1, 10, 'v', 1450, 'v.cloudland', 0, CURRENT_TIMESTAMP)",
        "INSERT INTO subnets (id, org_id, project_id, vpc_id, name, cidr, gateway, dhcp, allocation_pools, "
        "dns_servers, vni, created_at) VALUES (1, 1, 10, 1, 's', '10.0.0.0/24', '10.0.0.1', true, '[]', '[]', "
        "100, CURRENT_TIMESTAMP)",
        "INSERT INTO ports (id, org_id, project_id, vpc_id, subnet_id, name, mac, device_index, created_at) "
        "VALUES (1, 1, 10, 1, 1, 'p', '52:54:00:00:00:01', 0, CURRENT_TIMESTAMP)",
        "INSERT INTO external_networks (id, org_id, name, cidr, gateway, bridge, allocation_pools, created_at) "
        "VALUES (1, 1, 'public', '203.0.113.0/24', '203.0.113.1', 'ext0', '[]', CURRENT_TIMESTAMP)",
        "INSERT INTO routers (id, org_id, name, vpc_id, external_network_id, created_at) "
        "VALUES (1, 1, 'r', 1, 1, CURRENT_TIMESTAMP)",
        "INSERT INTO external_ips (id, org_id, external_network_id, address, kind, port_id, fixed_ip, created_at) "
        "VALUES (1, 1, 1, '203.0.113.5', 'floating', 1, '10.0.0.2', CURRENT_TIMESTAMP)",
        "INSERT INTO external_ips (id, org_id, external_network_id, address, kind, router_id, created_at) "
        "VALUES (2, 1, 1, '203.0.113.6', 'snat', 1, CURRENT_TIMESTAMP)",
        "INSERT INTO security_groups (id, org_id, name, description, is_default, created_at) "
        "VALUES (1, 1, 'default', '', true, CURRENT_TIMESTAMP), (2, 1, 'web', '', false, CURRENT_TIMESTAMP)",
        "INSERT INTO security_rules (id, org_id, group_id, direction, protocol, remote_group_id, created_at) "
        "VALUES (1, 1, 1, 'egress', 'any', NULL, CURRENT_TIMESTAMP), "
        "(2, 1, 1, 'ingress', 'any', 1, CURRENT_TIMESTAMP), (3, 1, 2, 'ingress', 'tcp', 1, CURRENT_TIMESTAMP)",
        "INSERT INTO port_security_groups (port_id, group_id) VALUES (1, 2)",
    ]
    try:
        with engine.begin() as connection:
            for statement in insert:
                connection.execute(text(statement))
            if connection.dialect.name == "postgresql":  # the ids above were given: their sequences move past them
                for table in ("security_groups", "security_rules"):
                    connection.execute(text(f"SELECT setval('{table}_id_seq', (SELECT max(id) FROM {table}))"))
        upgrade(empty_database_url)
        with engine.connect() as connection:
            for table in ("routers", "external_ips", "security_rules"):
                assert set(connection.execute(text(f"SELECT project_id FROM {table} WHERE id <= 3")).scalars()) \
                    == {10}, table
            groups = connection.execute(text(
                "SELECT id, project_id, name, is_default FROM security_groups ORDER BY id")).all()
            assert [tuple(g)[1:] for g in groups] == [(10, "default", True), (10, "web", False), (11, "default", True)]
            dev_group = groups[2][0]
            assert sorted(tuple(r) for r in connection.execute(text(
                "SELECT direction, protocol, remote_group_id, project_id FROM security_rules "
                f"WHERE group_id = {dev_group}"))) == [("egress", "any", None, 11), ("ingress", "any", dev_group, 11)]
            assert connection.execute(text("SELECT count(*) FROM security_rules")).scalar_one() == 5
            assert tuple(connection.execute(text("SELECT port_id, group_id FROM port_security_groups")).one()) == (1, 2)
        # A name is now unique per project, not per organisation.
        with engine.begin() as connection:
            connection.execute(text("INSERT INTO security_groups (org_id, project_id, name, description, is_default, "
                                    "created_at) VALUES (1, 11, 'web', '', false, CURRENT_TIMESTAMP)"))
            connection.execute(text("DELETE FROM security_groups WHERE project_id = 11 AND name = 'web'"))
        downgrade(empty_database_url, "0012")
        inspector = inspect(engine)
        for table in ("routers", "external_ips", "security_groups", "security_rules"):
            assert "project_id" not in {c["name"] for c in inspector.get_columns(table)}, table
        with engine.connect() as connection:
            assert [tuple(g) for g in connection.execute(text("SELECT id, name FROM security_groups ORDER BY id"))] \
                == [(1, "default"), (2, "web")]
            assert connection.execute(text("SELECT count(*) FROM security_rules")).scalar_one() == 3
            assert connection.execute(text("SELECT count(*) FROM external_ips")).scalar_one() == 2
            assert tuple(connection.execute(text("SELECT port_id, group_id FROM port_security_groups")).one()) == (1, 2)
    finally:
        engine.dispose()
