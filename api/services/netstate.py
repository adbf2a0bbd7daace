"""The desired network state of each hypervisor, computed from the database, and the jobs that
carry each change to it (proto/v1/network.proto; docs/architecture.md "Tenant networks").

What a hypervisor must hold of a VPC (``vpc_state``): the VPC's subnets that have a port bound
there, and every bound port of those subnets, local and remote, each with its hypervisor's
VTEP. The database is the truth; a hypervisor is *of* a VPC while a port of the VPC is bound to
it.

A change to a VPC's bound ports (``begin`` ... ``commit``) bumps the VPC's generation in the
same transaction and writes ``net`` jobs (api/jobs/net.py):

- ``apply``: the delta (``NetApplyRequest``, built now, from the generation before to the one
  after), multicast to the hypervisors of the VPC whose set of subnets did not change;
- ``sync``: to the hypervisors whose set of subnets changed (they join the VPC or a subnet, or
  leave one), carrying their whole state of the VPC as it is when the job is sent: a unicast
  for one, one multicast for several (those that leave apart from those that join).

A hypervisor that answers ``need_sync`` (it missed a generation) gets a ``sync`` too; one pending
sync per (VPC, hypervisor) is enough, since a sync is read when it is sent.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.json_format import MessageToDict, ParseDict
from sqlalchemy import select
from sqlalchemy.orm import Session

from cloudland.client import new_job_id
from cloudland_api.db import for_change
from cloudland_api.models import (
    VPC, Hypervisor, Instance, Job, JobState, Port, PortAllowedAddress, PortIp, PortSecurityGroup, SecurityGroup,
    SecurityRule, Subnet, Vpc
)
from cloudland_api.services import routerstate
from cloudland_proto.v1 import network_pb2 as npb

log = logging.getLogger(__name__)

Held = dict[int, frozenset[int]]  # hypervisor -> the subnets of one VPC it holds


def held(session: Session, vpc_id: int) -> Held:
    """Each hypervisor of the VPC with the subnets it holds: those with a port bound there, and
    with one of them connected by the VPC's router, every subnet the router connects (issue 12:
    its share of the distributed router reaches each)."""
    found: dict[int, set[int]] = defaultdict(set)
    rows = session.execute(select(Port.hypervisor_id, Port.subnet_id).distinct()
                           .where(Port.vpc_id == vpc_id, Port.hypervisor_id.is_not(None)))
    for hypervisor, subnet in rows:
        found[hypervisor].add(subnet)
    routed = routerstate.connected(session, vpc_id)
    return {hv: frozenset(subnets | routed if subnets & routed else subnets) for hv, subnets in found.items()}


def routing(session: Session, vpc_id: int, holders: Held) -> list[int]:
    """The hypervisors of ``holders`` that run the VPC's router (they hold its subnets)."""
    routed = routerstate.connected(session, vpc_id)
    return sorted(hv for hv, subnets in holders.items() if subnets & routed)


def vpcs_of(session: Session, hypervisor: int) -> list[int]:
    """The VPCs with a port bound to ``hypervisor``, by id."""
    return list(session.scalars(select(Port.vpc_id).distinct().where(Port.hypervisor_id == hypervisor)
                                .order_by(Port.vpc_id)))


def net_subnet(subnet: Subnet) -> npb.NetSubnet:
    return npb.NetSubnet(id=subnet.id, vpc_id=subnet.vpc_id, vni=subnet.vni, cidr=subnet.cidr,
                         gateway=subnet.gateway or "", dns_servers=list(subnet.dns_servers), dhcp=subnet.dhcp)


def port_ips(session: Session, port_ids: Iterable[int]) -> dict[int, list[str]]:
    """Each port's fixed addresses, in the order they were given."""
    ips: dict[int, list[str]] = defaultdict(list)
    wanted = list(port_ids)
    if wanted:
        for port_id, addr in session.execute(select(PortIp.port_id, PortIp.address)
                                             .where(PortIp.port_id.in_(wanted)).order_by(PortIp.id)):
            ips[port_id].append(addr)
    return ips


