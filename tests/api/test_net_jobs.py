"""Network jobs against the recording fake root (tests/fakeroot.py), on a real database (issue 11).

Each change to a VPC's bound ports bumps its generation and must reach exactly the hypervisors
of that VPC: ``net.apply`` multicast to those whose subnets did not change, ``net.sync`` unicast
to one that joins or leaves the VPC or a subnet of it, or answers ``need_sync``; never a
broadcast, never a hypervisor of another VPC.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from cloudland import operations
from cloudland_api import jobs
from cloudland_api.jobs import Engine
from cloudland_api.models import Hypervisor, Instance, Job, JobState, Organisation, Port, PortIp, Subnet, Vpc
from cloudland_api.reconcile.controller import Converger
from cloudland_api.services import netstate
from cloudland_proto.v1 import compute_pb2 as cpb
from cloudland_proto.v1 import network_pb2 as npb
from google.protobuf.json_format import MessageToDict
from cloudland_api.reconcile.observer import Observer
from tests.api.conftest import Api, Launcher, add_hypervisor
from tests.api.test_sync import FakeRoot as SyncRoot
from tests.api.test_sync import Stream
from tests.fakeroot import FakeRoot, Sent

Sessions = sessionmaker[Session]
HYPERVISORS = (1, 2, 3, 4, 5)


@pytest.fixture(autouse=True)
def net_operations(monkeypatch: pytest.MonkeyPatch) -> None:
    """net.* in the registry, as cloudland/operations.py has them once the agents' side is in."""
    for name, request, result in (("net.sync", npb.NetSyncRequest, npb.NetSyncResult),
                                  ("net.apply", npb.NetApplyRequest, npb.NetApplyResult)):
        if name not in operations.OPERATIONS:
            monkeypatch.setitem(operations.OPERATIONS, name, operations.Types(request, result))
            monkeypatch.setitem(operations._RESULTS, result.DESCRIPTOR.full_name, result)


@pytest.fixture
def fake() -> FakeRoot:
    return FakeRoot(hypervisors=HYPERVISORS)


@pytest.fixture
def engine(sessions: Sessions, fake: FakeRoot) -> Engine:
    return Engine(sessions, fake, backoff=lambda tries: 0.0)


@pytest.fixture
def cloud(sessions: Sessions, org: int) -> Iterator[dict[str, int]]:
    """Hypervisors 1..5 (VTEP 192.0.2.<id>), VPC "a" with subnets s1 and s2, VPC "b" with s3."""
    with sessions() as session:
        session.add_all(Hypervisor(id=hv, hostname=f"hv{hv}", cpus=8, memory_mib=8192, free_memory_mib=8192,
                                   vtep=f"192.0.2.{hv}") for hv in HYPERVISORS)
        a = Vpc(org_id=org, name="a", domain="a.test", mtu=1450, generation=0)
        b = Vpc(org_id=org, name="b", domain="b.test", mtu=1450, generation=0)
        session.add_all([a, b])
        session.flush()
        subnets = [Subnet(org_id=org, vpc_id=vpc.id, name=name, cidr=cidr, gateway=cidr[:-4] + "1",
                          allocation_pools=[], dns_servers=[], dhcp=True, vni=vni)
                   for vpc, name, cidr, vni in ((a, "s1", "10.0.1.0/24", 101), (a, "s2", "10.0.2.0/24", 102),
                                                (b, "s3", "10.0.1.0/24", 103))]
        session.add_all(subnets)
        session.commit()
        yield {"org": org, "a": a.id, "b": b.id, "s1": subnets[0].id, "s2": subnets[1].id, "s3": subnets[2].id}


