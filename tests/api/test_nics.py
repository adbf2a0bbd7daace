"""Attaching and detaching a NIC on a VM (issue 11): ``POST /instances/{id}/nics`` and
``DELETE /instances/{id}/nics/{port}``, run by the job engine against the recording fake root:
what the agent is sent (``vm.attach_nic`` with the port's NIC, ``vm.detach_nic`` with its MAC),
what the VPC's hypervisors are told, what becomes of the port, and the refusals (4xx)."""

from __future__ import annotations

from typing import Any

from google.protobuf.json_format import MessageToDict

from cloudland_api import jobs
from cloudland_api.jobs import Engine
from cloudland_proto.v1 import compute_pb2 as cpb
from tests.api.conftest import Api, Launcher, add_hypervisor
from tests.api.test_net_jobs import drain, sent
from tests.api.test_tenants import new_org
from tests.fakeroot import FakeRoot

V1 = "/api/v1"


def post(api: Api, path: str, body: Any, headers: dict[str, str], status: int) -> Any:
    reply = api.client.post(V1 + path, json=body, headers=headers)
    assert reply.status_code == status, reply.text
    return reply.json()


def ports(api: Api, headers: dict[str, str]) -> dict[int, dict[str, Any]]:
    return {p["id"]: p for p in api.client.get(f"{V1}/ports", headers=headers).json()["items"]}


def cloud(api: Api, admin_headers: dict[str, str]) -> tuple[FakeRoot, Engine]:
    """Hypervisor 7, VPC ``v`` with subnet ``s`` (10.0.0.0/24), and an engine on a recording fake root."""
    add_hypervisor(api, 7, vtep="192.0.2.7")
    vpc = post(api, "/vpcs", {"name": "v"}, admin_headers, 201)
    post(api, "/subnets", {"name": "s", "vpc": vpc["id"], "cidr": "10.0.0.0/24"}, admin_headers, 201)
    fake = FakeRoot(hypervisors=[7])
    return fake, Engine(api.app.state.write_sessions, fake, kinds=jobs.KINDS, backoff=lambda tries: 0.0)


