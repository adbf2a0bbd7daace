"""Security groups, their rules and ports' membership, apart from HTTP (issue 12). Scoped to the
request's project through ``crud``: another project's (or organisation's) group is NotFound,
also as a remote group or a port's; a port takes only groups of its own project.

Every change that alters what hypervisors must enforce (a rule added or deleted, a port's
groups or allowed addresses) is a change of each VPC of the project that has bound ports
(``netstate.groups_changed``): its generation +1 and a delta carrying the VPC's groups, in the
same transaction. A group is deleted only when nothing uses it (Conflict naming the user): no
port is in it and no other group's rule names it; the default group is never deleted.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from cloudland.errors import Conflict, InvalidRequest
from cloudland_api.jobs.kinds import follow_up
from cloudland_api.models import (
    DEFAULT_GROUP, Port, PortAllowedAddress, PortSecurityGroup, SecurityGroup, SecurityRule
)
from cloudland_api.schemas import PortUpdate, RuleCreate, SecurityGroupCreate
from cloudland_api.services import crud, netstate, quotas
from cloudland_api.services.identity import Caller

log = logging.getLogger(__name__)
PROTOCOLS = ("tcp", "udp", "icmp", "any")


def create_group(session: Session, caller: Caller, spec: SecurityGroupCreate) -> SecurityGroup:
    if spec.name == DEFAULT_GROUP:
        raise Conflict(f"security group name {DEFAULT_GROUP!r} is the project's default group")
    quotas.charge(session, caller, security_groups=1)  # counted under the organisation's lock (services/quotas.py)
    group = crud.insert_named(session, SecurityGroup(**crud.owner(caller), name=spec.name,
                                                     description=spec.description), "security group")
    log.info("event=secgroup_created org_id=%d project_id=%d group=%d user_id=%d", caller.org_id, group.project_id,
             group.id, caller.user_id)
    return group


def list_groups(session: Session, caller: Caller, limit: int, after: str | None) -> tuple[list[SecurityGroup], str | None]:
    return crud.page(session, SecurityGroup, caller, limit, after)


def get_group(session: Session, caller: Caller, ref: int | str, *, lock: bool = False) -> SecurityGroup:
    """A group of the request's project by id or name (``crud.id_or_name``: a path's digits are an
    id); another project's is NotFound."""
    return crud.get(session, SecurityGroup, caller, crud.id_or_name(ref), "security group", lock=lock)


def rules_of(session: Session, group_ids: Sequence[int]) -> dict[int, list[SecurityRule]]:
    found: dict[int, list[SecurityRule]] = {g: [] for g in group_ids}
    if group_ids:
        for rule in session.scalars(select(SecurityRule).where(SecurityRule.group_id.in_(list(group_ids)))
                                    .order_by(SecurityRule.id)):
            found[rule.group_id].append(rule)
    return found


def delete_group(session: Session, caller: Caller, ref: int | str) -> None:
    """Delete a group nothing uses (admin); Conflict naming what uses it, or for the default group."""
    group = get_group(session, caller, ref, lock=True)
    if group.is_default:
        raise Conflict(f"security group {group.id} ({group.name}) is the project's default group: it stays")
    ports = list(session.scalars(select(PortSecurityGroup.port_id).where(PortSecurityGroup.group_id == group.id)
                                 .order_by(PortSecurityGroup.port_id).limit(5)))
    if ports:
        raise Conflict(f"security group {group.id} ({group.name}) is used by port{'s' if len(ports) > 1 else ''} "
                       f"{', '.join(map(str, ports))}: take it off them first (port set --secgroup)")
    naming = session.scalar(select(SecurityRule).where(SecurityRule.remote_group_id == group.id,
                                                       SecurityRule.group_id != group.id))
    if naming is not None:
        raise Conflict(f"security group {group.id} ({group.name}) is the remote group of rule {naming.id} of "
                       f"security group {naming.group_id}: delete that rule first")
    crud.delete(session, group, caller, "security group")