def vm_with_port(sessions: Sessions, cloud: dict[str, int], subnet: str, host: int) -> int:
    """An instance on ``host`` with one port on ``subnet``, bound there as the engine binds at
    placement; the jobs it made are committed. Returns the instance id."""
    with sessions() as session:
        vm = Instance(org_id=cloud["org"], name=f"vm-{uuid.uuid4().hex[:6]}", uuid=str(uuid.uuid4()), vcpus=1,
                      memory_mib=512, disk_gib=1, hypervisor_id=host, status="running")
        session.add(vm)
        session.flush()
        sub = session.get(Subnet, cloud[subnet])
        assert sub is not None
        port = Port(org_id=cloud["org"], subnet_id=sub.id, vpc_id=sub.vpc_id, mac=f"02:c1:00:00:{vm.id // 256:02x}:"
                    f"{vm.id % 256:02x}", instance_id=vm.id, device_index=0)
        session.add(port)
        session.flush()
        session.add(PortIp(port_id=port.id, subnet_id=sub.id, address=f"{sub.cidr[:-4]}{vm.id + 10}"))
        netstate.bind(session, {vm.id: host})
        session.commit()
        return vm.id


def release(sessions: Sessions, instance: int) -> None:
    with sessions() as session:
        netstate.release(session, [instance])
        session.commit()


def sent(fake: FakeRoot, since: int) -> list[tuple[str, int | tuple[int, ...] | None]]:
    """What was sent since command ``since``: (operation, targets), in order."""
    return [(c.operation, c.targets) for c in fake.commands[since:]]


def drain(engine: Engine) -> None:
    """Passes until nothing is left to send (jobs behind others of their VPC go in later passes)."""
    for _ in range(20):
        if not engine.run_once():
            return
    raise AssertionError("jobs are still being sent after 20 passes")


def synced(fake: FakeRoot, index: int) -> npb.NetVpcState:
    """The one VPC state of the ``net.sync`` sent as command ``index``."""
    sync = fake.commands[index].request
    assert isinstance(sync, npb.NetSyncRequest) and len(sync.vpcs) == 1 and not sync.full
    return sync.vpcs[0]


def generation(sessions: Sessions, vpc: int) -> int:
    with sessions() as session:
        row = session.get(Vpc, vpc)
        assert row is not None
        return row.generation