def test_a_nic_is_attached_to_a_running_vm_and_detached_again(
        api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    add_hypervisor(api, 7, vtep="192.0.2.7")
    vpc = post(api, "/vpcs", {"name": "v"}, admin_headers, 201)
    first = post(api, "/subnets", {"name": "s", "vpc": vpc["id"], "cidr": "10.0.0.0/24"}, admin_headers, 201)
    second = post(api, "/subnets", {"name": "t", "vpc": vpc["id"], "cidr": "10.1.0.0/24"}, admin_headers, 201)
    fake = FakeRoot(hypervisors=[7])
    engine = Engine(api.app.state.write_sessions, fake, kinds=jobs.KINDS, backoff=lambda tries: 0.0)
    launch("warm")  # flavor and image
    vm = post(api, "/instances", {"name": "web", "flavor": "small", "image": "img", "networks": ["s"]},
              admin_headers, 202)["instances"][0]
    drain(engine)
    [primary] = ports(api, admin_headers).values()

    job = post(api, f"/instances/{vm['id']}/nics", {"network": "t"}, admin_headers, 202)
    assert job["action"] == "attach_nic"
    [added] = [p for p in ports(api, admin_headers).values() if p["subnet_id"] == second["id"]]
    assert (added["instance_id"], added["device_index"], added["hypervisor_id"]) == (vm["id"], 1, 7)
    before = len(fake.commands)
    drain(engine)
    assert sorted(sent(fake, before)) == [("net.sync", 7), ("vm.attach_nic", 7)]  # 7 joins subnet t
    [attach] = fake.sent("vm.attach_nic")
    assert isinstance(attach.request, cpb.VmAttachNicRequest)
    create = fake.sent("vm.create")[-1].request
    assert isinstance(create, cpb.VmCreateRequest)
    assert MessageToDict(attach.request, preserving_proto_field_name=True) == {
        "name": create.spec.name,
        "nic": {"mac": added["mac"], "vni": second["vni"], "mtu": vpc["mtu"], "ips": ["10.1.0.2/24"],
                "gateway": "10.1.0.1", "dns_servers": ["10.1.0.254"], "port_id": str(added["id"])}}
    state = api.client.get(f"{V1}/jobs/{job['id']}", headers=admin_headers).json()
    assert state["state"] == "succeeded"
    assert api.client.get(f"{V1}/instances/{vm['id']}", headers=admin_headers).json()["status"] == "running"

    # The primary stays; the other goes, and its port is kept, bound to nothing.
    refused = api.client.delete(f"{V1}/instances/{vm['id']}/nics/{primary['id']}", headers=admin_headers)
    assert refused.status_code == 409 and "primary NIC" in refused.text
    reply = api.client.delete(f"{V1}/instances/{vm['id']}/nics/{added['id']}", headers=admin_headers)
    assert reply.status_code == 202, reply.text
    before = len(fake.commands)
    drain(engine)
    assert sorted(sent(fake, before)) == [("net.sync", 7), ("vm.detach_nic", 7)]  # 7 leaves subnet t
    detach = fake.sent("vm.detach_nic")[0].request
    assert isinstance(detach, cpb.VmDetachNicRequest) and detach.mac == added["mac"]
    kept = ports(api, admin_headers)[added["id"]]
    assert (kept["instance_id"], kept["device_index"], kept["hypervisor_id"]) == (None, None, None)
    assert kept["fixed_ips"] == ["10.1.0.2"]

    # Attached again by its id: the same port, the same address.
    post(api, f"/instances/{vm['id']}/nics", {"port": added["id"]}, admin_headers, 202)
    drain(engine)
    again = ports(api, admin_headers)[added["id"]]
    assert (again["instance_id"], again["device_index"], again["hypervisor_id"]) == (vm["id"], 1, 7)
    assert fake.sent("vm.attach_nic")[-1].request.nic.mac == added["mac"]  # type: ignore[union-attr]


def test_a_failed_attach_gives_back_the_port_it_made(api: Api, admin_headers: dict[str, str],
                                                     launch: Launcher) -> None:
    fake, engine = cloud(api, admin_headers)
    vm = launch("web")["instances"][0]
    drain(engine)
    fake.fail_next("vm.attach_nic", error="libvirt refused the device")
    job = post(api, f"/instances/{vm['id']}/nics", {"network": "s"}, admin_headers, 202)
    drain(engine)
    state = api.client.get(f"{V1}/jobs/{job['id']}", headers=admin_headers).json()
    assert state["state"] == "failed" and "libvirt refused the device" in state["reason"]
    assert ports(api, admin_headers) == {}  # the port it made is gone, its address free
    assert api.client.get(f"{V1}/instances/{vm['id']}", headers=admin_headers).json()["status"] == "running"


def test_bad_attaches_and_detaches_are_4xx_naming_the_cause(api: Api, admin_headers: dict[str, str],
                                                            launch: Launcher) -> None:
    fake, engine = cloud(api, admin_headers)
    other = launch("other")["instances"][0]
    vm = post(api, "/instances", {"name": "web", "flavor": "small", "image": "img", "networks": ["s"]},
              admin_headers, 202)["instances"][0]
    drain(engine)
    nics = f"/instances/{vm['id']}/nics"
    loose = post(api, "/ports", {"subnet": "s"}, admin_headers, 201)
    # Exactly one of network and port.
    assert "exactly one of network" in post(api, nics, {}, admin_headers, 422)["error"]["message"]
    assert "exactly one of network" in post(api, nics, {"network": "s", "port": loose["id"]}, admin_headers,
                                            422)["error"]["message"]
    # One NIC per subnet; a port bound to another instance.
    message = post(api, nics, {"network": "s"}, admin_headers, 409)["error"]["message"]
    assert "has a NIC on subnet" in message
    post(api, f"/instances/{other['id']}/nics", {"port": loose["id"]}, admin_headers, 202)
    assert "is already a NIC of instance" in post(api, nics, {"port": loose["id"]}, admin_headers,
                                                  409)["error"]["message"]
    # While that attach runs, the other instance is busy.
    assert "is busy with job" in post(api, f"/instances/{other['id']}/nics", {"network": "s"}, admin_headers,
                                      409)["error"]["message"]
    # Another organisation's subnet, port and instance are not found; nor is a port of nobody's.
    beta = new_org(api, admin_headers, "beta", "bob")
    assert post(api, nics, {"network": "s"}, beta, 404)
    mine = post(api, "/vpcs", {"name": "v"}, beta, 201)
    post(api, "/subnets", {"name": "b", "vpc": mine["id"], "cidr": "10.0.0.0/24"}, beta, 201)
    assert post(api, nics, {"network": "b"}, admin_headers, 404)
    theirs = post(api, "/ports", {"subnet": "b"}, beta, 201)
    assert post(api, nics, {"port": theirs["id"]}, admin_headers, 404)
    gone = api.client.delete(f"{V1}{nics}/{theirs['id']}", headers=admin_headers)
    assert gone.status_code == 404, gone.text
    # A port that is not this instance's NIC.
    drain(engine)
    wrong = api.client.delete(f"{V1}{nics}/{loose['id']}", headers=admin_headers)
    assert wrong.status_code == 409 and "is not a NIC of instance" in wrong.text


def test_the_default_network_gives_vms_created_without_networks_a_nic(api: Api, admin_headers: dict[str, str],
                                                                      launch: Launcher) -> None:
    """The all-in-one cloud's default network (api/settings.py default_network, made by
    api/__main__.py at the first start): a VM created without ``networks`` gets a NIC on the
    organisation's subnet ``default``; ``networks: []`` still means none."""
    from sqlalchemy import select

    from cloudland_api.models import Organisation
    from cloudland_api.services.networks import make_default_network
    from cloudland_api.settings import ApiSettings

    launch("warm")  # before the default network: no NIC
    assert ports(api, admin_headers) == {}
    with api.app.state.write_sessions() as session:
        org = session.scalar(select(Organisation.id).where(Organisation.name == "admin"))
        made = make_default_network(session, org, ApiSettings.from_env(default_network="10.0.0.0/24"))
        assert (made.name, made.cidr, made.dhcp) == ("default", "10.0.0.0/24", True)
    vm = launch("web")["instances"][0]
    [port] = ports(api, admin_headers).values()
    assert (port["instance_id"], port["device_index"], port["fixed_ips"]) == (vm["id"], 0, ["10.0.0.2"])
    none = post(api, "/instances", {"name": "bare", "flavor": "small", "image": "img", "networks": []},
                admin_headers, 202)["instances"][0]
    assert not [p for p in ports(api, admin_headers).values() if p["instance_id"] == none["id"]]
    vpcs = api.client.get(f"{V1}/vpcs", headers=admin_headers).json()["items"]
    assert [v["name"] for v in vpcs] == ["default"]