def net_ports(session: Session, ports: Sequence[Port]) -> list[npb.NetPort]:
    """``ports`` as the agents get them: addresses, the instance's name, the hypervisor's VTEP."""
    ips = port_ips(session, (p.id for p in ports))
    hvs = {p.hypervisor_id for p in ports if p.hypervisor_id is not None}
    vteps = {hv: vtep for hv, vtep in session.execute(select(Hypervisor.id, Hypervisor.vtep)
                                                       .where(Hypervisor.id.in_(hvs)))} if hvs else {}
    owners = {p.instance_id for p in ports if p.instance_id is not None}
    names = {i: name for i, name in session.execute(select(Instance.id, Instance.name)
                                                    .where(Instance.id.in_(owners)))} if owners else {}
    groups = groups_of(session, ports)
    pairs: dict[int, list[str]] = defaultdict(list)
    if ports:
        for port_id, cidr in session.execute(select(PortAllowedAddress.port_id, PortAllowedAddress.cidr)
                                             .where(PortAllowedAddress.port_id.in_([p.id for p in ports]))
                                             .order_by(PortAllowedAddress.cidr)):
            pairs[port_id].append(cidr)
    return [npb.NetPort(id=p.id, subnet_id=p.subnet_id, mac=p.mac, ips=ips.get(p.id, []),
                        hostname=names.get(p.instance_id, "") if p.instance_id is not None else p.name,
                        instance_id=p.instance_id or 0, hypervisor=p.hypervisor_id or 0,
                        vtep=vteps.get(p.hypervisor_id, ""), security_groups=groups[p.id],
                        allowed_addresses=pairs.get(p.id, [])) for p in ports]


# -- security groups (issue 12) ------------------------------------------------------------------


def groups_of(session: Session, ports: Sequence[Port]) -> dict[int, list[int]]:
    """Each port's security groups: its own, or else its project's default group (none when the
    project has none: its ports are then only anti-spoofed)."""
    found: dict[int, list[int]] = {p.id: [] for p in ports}
    if not ports:
        return found
    for port_id, group_id in session.execute(select(PortSecurityGroup.port_id, PortSecurityGroup.group_id)
                                             .where(PortSecurityGroup.port_id.in_(list(found)))
                                             .order_by(PortSecurityGroup.group_id)):
        found[port_id].append(group_id)
    projects = {p.project_id for p in ports if not found[p.id]}
    defaults = {project: group for project, group in session.execute(
        select(SecurityGroup.project_id, SecurityGroup.id).where(
            SecurityGroup.project_id.in_(projects), SecurityGroup.is_default.is_(True)))} if projects else {}
    for port in ports:
        if not found[port.id] and port.project_id in defaults:
            found[port.id] = [defaults[port.project_id]]
    return found


def vpc_groups(session: Session, vpc_id: int) -> list[npb.NetSecurityGroup]:
    """The security groups of the VPC's bound ports, and those their rules name as remote groups,
    each with its rules and its members' addresses in this VPC (wherever they are bound)."""
    ports = session.scalars(select(Port).where(Port.vpc_id == vpc_id, Port.hypervisor_id.is_not(None))
                            .order_by(Port.id)).all()
    groups = groups_of(session, ports)
    ips = port_ips(session, (p.id for p in ports))
    used = {g for gs in groups.values() for g in gs}
    rules: dict[int, list[SecurityRule]] = defaultdict(list)
    if used:
        for rule in session.scalars(select(SecurityRule).where(SecurityRule.group_id.in_(used)).order_by(SecurityRule.id)):
            rules[rule.group_id].append(rule)
    named = used | {r.remote_group_id for rs in rules.values() for r in rs if r.remote_group_id is not None}
    return [npb.NetSecurityGroup(
        id=g, member_ips=[ip for p in ports if g in groups[p.id] for ip in ips.get(p.id, [])],
        rules=[npb.NetSecurityRule(id=r.id, egress=r.direction == "egress", protocol=r.protocol,
                                   port_min=r.port_min or 0, port_max=r.port_max or 0, remote_cidr=r.remote_cidr or "",
                                   remote_group=r.remote_group_id or 0) for r in rules.get(g, [])])
        for g in sorted(named)]


def groups_changed(session: Session, org_id: int, project_id: int, user_id: int | None = None,
                   ports: Sequence[Port] = ()) -> list[Job]:
    """A change of each VPC of the project with bound ports, carrying its groups (and ``ports``,
    whose groups or allowed addresses changed): what a rule's change or a port's new groups need
    (flushed by the caller; jobs added to ``session``). A group and its members are of one
    project (services/secgroups.py), so no other project's VPC is told. Every such VPC is told,
    not only those whose ports use the group (simpler; a cost per VPC)."""
    jobs: list[Job] = []
    for vpc_id in session.scalars(select(Port.vpc_id).distinct().where(Port.project_id == project_id,
                                                                       Port.hypervisor_id.is_not(None))
                                  .order_by(Port.vpc_id)).all():
        change = begin(session, vpc_id)
        change.groups = True
        change.upserts += [p for p in ports if p.vpc_id == vpc_id and p.hypervisor_id is not None]  # their groups
        jobs += commit(session, change, org_id, user_id)
    return jobs