def test_each_change_reaches_exactly_the_hypervisors_of_its_vpc(
        sessions: Sessions, cloud: dict[str, int], fake: FakeRoot, engine: Engine) -> None:
    first = vm_with_port(sessions, cloud, "s1", 1)
    drain(engine)
    assert sent(fake, 0) == [("net.sync", 1)]  # hypervisor 1 joins the VPC: its whole state
    state = synced(fake, 0)
    assert (state.vpc_id, state.generation, state.mtu, state.domain) == (cloud["a"], 1, 1450, "a.test")
    assert [(s.id, s.vni, s.cidr, s.gateway) for s in state.subnets] == [(cloud["s1"], 101, "10.0.1.0/24", "10.0.1.1")]
    assert [(p.hypervisor, p.vtep, p.instance_id) for p in state.ports] == [(1, "192.0.2.1", first)]

    mark = len(fake.commands)
    second = vm_with_port(sessions, cloud, "s1", 2)
    vm_with_port(sessions, cloud, "s3", 5)  # another VPC: hypervisor 5 is never told of VPC a
    drain(engine)
    # (VPC b's sync goes beside VPC a's delta; VPC a's sync of 2 waits for its delta.)
    assert sent(fake, mark) == [("net.apply", (1,)), ("net.sync", 5), ("net.sync", 2)]
    delta = fake.commands[mark].request
    assert isinstance(delta, npb.NetApplyRequest)
    assert (delta.vpc_id, delta.from_generation, delta.generation) == (cloud["a"], 1, 2)
    assert [(p.instance_id, p.hypervisor, p.vtep) for p in delta.upsert_ports] == [(second, 2, "192.0.2.2")]
    joined = synced(fake, mark + 2)
    assert joined.generation == 2 and [p.hypervisor for p in joined.ports] == [1, 2]

    mark = len(fake.commands)
    third = vm_with_port(sessions, cloud, "s1", 3)
    vm_with_port(sessions, cloud, "s1", 3)  # a second port there: 3 already holds s1
    drain(engine)
    assert sent(fake, mark) == [("net.apply", (1, 2)), ("net.sync", 3), ("net.apply", (1, 2, 3))]

    # A port that leaves: the others remove it; its hypervisor, left without a port of the VPC,
    # gets the VPC with no subnets (remove it all).
    mark = len(fake.commands)
    release(sessions, second)
    drain(engine)
    assert sent(fake, mark) == [("net.apply", (1, 3)), ("net.sync", 2)]
    assert list(fake.commands[mark].request.remove_ports) != []  # type: ignore[union-attr]
    left = synced(fake, mark + 1)
    assert (left.vpc_id, list(left.subnets), list(left.ports)) == (cloud["a"], [], [])

    # Joining a second subnet of the VPC changes what hypervisor 1 holds: a sync, the rest a delta.
    mark = len(fake.commands)
    vm_with_port(sessions, cloud, "s2", 1)
    drain(engine)
    assert sent(fake, mark) == [("net.apply", (3,)), ("net.sync", 1)]
    both = synced(fake, mark + 1)
    assert [s.id for s in both.subnets] == [cloud["s1"], cloud["s2"]]

    assert all(c.targets is not None for c in fake.commands)  # never a broadcast
    assert all(4 not in ((c.targets,) if isinstance(c.targets, int) else c.targets or ()) for c in fake.commands)
    assert generation(sessions, cloud["a"]) == 6 and generation(sessions, cloud["b"]) == 1
    assert third and all(j.state == JobState.succeeded for j in all_jobs(sessions))
    assert fake.sent("net.sync")[0] == Sent(fake.commands[0].job_id, "net.sync", 1, None)


def all_jobs(sessions: Sessions) -> list[Job]:
    with sessions() as session:
        return list(session.scalars(select(Job).where(Job.kind == "net")))


def test_a_hypervisor_that_missed_a_generation_or_failed_gets_a_sync(
        sessions: Sessions, cloud: dict[str, int], fake: FakeRoot, engine: Engine) -> None:
    for hv in (1, 2, 3):
        vm_with_port(sessions, cloud, "s1", hv)
    drain(engine)
    mark = len(fake.commands)
    fake.answers[("net.apply", 2)] = npb.NetApplyResult(generation=1, need_sync=True)
    fake.fail_next("net.apply", "failed", "bridge busy", hypervisors=[3])
    vm_with_port(sessions, cloud, "s1", 1)
    drain(engine)  # the apply; its answers make one sync of 2 and 3
    assert sent(fake, mark) == [("net.apply", (1, 2, 3)), ("net.sync", (2, 3))]
    state = synced(fake, len(fake.commands) - 1)
    assert state.generation == generation(sessions, cloud["a"]) == 4
    assert [s.id for s in state.subnets] == [cloud["s1"]] and len(state.ports) == 4
    assert engine.run_once() == []


