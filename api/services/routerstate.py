"""What hypervisors must hold of a VPC's router (issue 12), and the external addresses it uses.

- ``connected``: the subnets the VPC's router connects. A hypervisor with a port on one of them
  holds all of them (netstate ``held``): its share of the distributed router reaches each.
- ``net_router``: the ``NetRouter`` of a VPC as one hypervisor gets it (proto/v1/network.proto):
  its subnets, its external network, that hypervisor's SNAT address (several hypervisors' in
  ``snat_addresses`` for a multicast sync), every floating IP of the VPC's ports (the agent sets
  up those of its own ports).
- ``ensure_snat``: one SNAT address per router and hypervisor of its VPC, taken from the
  external network's pools while the hypervisor holds the router, given back when it leaves.
- ``take_address``: the lowest free address of an external network (its row locked: racing
  allocations are serial; the unique (network, address) constraint is the last word).
"""

from __future__ import annotations

import logging
from collections.abc import Collection

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from cloudland.errors import Conflict
from cloudland_api.db import for_change
from cloudland_api.models import ExternalIp, ExternalNetwork, Port, Router, RouterSubnet
from cloudland_api.models.routers import FLOATING, SNAT
from cloudland_api.services import ipam
from cloudland_proto.v1 import network_pb2 as npb

log = logging.getLogger(__name__)


def router_of(session: Session, vpc_id: int) -> Router | None:
    return session.scalar(select(Router).where(Router.vpc_id == vpc_id))


def connected(session: Session, vpc_id: int) -> frozenset[int]:
    """The subnets the VPC's router connects (none without a router)."""
    return frozenset(session.scalars(select(RouterSubnet.subnet_id).join(Router, Router.id == RouterSubnet.router_id)
                                     .where(Router.vpc_id == vpc_id)))


def net_router(session: Session, vpc_id: int, hypervisor: int | Collection[int]) -> npb.NetRouter | None:
    """The VPC's router as ``hypervisor`` must hold it, or None: no router. For several
    hypervisors (one multicast sync), each one's SNAT address is in ``snat_addresses``."""
    router = router_of(session, vpc_id)
    if router is None:
        return None
    message = npb.NetRouter(id=router.id, subnet_ids=sorted(connected(session, vpc_id)))
    if router.external_network_id is not None:
        external = session.get(ExternalNetwork, router.external_network_id)
        assert external is not None  # RESTRICT: it cannot go while a router uses it
        message.external.CopyFrom(npb.NetExternal(id=external.id, cidr=external.cidr, gateway=external.gateway or "",
                                                  bridge=external.bridge))
        if isinstance(hypervisor, int):
            message.snat_address = session.scalar(select(ExternalIp.address).where(
                ExternalIp.router_id == router.id, ExternalIp.hypervisor_id == hypervisor)) or ""
        else:  # one state multicast to several (netstate.vpc_state): each finds its own address
            snats = session.execute(select(ExternalIp.hypervisor_id, ExternalIp.address).where(
                ExternalIp.router_id == router.id, ExternalIp.hypervisor_id.in_(list(hypervisor)))
                .order_by(ExternalIp.hypervisor_id))
            message.snat_addresses.extend(npb.NetSnatAddress(hypervisor=hv, address=a) for hv, a in snats)
        rows = session.execute(select(ExternalIp.id, ExternalIp.address, ExternalIp.port_id, ExternalIp.fixed_ip)
                               .join(Port, Port.id == ExternalIp.port_id)
                               .where(Port.vpc_id == vpc_id, ExternalIp.kind == FLOATING).order_by(ExternalIp.id))
        message.floating_ips.extend(npb.NetFloatingIp(id=i, address=a, port_id=p, fixed_ip=f or "")
                                    for i, a, p, f in rows)
    return message


def take_address(session: Session, external: ExternalNetwork, kind: str, org_id: int, project_id: int,
                 **fields: object) -> ExternalIp | None:
    """A new row of project ``project_id`` holding the lowest free address of ``external``'s
    pools, or None when they are used up."""
    session.scalar(for_change(select(ExternalNetwork.id).where(ExternalNetwork.id == external.id)))
    layout = ipam.stored_layout(external.cidr, external.gateway, external.allocation_pools, False)
    taken = set(session.scalars(select(ExternalIp.address).where(ExternalIp.external_network_id == external.id)))
    found = ipam.allocate(layout, taken, 1)
    if found is None:
        return None
    row = ExternalIp(org_id=org_id, project_id=project_id, external_network_id=external.id, address=found[0], kind=kind, **fields)
    session.add(row)
    session.flush()
    return row


def full(external: ExternalNetwork) -> Conflict:
    return Conflict(f"external network {external.id} ({external.name}, {external.cidr}) has no free address "
                    "in its allocation pools")


def ensure_snat(session: Session, vpc_id: int, hypervisors: Collection[int]) -> None:
    """A SNAT address of the VPC's router (with a gateway) on each of ``hypervisors``, and on no other.
    A hypervisor left without one when the pools are used up routes its VMs' traffic without SNAT
    (logged); floating IPs still work there."""
    router = router_of(session, vpc_id)
    wanted = set(hypervisors) if router is not None and router.external_network_id is not None else set()
    if router is None:
        return
    held = {hv: row_id for hv, row_id in session.execute(
        select(ExternalIp.hypervisor_id, ExternalIp.id).where(ExternalIp.router_id == router.id))}
    gone = [row_id for hv, row_id in held.items() if hv not in wanted]
    if gone:
        session.execute(delete(ExternalIp).where(ExternalIp.id.in_(gone)))
    missing = sorted(wanted - set(held))
    if not missing:
        return
    external = session.get(ExternalNetwork, router.external_network_id)
    assert external is not None
    for hv in missing:
        if take_address(session, external, SNAT, router.org_id, router.project_id, router_id=router.id, hypervisor_id=hv) is None:
            log.warning("event=snat_pool_full router=%d hypervisor=%d external_network=%d", router.id, hv, external.id)
            break