def vpc_state(session: Session, vpc_id: int, hypervisor: int | Collection[int]) -> npb.NetVpcState:
    """Everything ``hypervisor`` must hold of the VPC now, at its current generation. A VPC that
    no longer exists, or of which nothing is bound there, has no subnets: the agent removes it.
    For several hypervisors (one sync to all of them), the subnets any of them holds: each makes
    only those with a port of its own (the agents' plan), so one state serves them all."""
    vpc = session.get(Vpc, vpc_id)
    if vpc is None:
        return npb.NetVpcState(vpc_id=vpc_id)
    state = npb.NetVpcState(vpc_id=vpc.id, generation=vpc.generation, mtu=vpc.mtu, domain=vpc.domain)
    holding = held(session, vpc_id)
    subnet_ids = frozenset().union(*(holding.get(hv, frozenset())
                                     for hv in ([hypervisor] if isinstance(hypervisor, int) else hypervisor)))
    if not subnet_ids:
        return state
    subnets = session.scalars(select(Subnet).where(Subnet.id.in_(subnet_ids)).order_by(Subnet.id)).all()
    ports = session.scalars(select(Port).where(Port.subnet_id.in_(subnet_ids), Port.hypervisor_id.is_not(None))
                            .order_by(Port.id)).all()
    state.subnets.extend(net_subnet(s) for s in subnets)
    state.ports.extend(net_ports(session, ports))
    router = routerstate.net_router(session, vpc_id, hypervisor)
    if router is not None:
        state.router.CopyFrom(router)
    state.security_groups.extend(vpc_groups(session, vpc_id))
    return state


# -- changes ----------------------------------------------------------------------------------


@dataclass
class Change:
    """One change to a VPC's bound ports, begun with ``begin`` and ended with ``commit``."""

    vpc: Vpc
    before: Held
    upserts: list[Port] = field(default_factory=list)   # ports bound (or changed) by the change
    removes: list[int] = field(default_factory=list)    # ids of bound ports removed or unbound
    groups: bool = False  # security groups changed: their rules, or a port's groups (issue 12)


def begin(session: Session, vpc_id: int) -> Change:
    """Lock the VPC (changes to one VPC are serial, so generations never fork) and note what its
    hypervisors hold now. Begin changes of several VPCs in id order (no deadlock)."""
    vpc = session.scalar(for_change(select(Vpc).where(Vpc.id == vpc_id)))
    assert vpc is not None, f"vpc {vpc_id} vanished under its ports"  # RESTRICT: it cannot while ports exist
    return Change(vpc, held(session, vpc_id))


def commit(session: Session, change: Change, org_id: int, user_id: int | None = None) -> list[Job]:
    """The generation +1 and the jobs that carry the change (added to ``session``; the caller
    commits and submits them). Nothing changes when no hypervisor held or holds the ports."""
    if not change.upserts and not change.removes and not change.groups:
        return []
    session.flush()
    vpc = change.vpc
    after = held(session, vpc.id)
    moved = {hv for hv in change.before.keys() | after.keys() if change.before.get(hv) != after.get(hv)}
    told = sorted(set(after) - moved)
    if not told and not moved:
        return []
    routerstate.ensure_snat(session, vpc.id, routing(session, vpc.id, after))  # the joining ones' are in their sync
    start = vpc.generation
    vpc.generation = start + 1
    batch = new_job_id()
    jobs: list[Job] = []
    if told:
        delta = npb.NetApplyRequest(vpc_id=vpc.id, from_generation=start, generation=start + 1,
                                    upsert_ports=net_ports(session, change.upserts), remove_ports=change.removes,
                                    upsert_security_groups=vpc_groups(session, vpc.id))
        jobs.append(_job(org_id, user_id, batch, "apply", vpc.id, None,
                         {"request": MessageToDict(delta, preserving_proto_field_name=True), "hypervisors": told}))
    # Those that leave get an empty state, those that join (or change) the union of theirs:
    # one sync each group, however many hypervisors a placement batch brought (a VPC of 1,000).
    jobs += sync_jobs(session, vpc.id, org_id, sorted(hv for hv in moved if not after.get(hv)), user_id, batch)
    jobs += sync_jobs(session, vpc.id, org_id, sorted(hv for hv in moved if after.get(hv)), user_id, batch)
    session.add_all(jobs)
    log.info("event=vpc_changed vpc=%d generation=%d upserts=%d removes=%d apply_to=%d sync_to=%d", vpc.id,
             vpc.generation, len(change.upserts), len(change.removes), len(told), len(moved))
    return jobs


def commit_router(session: Session, change: Change, org_id: int, user_id: int | None = None) -> list[Job]:
    """A change of the VPC's router (issue 12: its subnets, gateway or floating IPs), begun with
    ``begin``: the generation +1 and a ``sync`` of every hypervisor that held or holds the VPC
    (a router's state is small; it travels whole, read when each sync is sent)."""
    session.flush()
    vpc = change.vpc
    after = held(session, vpc.id)
    routerstate.ensure_snat(session, vpc.id, routing(session, vpc.id, after))
    hypervisors = sorted(change.before.keys() | after.keys())
    if not hypervisors:
        return []
    vpc.generation += 1
    log.info("event=vpc_router_changed vpc=%d generation=%d sync_to=%d", vpc.id, vpc.generation, len(hypervisors))
    return sync_jobs(session, vpc.id, org_id, hypervisors, user_id)