def test_hypervisors_that_join_in_one_change_get_one_sync_and_those_that_leave_another(
        sessions: Sessions, cloud: dict[str, int], fake: FakeRoot, engine: Engine) -> None:
    """A batch of placements that brings a VPC many hypervisors is one multicast sync, not a job
    (and a round trip, one after another) per hypervisor: a VPC of 1,000 was set up in 159 s."""
    first = vm_with_port(sessions, cloud, "s1", 1)
    drain(engine)
    with sessions() as session:  # 2 and 3 join on different subnets, in one change
        vms = []
        for hv, subnet in ((2, "s1"), (3, "s2")):
            vm = Instance(org_id=cloud["org"], name=f"vm-{hv}", uuid=str(uuid.uuid4()), vcpus=1, memory_mib=512,
                          disk_gib=1, hypervisor_id=hv, status="running")
            session.add(vm)
            session.flush()
            sub = session.get(Subnet, cloud[subnet])
            assert sub is not None
            port = Port(org_id=cloud["org"], subnet_id=sub.id, vpc_id=sub.vpc_id, mac=f"02:c1:00:00:01:{hv:02x}",
                        instance_id=vm.id, device_index=0)
            session.add(port)
            session.flush()
            session.add(PortIp(port_id=port.id, subnet_id=sub.id, address=f"{sub.cidr[:-4]}{hv + 50}"))
            vms.append(vm.id)
        netstate.bind(session, {vms[0]: 2, vms[1]: 3})
        session.commit()
    mark = len(fake.commands)
    drain(engine)
    assert sent(fake, mark) == [("net.apply", (1,)), ("net.sync", (2, 3))]
    state = synced(fake, mark + 1)
    assert [s.id for s in state.subnets] == [cloud["s1"], cloud["s2"]] and len(state.ports) == 3
    # 1 and 2 leave together (their VMs deleted in one change): one sync, with an empty state.
    mark = len(fake.commands)
    with sessions() as session:
        netstate.release(session, [first, vms[0]])
        session.commit()
    drain(engine)
    assert sent(fake, mark) == [("net.apply", (3,)), ("net.sync", (1, 2))]
    assert list(synced(fake, mark + 1).subnets) == []


def test_a_gone_hypervisor_is_left_out_and_an_unreachable_one_holds_nothing_up(
        sessions: Sessions, cloud: dict[str, int], fake: FakeRoot, engine: Engine) -> None:
    for hv in (1, 2, 3):
        vm_with_port(sessions, cloud, "s1", hv)
    drain(engine)
    with sessions() as session:
        gone = session.get(Hypervisor, 3)
        assert gone is not None
        gone.state = "gone"
        session.commit()
    fake.unavailable(2)
    mark = len(fake.commands)
    vm_with_port(sessions, cloud, "s1", 1)
    vm_with_port(sessions, cloud, "s1", 1)
    drain(engine)
    # Not retried for the budget: the next change of the VPC went out behind it at once.
    assert sent(fake, mark) == [("net.apply", (1, 2)), ("net.apply", (1, 2))]
    assert [j.state for j in all_jobs(sessions)].count(JobState.failed) == 2