def _check_rule(session: Session, caller: Caller, spec: RuleCreate) -> tuple[int | None, str | None]:
    """(remote group id, remote cidr) of a valid rule, or InvalidRequest/NotFound naming the bad value."""
    if spec.protocol not in PROTOCOLS:
        raise InvalidRequest(f"unknown protocol {spec.protocol!r}: one of {', '.join(PROTOCOLS)}")
    if spec.port_min is not None or spec.port_max is not None:
        if spec.protocol not in ("tcp", "udp"):
            raise InvalidRequest(f"a port range needs protocol tcp or udp, not {spec.protocol}")
        low = spec.port_min if spec.port_min is not None else spec.port_max
        high = spec.port_max if spec.port_max is not None else spec.port_min
        assert low is not None and high is not None
        if not 1 <= low <= high <= 65535:
            raise InvalidRequest(f"malformed port range {low}-{high}: ports are 1-65535, the lowest first")
    if spec.remote_cidr is not None and spec.remote_group is not None:
        raise InvalidRequest("a rule has a remote_cidr or a remote_group, not both")
    cidr = None
    if spec.remote_cidr is not None:
        try:
            cidr = str(ipaddress.IPv4Network(spec.remote_cidr))
        except ValueError as exc:
            raise InvalidRequest(f"remote_cidr {spec.remote_cidr!r} is not an IPv4 network: {exc}") from exc
    remote = get_group(session, caller, spec.remote_group).id if spec.remote_group is not None else None
    return remote, cidr


def add_rule(session: Session, caller: Caller, ref: int | str, spec: RuleCreate) -> SecurityRule:
    """A rule added to one of the project's groups (admin or member), sent to the hypervisors
    of its VPCs (follow-up jobs, submitted by the route once committed)."""
    group = get_group(session, caller, ref, lock=True)
    remote, cidr = _check_rule(session, caller, spec)
    low = spec.port_min if spec.port_min is not None else spec.port_max
    high = spec.port_max if spec.port_max is not None else spec.port_min
    rule = SecurityRule(org_id=caller.org_id, project_id=group.project_id, group_id=group.id, direction=spec.direction, protocol=spec.protocol,
                        port_min=low, port_max=high, remote_cidr=cidr, remote_group_id=remote)
    session.add(rule)
    session.flush()
    follow_up(session, netstate.groups_changed(session, caller.org_id, group.project_id, caller.user_id))
    session.commit()
    log.info("event=secgroup_rule_added org_id=%d group=%d rule=%d user_id=%d", caller.org_id, group.id, rule.id,
             caller.user_id)
    return rule


def delete_rule(session: Session, caller: Caller, ref: int | str, rule_id: int) -> None:
    """Delete a rule of one of the project's groups (admin or member): new flows it allowed
    stop; established ones go on until they end (docs/architecture.md, "Security groups")."""
    group = get_group(session, caller, ref, lock=True)
    rule = crud.one(session, select(SecurityRule).where(SecurityRule.id == rule_id, SecurityRule.group_id == group.id,
                                                        SecurityRule.project_id == group.project_id),
                    f"rule {rule_id} of security group {group.id} not found")
    session.delete(rule)
    session.flush()
    follow_up(session, netstate.groups_changed(session, caller.org_id, group.project_id, caller.user_id))
    session.commit()
    log.info("event=secgroup_rule_deleted org_id=%d group=%d rule=%d user_id=%d", caller.org_id, group.id, rule_id,
             caller.user_id)


def set_port(session: Session, caller: Caller, port_id: int, spec: PortUpdate) -> Port:
    """A port's groups (empty: the default group) and allowed address pairs, replaced (admin or
    member); a bound port's VPCs change with them."""
    port = crud.get(session, Port, caller, port_id, "port", lock=True)
    if spec.security_groups is not None:
        groups = sorted({get_group(session, caller, ref).id for ref in spec.security_groups})
        session.execute(delete(PortSecurityGroup).where(PortSecurityGroup.port_id == port.id))
        session.add_all(PortSecurityGroup(port_id=port.id, group_id=g) for g in groups)
    if spec.allowed_addresses is not None:
        pairs = []
        for value in spec.allowed_addresses:
            try:
                pairs.append(str(ipaddress.IPv4Network(value)))
            except ValueError as exc:
                raise InvalidRequest(f"allowed address {value!r} is not an IPv4 address or network: {exc}") from exc
        session.execute(delete(PortAllowedAddress).where(PortAllowedAddress.port_id == port.id))
        session.add_all(PortAllowedAddress(port_id=port.id, cidr=c) for c in sorted(set(pairs)))
    session.flush()
    if port.hypervisor_id is not None:
        follow_up(session, netstate.groups_changed(session, caller.org_id, port.project_id, caller.user_id, [port]))
    session.commit()
    log.info("event=port_security_set org_id=%d port=%d user_id=%d", caller.org_id, port.id, caller.user_id)
    return port