def delta_of(job: Job) -> npb.NetApplyRequest:
    """The delta an ``apply`` job carries."""
    return ParseDict(job.args["request"], npb.NetApplyRequest())


def sync_jobs(session: Session, vpc_id: int, org_id: int, hypervisors: Iterable[int], user_id: int | None = None,
              batch: str | None = None) -> list[Job]:
    """A ``sync`` job of the VPC for those of ``hypervisors`` that have none pending (not added
    to the session): a unicast for one, one multicast job for several (``args["hypervisors"]``),
    since jobs of one VPC run one at a time and a job each made joins cost a round trip each."""
    wanted = sorted(set(hypervisors))
    if not wanted:
        return []
    pending = set(session.scalars(select(Job.hypervisor_id).where(
        Job.kind == "net", Job.action == "sync", Job.subject_type == VPC, Job.subject_id == vpc_id,
        Job.state == JobState.pending, Job.hypervisor_id.in_(wanted))))
    batch = batch or new_job_id()
    left = [hv for hv in wanted if hv not in pending]
    if len(left) > 1:
        return [_job(org_id, user_id, batch, "sync", vpc_id, None, {"hypervisors": left})]
    return [_job(org_id, user_id, batch, "sync", vpc_id, hv, {}) for hv in left]


def _job(org_id: int, user_id: int | None, batch: str, action: str, vpc_id: int, hypervisor: int | None,
         args: dict[str, Any]) -> Job:
    return Job(id=new_job_id(), org_id=org_id, user_id=user_id, batch=batch, kind="net", action=action,
               subject_type=VPC, subject_id=vpc_id, hypervisor_id=hypervisor, args=args, state=JobState.pending,
               attempts=0)


# -- what changes ports on hypervisors ----------------------------------------------------------


def bind(session: Session, placed: dict[int, int]) -> list[Job]:
    """Bind the ports of newly placed instances (instance id -> hypervisor) to their hypervisor,
    one change per VPC: what the job engine calls when it places VMs."""
    def bound(change: Change, port: Port) -> None:
        port.hypervisor_id = placed[port.instance_id]  # type: ignore[index]
        change.upserts.append(port)

    return _per_vpc(session, placed, bound)


def release(session: Session, instance_ids: Iterable[int]) -> list[Job]:
    """Delete the ports of deleted instances (their addresses free again), one change per VPC."""
    def deleted(change: Change, port: Port) -> None:
        if port.hypervisor_id is not None:
            change.removes.append(port.id)
        session.delete(port)

    jobs = _per_vpc(session, instance_ids, deleted)
    session.flush()
    return jobs


def bind_port(session: Session, port: Port, hypervisor: int, user_id: int | None = None) -> list[Job]:
    """Bind one port (a NIC attached to a placed instance) to ``hypervisor``: one change of its VPC."""
    change = begin(session, port.vpc_id)
    port.hypervisor_id = hypervisor
    change.upserts.append(port)
    return commit(session, change, port.org_id, user_id)


def unbind_port(session: Session, port: Port, delete: bool, user_id: int | None = None) -> list[Job]:
    """Take one port off its instance (a NIC detached, or an attach that failed): deleted with
    ``delete`` (its addresses free again), else kept bound to nothing. One change of its VPC."""
    change = begin(session, port.vpc_id)
    if port.hypervisor_id is not None:
        change.removes.append(port.id)
    if delete:
        session.delete(port)
    else:
        port.instance_id = port.hypervisor_id = port.device_index = None
    return commit(session, change, port.org_id, user_id)


def _per_vpc(session: Session, instance_ids: Iterable[int], each: Callable[[Change, Port], None]) -> list[Job]:
    """``each(change, port)`` for every port of the instances, one change per VPC, in VPC id order
    (so two transactions lock VPCs in the same order); the jobs of every change."""
    wanted = list(instance_ids)
    if not wanted:
        return []
    groups: dict[int, list[Port]] = defaultdict(list)
    for port in session.scalars(select(Port).where(Port.instance_id.in_(wanted)).order_by(Port.vpc_id, Port.id)):
        groups[port.vpc_id].append(port)
    jobs: list[Job] = []
    for vpc_id, ports in sorted(groups.items()):
        change = begin(session, vpc_id)
        for port in ports:
            each(change, port)
        jobs += commit(session, change, ports[0].org_id)
    return jobs
