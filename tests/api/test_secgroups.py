"""Security groups through the API (issue 12): groups, rules, ports' groups, tenancy, bad input,
and the VPC changes they make (against the recording fake root, on a real database).

Runs on SQLite and on PostgreSQL, like every API test (tests/conftest.py).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cloudland_api.jobs import Engine
from cloudland_api.models import Job, JobState, Port, PortSecurityGroup, SecurityGroup, Vpc
from cloudland_api.models.projects import default_project_id
from cloudland_api.services import netstate
from cloudland_proto.v1 import network_pb2 as npb
from tests.api.conftest import Api
from tests.api.test_net_jobs import cloud, drain, engine, fake, net_operations, vm_with_port  # noqa: F401
from tests.api.test_networks import error, network, post
from tests.api.test_tenants import new_org
from tests.fakeroot import FakeRoot

API = "/api/v1"
Sessions = sessionmaker[Session]


def rules(group: dict[str, Any]) -> list[tuple[Any, ...]]:
    return [(r["direction"], r["protocol"], r["port_min"], r["port_max"], r["remote_cidr"], r["remote_group_id"])
            for r in group["rules"]]


def test_groups_rules_and_a_ports_groups(api: Api, admin_headers: dict[str, str]) -> None:
    listed = api.client.get(f"{API}/security-groups", headers=admin_headers).json()["items"]
    [default] = [g for g in listed if g["is_default"]]
    assert default["name"] == "default"
    assert rules(default) == [("egress", "any", None, None, None, None),
                              ("ingress", "any", None, None, None, default["id"])]
    web = post(api, admin_headers, "security-groups", {"name": "web", "description": "front"})
    assert web["rules"] == [] and not web["is_default"]
    rule = post(api, admin_headers, "security-groups/web/rules",
                {"protocol": "tcp", "port_min": 22, "port_max": 22, "remote_cidr": "0.0.0.0/0"})
    post(api, admin_headers, f"security-groups/{web['id']}/rules", {"protocol": "icmp", "remote_group": "default"})
    shown = api.client.get(f"{API}/security-groups/web", headers=admin_headers).json()
    assert rules(shown) == [("ingress", "tcp", 22, 22, "0.0.0.0/0", None),
                            ("ingress", "icmp", None, None, None, default["id"])]
    network(api, admin_headers)
    port = post(api, admin_headers, "ports", {"subnet": "s1"})
    assert port["security_groups"] == [default["id"]] and port["allowed_addresses"] == []
    reply = api.client.patch(f"{API}/ports/{port['id']}", headers=admin_headers,
                             json={"security_groups": ["web", default["id"]], "allowed_addresses": ["10.0.0.200/32"]})
    assert reply.status_code == 200, reply.text
    assert reply.json()["security_groups"] == sorted([web["id"], default["id"]])
    assert reply.json()["allowed_addresses"] == ["10.0.0.200/32"]
    assert "used by port" in error(api.client.delete(f"{API}/security-groups/web", headers=admin_headers), 409)
    assert "default group" in error(api.client.delete(f"{API}/security-groups/default", headers=admin_headers), 409)
    api.client.patch(f"{API}/ports/{port['id']}", headers=admin_headers, json={"security_groups": []})
    assert api.client.get(f"{API}/ports/{port['id']}", headers=admin_headers).json()["security_groups"] == [default["id"]]
    reply = api.client.delete(f"{API}/security-groups/web/rules/{rule['id']}", headers=admin_headers)
    assert reply.status_code == 204, reply.text
    assert api.client.delete(f"{API}/security-groups/web", headers=admin_headers).status_code == 204
    assert api.client.get(f"{API}/security-groups/web", headers=admin_headers).status_code == 404


def test_vm_create_puts_its_nics_in_the_groups_named(api: Api, admin_headers: dict[str, str], launch: Any) -> None:
    launch("warm")  # the flavor and image
    _, subnet = network(api, admin_headers)
    web = post(api, admin_headers, "security-groups", {"name": "web"})
    body = {"name": "app", "flavor": "small", "image": "img", "count": 2, "networks": ["s1"],
            "security_groups": ["web", "default"]}
    reply = api.client.post(f"{API}/instances", json=body, headers=admin_headers)
    assert reply.status_code == 202, reply.text
    ports = api.client.get(f"{API}/ports", params={"subnet": subnet["id"]}, headers=admin_headers).json()["items"]
    default = api.client.get(f"{API}/security-groups/default", headers=admin_headers).json()
    mine = [p for p in ports if p["instance_id"] is not None]
    assert len(mine) == 2 and all(p["security_groups"] == sorted([web["id"], default["id"]]) for p in mine)
    reply = api.client.post(f"{API}/instances", json=body | {"name": "x", "security_groups": ["nosuch"]},
                            headers=admin_headers)
    assert error(reply, 404) == "security group 'nosuch' not found"


def test_bad_rules_get_a_clear_4xx(api: Api, admin_headers: dict[str, str]) -> None:
    post(api, admin_headers, "security-groups", {"name": "g"})
    path = f"{API}/security-groups/g/rules"
    cases = [
        ({"protocol": "sctp"}, 400, "unknown protocol 'sctp'"),
        ({"protocol": "tcp", "port_min": 80, "port_max": 22}, 400, "malformed port range 80-22"),
        ({"protocol": "udp", "port_min": 0, "port_max": 10}, 400, "malformed port range 0-10"),
        ({"protocol": "tcp", "port_min": 1, "port_max": 70000}, 400, "malformed port range 1-70000"),
        ({"protocol": "icmp", "port_min": 22}, 400, "needs protocol tcp or udp"),
        ({"remote_cidr": "10.0.0.1/24"}, 400, "not an IPv4 network"),
        ({"remote_cidr": "10.0.0.0/8", "remote_group": "g"}, 400, "not both"),
        ({"remote_group": "nosuch"}, 404, "security group 'nosuch' not found"),
        ({"direction": "sideways"}, 422, ""),
    ]
    for body, status, message in cases:
        reply = api.client.post(path, json=body, headers=admin_headers)
        assert reply.status_code == status, (body, reply.text)
        assert message in reply.text, (body, reply.text)
    assert "already used" in error(api.client.post(f"{API}/security-groups", json={"name": "g"},
                                                   headers=admin_headers), 409)
    assert error(api.client.post(f"{API}/security-groups", json={"name": "default"}, headers=admin_headers), 409)


def test_another_organisations_group_is_not_found(api: Api, admin_headers: dict[str, str]) -> None:
    theirs = new_org(api, admin_headers)
    group = post(api, theirs, "security-groups", {"name": "secret"})
    post(api, admin_headers, "security-groups", {"name": "mine"})
    reply = api.client.post(f"{API}/security-groups/mine/rules", json={"remote_group": group["id"]},
                            headers=admin_headers)
    assert error(reply, 404) == f"security group {group['id']!r} not found"
    assert api.client.get(f"{API}/security-groups/{group['id']}", headers=admin_headers).status_code == 404
    assert api.client.delete(f"{API}/security-groups/{group['id']}", headers=admin_headers).status_code == 404
    network(api, theirs)
    port = post(api, theirs, "ports", {"subnet": "s1"})
    reply = api.client.patch(f"{API}/ports/{port['id']}", json={"security_groups": ["mine"]}, headers=admin_headers)
    assert reply.status_code == 404, reply.text


def test_a_rule_change_reaches_the_hypervisors_of_the_organisations_vpcs(
        sessions: Sessions, cloud: dict[str, int], fake: FakeRoot, engine: Engine) -> None:  # noqa: F811
    vm_with_port(sessions, cloud, "s1", 1)
    moving = vm_with_port(sessions, cloud, "s1", 2)
    vm_with_port(sessions, cloud, "s3", 3)
    drain(engine)
    with sessions() as session:
        project = default_project_id(session.connection(), cloud["org"])
        assert project is not None
        default = session.scalar(select(SecurityGroup).where(SecurityGroup.project_id == project,
                                                             SecurityGroup.is_default.is_(True)))
        assert default is not None  # made with the project
        moved = session.scalar(select(Port.id).where(Port.instance_id == moving))
        state = netstate.vpc_state(session, cloud["a"], 1)
        assert [p.security_groups for p in state.ports] == [[default.id], [default.id]]
        [group] = state.security_groups
        assert group.id == default.id and len(group.rules) == 2 and len(group.member_ips) == 2
        before = {v.id: v.generation for v in session.scalars(select(Vpc))}
        jobs = netstate.groups_changed(session, cloud["org"], project)
        session.commit()
        assert {v.id: v.generation for v in session.scalars(select(Vpc))} == {k: g + 1 for k, g in before.items()}
        applies = [j for j in jobs if j.action == "apply"]
        assert sorted(tuple(j.args["hypervisors"]) for j in applies) == [(1, 2), (3,)]
    since = len(fake.commands)
    drain(engine)
    applied = [c for c in fake.commands[since:] if c.operation == "net.apply"]
    assert sorted(c.targets if isinstance(c.targets, tuple) else (c.targets,) for c in applied) == [(1, 2), (3,)]
    for command in applied:
        assert isinstance(command.request, npb.NetApplyRequest)
        assert [g.id for g in command.request.upsert_security_groups] == [default.id]
    with sessions() as session:
        assert session.scalar(select(Job).where(Job.action == "apply", Job.state == JobState.pending)) is None
        # A port's new groups travel with the port itself, to its VPC's hypervisors.
        web = SecurityGroup(org_id=cloud["org"], project_id=project, name="web")
        session.add(web)
        session.flush()
        session.add(PortSecurityGroup(port_id=moved, group_id=web.id))
        port = session.get(Port, moved)
        assert port is not None
        jobs = netstate.groups_changed(session, cloud["org"], project, ports=[port])
        session.commit()
        [delta] = [netstate.delta_of(j) for j in jobs if j.subject_id == cloud["a"] and j.action == "apply"]
        assert [(p.id, list(p.security_groups)) for p in delta.upsert_ports] == [(moved, [web.id])]
        assert [g.id for g in delta.upsert_security_groups] == sorted([default.id, web.id])