def test_a_vm_created_with_a_network_binds_its_port_where_it_is_placed(
        api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    launch("warm")
    add_hypervisor(api, 7, vtep="192.0.2.7")
    vpc = api.client.post("/api/v1/vpcs", json={"name": "v"}, headers=admin_headers).json()
    reply = api.client.post("/api/v1/subnets", json={"name": "s", "vpc": vpc["id"], "cidr": "10.0.0.0/24"},
                            headers=admin_headers)
    assert reply.status_code == 201, reply.text
    fake = FakeRoot(hypervisors=[7])
    engine = Engine(api.app.state.write_sessions, fake, kinds=jobs.KINDS, backoff=lambda tries: 0.0)
    engine.run_once()  # "warm" (no NIC): nothing of the network
    assert [c.operation for c in fake.commands] == ["vm.create"]
    body = {"name": "web", "flavor": "small", "image": "img", "networks": ["s"]}
    accepted = api.client.post("/api/v1/instances", json=body, headers=admin_headers).json()
    drain(engine)  # placed on 7: its port is bound there, and a sync follows
    assert sent(fake, 1) == [("vm.create", 7), ("net.sync", 7)]
    state = synced(fake, len(fake.commands) - 1)
    assert [(p.hostname, p.ips, p.vtep) for p in state.ports] == [("web", ["10.0.0.2"], "192.0.2.7")]
    [port] = api.client.get("/api/v1/ports", headers=admin_headers).json()["items"]
    assert port["hypervisor_id"] == 7 and port["instance_id"] == accepted["instances"][0]["id"]
    # The create carries the VM's NIC: the port's MAC on its subnet's VNI, what its config drive says.
    create = fake.commands[1].request
    assert isinstance(create, cpb.VmCreateRequest)
    assert [MessageToDict(n, preserving_proto_field_name=True) for n in create.spec.nics] == [{
        "mac": port["mac"], "vni": state.subnets[0].vni, "mtu": vpc["mtu"], "ips": ["10.0.0.2/24"],
        "gateway": "10.0.0.1", "dns_servers": ["10.0.0.254"], "port_id": str(port["id"])}]

    job = api.client.delete(f"/api/v1/instances/{port['instance_id']}", headers=admin_headers).json()
    drain(engine)
    assert sent(fake, 3) == [("vm.delete", 7), ("net.sync", 7)]
    assert list(synced(fake, len(fake.commands) - 1).subnets) == []
    assert api.client.get("/api/v1/ports", headers=admin_headers).json()["items"] == []
    assert api.client.get(f"/api/v1/jobs/{job['id']}", headers=admin_headers).json()["state"] == "succeeded"
    assert api.client.get(f"/api/v1/vpcs/{vpc['id']}", headers=admin_headers).json()["generation"] == 2


def test_the_observer_stores_each_hypervisors_vtep_and_incarnation_from_its_report(api: Api, admin_headers: dict[str, str]) -> None:
    root = SyncRoot()
    stream = Stream(Observer(api.app.state.write_sessions, ""), root)
    root.boot(2, 1.0)
    stream.sync()
    assert [h["vtep"] for h in api.client.get("/api/v1/hypervisors", headers=admin_headers).json()["items"]] == ["", ""]
    event = root.event()
    event.reports[1].vtep = "192.0.2.9"  # hypervisor 1 now says where its tunnels end
    event.reports[1].incarnation = "a1b2"
    stream.observer.apply(event)
    assert stream.observer.flush() == {1}
    assert api.client.get("/api/v1/hypervisors/1", headers=admin_headers).json()["vtep"] == "192.0.2.9"
    with api.app.state.sessions() as session:
        row = session.get(Hypervisor, 1)
        assert row is not None and (row.incarnation, row.net_incarnation) == ("a1b2", "")


def test_an_agent_that_started_again_gets_its_whole_state_once(
        sessions: Sessions, cloud: dict[str, int], fake: FakeRoot, engine: Engine) -> None:
    vm_with_port(sessions, cloud, "s1", 1)
    vm_with_port(sessions, cloud, "s3", 1)
    drain(engine)
    with sessions() as session:
        session.add(Organisation(name="operator", operator=True))
        for hv in (1, 2):  # as the observer writes them from reports; 2 holds no port
            row = session.get(Hypervisor, hv)
            assert row is not None
            row.incarnation = "first"
        session.commit()
    submitted: list[str] = []
    converger = Converger(sessions, lambda hvs: {hv: {} for hv in hvs}, submitted.extend)
    mark = len(fake.commands)
    converger.sync([("hypervisor", 1), ("hypervisor", 2)])
    converger.sync([("hypervisor", 1), ("hypervisor", 2)])  # once per start, not per pass
    assert len(submitted) == 1
    drain(engine)
    assert sent(fake, mark) == [("net.sync", 1)]
    sync = fake.commands[-1].request
    assert isinstance(sync, npb.NetSyncRequest) and sync.full
    assert [v.vpc_id for v in sync.vpcs] == [cloud["a"], cloud["b"]] and all(v.subnets for v in sync.vpcs)

    with sessions() as session:  # the agent of hypervisor 1 started again
        row = session.get(Hypervisor, 1)
        assert row is not None
        row.incarnation = "second"
        session.commit()
    converger.sync([("hypervisor", 1)])
    drain(engine)
    assert sent(fake, mark) == [("net.sync", 1), ("net.sync", 1)] and len(submitted) == 2
