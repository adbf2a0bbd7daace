"""External networks, routers and floating IPs through the API (issue 12): create, connect, gateway,
allocate, associate; tenancy and bad input; what each hypervisor must hold afterwards
(``netstate.vpc_state``) and the syncs each change sends. Runs on SQLite and on PostgreSQL.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from cloudland_api.models import Job, JobState, Port, Role
from cloudland_api.services import netstate
from tests.api.conftest import Api, add_hypervisor, settle
from tests.api.test_networks import API, error, network, post

EXTERNAL = {"name": "public", "cidr": "203.0.113.0/24", "bridge": "ext0",
            "allocation_pools": [{"start": "203.0.113.10", "end": "203.0.113.12"}]}


def bind(api: Api, port_id: int, hypervisor: int) -> None:
    """Bind a port to a hypervisor as placement does (its VPC's net jobs are written)."""
    with api.app.state.write_sessions() as session:
        port = session.get(Port, port_id)
        netstate.bind_port(session, port, hypervisor)
        session.commit()


def state(api: Api, vpc_id: int, hypervisor: int) -> Any:
    with api.app.state.sessions() as session:
        return netstate.vpc_state(session, vpc_id, hypervisor)


def syncs(api: Api, vpc_id: int) -> list[int]:
    """The hypervisors with a pending sync of the VPC; those jobs are ended (as if sent)."""
    with api.app.state.sessions() as session:
        pending = session.execute(select(Job.id, Job.hypervisor_id, Job.args).where(
            Job.kind == "net", Job.action == "sync", Job.subject_id == vpc_id, Job.state == JobState.pending)).all()
    for job_id, _, _ in pending:
        settle(api, job_id)
    # One job per hypervisor, or one multicast to several (api/jobs/net.py).
    return sorted(hv for _, one, args in pending for hv in ([one] if one is not None else args["hypervisors"]))


def put(api: Api, headers: dict[str, str], path: str, body: dict[str, Any] | None, expect: int = 200) -> dict[str, Any]:
    reply = api.client.put(f"{API}/{path}", json=body, headers=headers)
    assert reply.status_code == expect, reply.text
    return reply.json()  # type: ignore[no-any-return]


def test_a_distributed_router_with_snat_and_a_floating_ip(api: Api, admin_headers: dict[str, str]) -> None:
    headers = admin_headers
    external = post(api, headers, "external-networks", EXTERNAL)
    assert (external["gateway"], external["bridge"]) == ("203.0.113.1", "ext0")
    vpc, s1 = network(api, headers, "10.0.1.0/24", subnet="s1")
    _, s2 = network(api, headers, "10.0.2.0/24", subnet="s2")
    for hv in (1, 2):
        add_hypervisor(api, hv, vtep=f"192.0.2.{hv}")
    p1 = post(api, headers, "ports", {"subnet": "s1"})
    p2 = post(api, headers, "ports", {"subnet": "s2"})
    bind(api, p1["id"], 1)
    bind(api, p2["id"], 2)
    assert [s.id for s in state(api, vpc["id"], 1).subnets] == [s1["id"]]  # no router yet: its own subnet only
    router = post(api, headers, "routers", {"name": "r1", "vpc": vpc["name"]})
    assert (router["subnet_ids"], router["external_network_id"], router["snat_addresses"]) == ([], None, [])
    assert syncs(api, vpc["id"]) == [1, 2]  # each joined the VPC
    router = post(api, headers, f"routers/{router['id']}/subnets", {"subnet": "s1"}, expect=200)
    assert syncs(api, vpc["id"]) == [1, 2]  # a router change syncs every hypervisor of the VPC
    router = post(api, headers, f"routers/{router['id']}/subnets", {"subnet": s2["id"]}, expect=200)
    assert router["subnet_ids"] == [s1["id"], s2["id"]]
    assert syncs(api, vpc["id"]) == [1, 2]
    # Each hypervisor now holds both subnets, with every port: its share of the router reaches both.
    for hv in (1, 2):
        held = state(api, vpc["id"], hv)
        assert [s.id for s in held.subnets] == [s1["id"], s2["id"]]
        assert {p.id for p in held.ports} == {p1["id"], p2["id"]}
        assert list(held.router.subnet_ids) == [s1["id"], s2["id"]] and not held.router.HasField("external")
    router = put(api, headers, f"routers/{router['id']}/gateway", {"external_network": "public"})
    snat = {s["hypervisor_id"]: s["address"] for s in router["snat_addresses"]}
    assert snat == {1: "203.0.113.10", 2: "203.0.113.11"}  # one per hypervisor of the VPC, from the pools
    held = state(api, vpc["id"], 2)
    assert (held.router.external.cidr, held.router.external.gateway, held.router.external.bridge) == (
        "203.0.113.0/24", "203.0.113.1", "ext0")
    assert held.router.snat_address == "203.0.113.11"
    # One state multicast to both (a sync of several, api/jobs/net.py): each one's SNAT address.
    with api.app.state.sessions() as session:
        both = netstate.vpc_state(session, vpc["id"], [1, 2])
    assert both.router.snat_address == "" and [(s.hypervisor, s.address) for s in both.router.snat_addresses] == [
        (1, "203.0.113.10"), (2, "203.0.113.11")]
    fip = post(api, headers, "floating-ips", {"external_network": external["id"]})
    assert (fip["address"], fip["port_id"]) == ("203.0.113.12", None)
    assert "no free address" in error(api.client.post(f"{API}/floating-ips", json={"external_network": "public"},
                                                      headers=headers), 409)
    generation = state(api, vpc["id"], 1).generation
    fip = put(api, headers, f"floating-ips/{fip['id']}/port", {"port": p2["id"]})
    assert (fip["port_id"], fip["fixed_ip"]) == (p2["id"], p2["fixed_ips"][0])
    held = state(api, vpc["id"], 1)
    assert held.generation == generation + 1
    assert [(f.address, f.port_id, f.fixed_ip) for f in held.router.floating_ips] == [
        ("203.0.113.12", p2["id"], p2["fixed_ips"][0])]
    assert "disassociate it first" in error(api.client.delete(f"{API}/routers/{router['id']}", headers=headers), 409)
    fip = api.client.delete(f"{API}/floating-ips/{fip['id']}/port", headers=headers).json()
    assert fip["port_id"] is None and not state(api, vpc["id"], 1).router.floating_ips
    assert api.client.delete(f"{API}/floating-ips/{fip['id']}", headers=headers).status_code == 204
    # Cleared gateway: the SNAT addresses are given back.
    router = put(api, headers, f"routers/{router['id']}/gateway", {"external_network": None})
    assert router["snat_addresses"] == [] and not state(api, vpc["id"], 1).router.HasField("external")
    assert api.client.delete(f"{API}/routers/{router['id']}", headers=headers).status_code == 204
    assert [s.id for s in state(api, vpc["id"], 1).subnets] == [s1["id"]] and not state(api, vpc["id"], 1).HasField("router")
    assert api.client.delete(f"{API}/external-networks/{external['id']}", headers=headers).status_code == 204


def test_bad_requests_and_tenancy_are_4xx(api: Api, admin_headers: dict[str, str]) -> None:
    headers = admin_headers
    external = post(api, headers, "external-networks", EXTERNAL)
    vpc, _ = network(api, headers, "10.0.1.0/24", subnet="s1")
    network(api, headers, "10.0.9.0/24", vpc="v2", subnet="other", gateway=None)
    router = post(api, headers, "routers", {"name": "r1", "vpc": vpc["id"]})
    assert "already has a router" in error(api.client.post(f"{API}/routers", json={"name": "r2", "vpc": vpc["id"]},
                                                           headers=headers), 409)
    # A gateway on a tenant network, or on nothing that exists.
    assert "not an external network" in error(api.client.put(f"{API}/routers/{router['id']}/gateway",
                                                             json={"external_network": "s1"}, headers=headers), 400)
    assert "not found" in error(api.client.put(f"{API}/routers/{router['id']}/gateway",
                                               json={"external_network": "nowhere"}, headers=headers), 404)
    # A subnet of another VPC, or one without a gateway.
    assert f"routes vpc {vpc['id']}" in error(api.client.post(f"{API}/routers/{router['id']}/subnets",
                                                             json={"subnet": "other"}, headers=headers), 409)
    _, bare = network(api, headers, "10.0.3.0/24", subnet="bare", gateway=None)
    assert "no gateway" in error(api.client.post(f"{API}/routers/{router['id']}/subnets", json={"subnet": bare["id"]},
                                                 headers=headers), 400)
    assert "203.0.113.7/24" in error(api.client.post(f"{API}/external-networks",
                                                     json=EXTERNAL | {"name": "x", "cidr": "203.0.113.7/24"},
                                                     headers=headers), 400)
    # What a router uses cannot go from under it.
    assert "router 'r1'" in error(api.client.delete(f"{API}/vpcs/{vpc['id']}", headers=headers), 409)
    post(api, headers, f"routers/{router['id']}/subnets", {"subnet": "s1"}, expect=200)
    [s1] = [s for s in api.client.get(f"{API}/subnets", headers=headers).json()["items"] if s["name"] == "s1"]
    assert "connected to router" in error(api.client.delete(f"{API}/subnets/{s1['id']}", headers=headers), 409)
    # A port not behind a router with a gateway on the floating IP's network.
    port = post(api, headers, "ports", {"subnet": "s1"})
    fip = post(api, headers, "floating-ips", {"external_network": external["name"]})
    assert "used by 0 router(s) and 1 address(es)" in error(
        api.client.delete(f"{API}/external-networks/{external['id']}", headers=headers), 409)
    assert "not behind a router" in error(api.client.put(f"{API}/floating-ips/{fip['id']}/port",
                                                         json={"port": port["id"]}, headers=headers), 409)
    # Another organisation: cannot make external networks, cannot see our floating IP or router.
    other = api.add_user("mallory", "rivals", Role.admin)
    assert api.client.post(f"{API}/external-networks", json=EXTERNAL | {"name": "x"}, headers=other).status_code == 403
    assert api.client.get(f"{API}/external-networks/{external['id']}", headers=other).status_code == 200  # shared
    assert api.client.get(f"{API}/floating-ips/{fip['id']}", headers=other).status_code == 404
    assert api.client.delete(f"{API}/floating-ips/{fip['id']}", headers=other).status_code == 404
    assert api.client.get(f"{API}/routers/{router['id']}", headers=other).status_code == 404
    their_vpc, _ = network(api, other, "10.0.1.0/24", vpc="theirs", subnet="t1")
    their_port = post(api, other, "ports", {"subnet": "t1"})
    assert api.client.put(f"{API}/floating-ips/{fip['id']}/port", json={"port": their_port["id"]},
                          headers=headers).status_code == 404  # their port is not ours to use
    assert api.client.put(f"{API}/floating-ips/{fip['id']}/port", json={"port": 2**40},
                          headers=headers).status_code == 422  # an id no database holds: refused, not a 500
    assert api.client.get(f"{API}/floating-ips", headers=other).json()["items"] == []
    reader = api.add_user("rita", "rivals", Role.reader)
    assert api.client.post(f"{API}/routers", json={"name": "r", "vpc": their_vpc["id"]}, headers=reader).status_code == 403


def test_the_all_in_one_clouds_external_network_and_default_router(api: Api, admin_headers: dict[str, str]) -> None:
    """``make run``'s external network (api/settings.py external_network, made by api/__main__.py at
    every start where it is missing): the external network ``external`` on the settings' CIDR and
    bridge, and the default network's router ``default`` with its gateway there; made once."""
    from cloudland.errors import ConfigError
    from cloudland_api.models import Organisation
    from cloudland_api.services.networks import make_default_network
    from cloudland_api.services.routers import make_default_external
    from cloudland_api.settings import ApiSettings

    settings = ApiSettings.from_env(default_network="10.0.0.0/24", external_network="198.51.100.0/24",
                                    external_bridge="t1e")
    with api.app.state.write_sessions() as session:
        org = session.scalar(select(Organisation.id).where(Organisation.name == "admin"))
        subnet = make_default_network(session, org, settings)
        made = make_default_external(session, settings)
        assert made is not None
        external, router = made
        assert (external.name, external.cidr, external.gateway, external.bridge) == \
            ("external", "198.51.100.0/24", "198.51.100.1", "t1e")
        assert router is not None and (router.name, router.external_network_id) == ("default", external.id)
        assert make_default_external(session, settings) is None  # there already: kept as it is
        subnet_id, external_id = subnet.id, external.id
    routers = api.client.get(f"{API}/routers", headers=admin_headers).json()["items"]
    assert [(r["name"], r["subnet_ids"], r["external_network_id"]) for r in routers] == \
        [("default", [subnet_id], external_id)]
    for wrong, says in (({"external_network": "198.51.100.0/24"}, "EXTERNAL_BRIDGE must name"),
                        ({"external_network": "198.51.100.1/24", "external_bridge": "t1e"}, "EXTERNAL_NETWORK must be")):
        with pytest.raises(ConfigError, match=says):
            ApiSettings.from_env(**wrong)
