"""External networks, routers and floating IPs, apart from HTTP (issue 12).

External networks are the operator's and every organisation's to use: any caller reads them,
the policy lets only operators create and delete them. Routers and floating IPs belong to a
project (``crud``: another organisation's or another project's id is NotFound); a router is its
VPC's project's, a floating IP associates only to a port of its own project. Every change that a hypervisor must see (a
subnet connected or disconnected, a gateway set or cleared, a floating IP associated,
disassociated or released while associated) is one change of the VPC: its row locked, the
generation +1, a ``sync`` of each of its hypervisors (netstate ``commit_router``), in the
request's transaction; the jobs are submitted once it commits (``follow_up``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy import ColumnElement, delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cloudland.errors import Conflict, InvalidRequest, NotFound
from cloudland_api.jobs.kinds import follow_up
from cloudland_api.models import (
    ExternalIp,
    ExternalNetwork,
    Organisation,
    Port,
    PortIp,
    Role,
    Router,
    RouterSubnet,
    Subnet,
    Vpc,
)
from cloudland_api.models.routers import FLOATING, SNAT
from cloudland_api.schemas.routers import ExternalNetworkCreate, FloatingIpAssociate, RouterCreate
from cloudland_api.services import crud, ipam, netstate, networks, quotas, routerstate
from cloudland_api.services.identity import Caller
from cloudland_api.settings import ApiSettings

log = logging.getLogger(__name__)


# -- external networks --------------------------------------------------------------------------


def create_external(session: Session, caller: Caller, spec: ExternalNetworkCreate) -> ExternalNetwork:
    pools = [(p.start, p.end) for p in spec.allocation_pools] if spec.allocation_pools is not None else None
    layout = ipam.layout(spec.cidr, spec.gateway, "gateway" not in spec.model_fields_set, pools)
    if session.scalar(select(ExternalNetwork.id).where(ExternalNetwork.name == spec.name)) is not None:
        raise Conflict(f"external network name {spec.name!r} is already used")
    row = ExternalNetwork(org_id=caller.org_id, name=spec.name, cidr=str(layout.net),
                          gateway=str(layout.gateway) if layout.gateway else None, bridge=spec.bridge,
                          allocation_pools=layout.stored_pools())
    session.add(row)
    try:
        session.commit()
    except IntegrityError as exc:  # a create of the same name raced past the check above
        session.rollback()
        raise Conflict(f"external network name {spec.name!r} is already used") from exc
    log.info("event=external_network_created external_network=%d cidr=%s user_id=%d", row.id, row.cidr, caller.user_id)
    return row


def list_external(session: Session, limit: int, after: str | None) -> tuple[list[ExternalNetwork], str | None]:
    return crud.keyset(session, select(ExternalNetwork), [ExternalNetwork.id], limit, after)


def get_external(session: Session, ref: int | str) -> ExternalNetwork:
    """An external network by id or name (every organisation's); NotFound saying what ``ref`` is
    when it names one of the caller's subnets or VPCs instead."""
    column = ExternalNetwork.id if isinstance(ref, int) else ExternalNetwork.name
    found = session.scalar(select(ExternalNetwork).where(column == ref))
    if found is None:
        raise NotFound(f"external network {ref!r} not found")
    return found


def delete_external(session: Session, caller: Caller, ref: int) -> None:
    row = get_external(session, ref)
    users = session.scalar(select(func.count()).select_from(Router).where(Router.external_network_id == row.id))
    addresses = session.scalar(select(func.count()).select_from(ExternalIp).where(ExternalIp.external_network_id == row.id))
    if users or addresses:
        raise Conflict(f"external network {row.id} ({row.name}) is used by {users} router(s) and "
                       f"{addresses} address(es): clear their gateways and release its floating IPs first")
    session.delete(row)
    session.commit()
    log.info("event=external_network_deleted external_network=%d user_id=%d", row.id, caller.user_id)


EXTERNAL = "external"  # the external network made from settings (``make run``'s)


def make_default_external(session: Session, settings: ApiSettings) -> tuple[ExternalNetwork, Router | None] | None:
    """The external network ``external`` on ``settings.external_network`` and its bridge, and a
    router ``default`` of the operator organisation's default network with its gateway there,
    made when the external network is not there yet (api/__main__.py, every start); None when
    it was there already (kept as it is) or the settings ask for none. The router is made only
    if the VPC ``default`` has none: one an operator made is theirs."""
    if not settings.external_network:
        return None
    if session.scalar(select(ExternalNetwork.id).where(ExternalNetwork.name == EXTERNAL)) is not None:
        return None
    org_id = session.scalar(select(Organisation.id).where(Organisation.operator.is_(True)).order_by(Organisation.id))
    if org_id is None:
        return None
    caller = Caller(user_id=0, username="", org_id=org_id, role=Role.admin, operator=True)
    external = create_external(session, caller, ExternalNetworkCreate(name=EXTERNAL, cidr=settings.external_network,
                                                                      bridge=settings.external_bridge))
    vpc = session.scalar(crud.scoped(Vpc, caller).where(Vpc.name == networks.DEFAULT))
    subnet = session.scalar(crud.scoped(Subnet, caller).where(Subnet.name == networks.DEFAULT,
                                                              Subnet.vpc_id == (vpc.id if vpc else None)))
    if vpc is None or subnet is None or subnet.gateway is None or routerstate.router_of(session, vpc.id) is not None:
        return external, None
    router = create_router(session, caller, RouterCreate(name=networks.DEFAULT, vpc=vpc.id))
    add_subnet(session, caller, router.id, subnet.id)
    return external, set_gateway(session, caller, router.id, external.id)


# -- routers ------------------------------------------------------------------------------------


def create_router(session: Session, caller: Caller, spec: RouterCreate) -> Router:
    vpc = networks.get_vpc(session, caller, spec.vpc, lock=True)
    if routerstate.router_of(session, vpc.id) is not None:
        raise Conflict(f"vpc {vpc.id} ({vpc.name}) already has a router: one per VPC")
    # The VPC is the request's project's (crud), and so is its router.
    router = crud.insert_named(session, Router(org_id=caller.org_id, project_id=vpc.project_id, name=spec.name,
                                               vpc_id=vpc.id), "router")
    log.info("event=router_created org_id=%d router=%d vpc=%d user_id=%d", caller.org_id, router.id, vpc.id,
             caller.user_id)
    return router


def list_routers(session: Session, caller: Caller, limit: int, after: str | None) -> tuple[list[Router], str | None]:
    return crud.page(session, Router, caller, limit, after)


def get_router(session: Session, caller: Caller, ref: int | str) -> Router:
    return crud.get(session, Router, caller, ref, "router")


def subnets_of(session: Session, routers: Sequence[Router]) -> dict[int, list[int]]:
    found: dict[int, list[int]] = {r.id: [] for r in routers}
    if found:
        for router_id, subnet_id in session.execute(select(RouterSubnet.router_id, RouterSubnet.subnet_id)
                                                    .where(RouterSubnet.router_id.in_(found))
                                                    .order_by(RouterSubnet.subnet_id)):
            found[router_id].append(subnet_id)
    return found


def snat_of(session: Session, routers: Sequence[Router]) -> dict[int, list[tuple[int, str]]]:
    found: dict[int, list[tuple[int, str]]] = {r.id: [] for r in routers}
    if found:
        for router_id, hv, address in session.execute(
                select(ExternalIp.router_id, ExternalIp.hypervisor_id, ExternalIp.address)
                .where(ExternalIp.router_id.in_(found)).order_by(ExternalIp.hypervisor_id)):
            found[router_id].append((hv, address))
    return found


def _changing(session: Session, caller: Caller, ref: int | str) -> tuple[Router, netstate.Change]:
    """The router, and a change of its VPC begun (the VPC's row locked)."""
    router = get_router(session, caller, ref)
    return router, netstate.begin(session, router.vpc_id)


def _commit(session: Session, caller: Caller, change: netstate.Change) -> None:
    follow_up(session, netstate.commit_router(session, change, caller.org_id, caller.user_id))
    session.commit()


def add_subnet(session: Session, caller: Caller, ref: int | str, subnet_ref: int | str) -> Router:
    router, change = _changing(session, caller, ref)
    subnet = networks.get_subnet(session, caller, subnet_ref)
    if subnet.vpc_id != router.vpc_id:
        raise Conflict(f"subnet {subnet.id} ({subnet.name}) is in vpc {subnet.vpc_id}, router {router.id} "
                       f"({router.name}) routes vpc {router.vpc_id}")
    if subnet.gateway is None:
        raise InvalidRequest(f"subnet {subnet.id} ({subnet.name}) has no gateway address for the router to answer")
    if session.scalar(select(RouterSubnet.id).where(RouterSubnet.subnet_id == subnet.id)) is not None:
        raise Conflict(f"subnet {subnet.id} ({subnet.name}) is already connected to router {router.id}")
    session.add(RouterSubnet(router_id=router.id, subnet_id=subnet.id))
    _commit(session, caller, change)
    log.info("event=router_subnet_added router=%d subnet=%d user_id=%d", router.id, subnet.id, caller.user_id)
    return router


def remove_subnet(session: Session, caller: Caller, ref: int | str, subnet_ref: int | str) -> Router:
    router, change = _changing(session, caller, ref)
    subnet = networks.get_subnet(session, caller, subnet_ref)
    link = session.scalar(select(RouterSubnet).where(RouterSubnet.router_id == router.id,
                                                     RouterSubnet.subnet_id == subnet.id))
    if link is None:
        raise NotFound(f"subnet {subnet.id} ({subnet.name}) is not connected to router {router.id} ({router.name})")
    floating = _floating_on(session, Port.subnet_id == subnet.id)
    if floating:
        raise Conflict(f"floating IP {floating} is associated to a port of subnet {subnet.id}: disassociate it first")
    session.delete(link)
    _commit(session, caller, change)
    return router


def set_gateway(session: Session, caller: Caller, ref: int | str, external_ref: int | str | None) -> Router:
    router, change = _changing(session, caller, ref)
    external = None
    if external_ref is not None:
        try:
            external = get_external(session, external_ref)
        except NotFound:
            if isinstance(external_ref, str) and _tenant_network(session, caller, external_ref):
                raise InvalidRequest(f"{external_ref!r} is a tenant network of this organisation, not an external "
                                     "network: a router's gateway must be on an external network") from None
            raise
    if router.external_network_id == (external.id if external else None):
        return router
    floating = _floating_on(session, Port.vpc_id == router.vpc_id)
    if floating:
        raise Conflict(f"floating IP {floating} is associated in vpc {router.vpc_id}: disassociate it first")
    router.external_network_id = external.id if external else None
    session.execute(delete(ExternalIp).where(ExternalIp.router_id == router.id, ExternalIp.kind == SNAT))
    _commit(session, caller, change)
    log.info("event=router_gateway_set router=%d external_network=%s user_id=%d", router.id,
             router.external_network_id, caller.user_id)
    return router


def _tenant_network(session: Session, caller: Caller, name: str) -> bool:
    return any(session.scalar(crud.scoped(model, caller).where(model.name == name)) is not None
               for model in (Subnet, Vpc))


def _floating_on(session: Session, where: ColumnElement[bool]) -> str | None:
    """The address of a floating IP associated to a port matching ``where``, if any."""
    return session.scalar(select(ExternalIp.address).join(Port, Port.id == ExternalIp.port_id).where(where).limit(1))


def delete_router(session: Session, caller: Caller, ref: int) -> None:
    router, change = _changing(session, caller, ref)
    floating = _floating_on(session, Port.vpc_id == router.vpc_id)
    if floating:
        raise Conflict(f"floating IP {floating} is associated in vpc {router.vpc_id}: disassociate it first")
    session.execute(delete(RouterSubnet).where(RouterSubnet.router_id == router.id))
    session.execute(delete(ExternalIp).where(ExternalIp.router_id == router.id))
    session.delete(router)
    _commit(session, caller, change)
    log.info("event=router_deleted org_id=%d router=%d user_id=%d", caller.org_id, router.id, caller.user_id)


# -- floating IPs -------------------------------------------------------------------------------


def allocate(session: Session, caller: Caller, external_ref: int | str) -> ExternalIp:
    external = get_external(session, external_ref)
    quotas.charge(session, caller, floating_ips=1)  # counted under the organisation's lock (services/quotas.py)
    row = routerstate.take_address(session, external, FLOATING, caller.org_id, quotas.project_of(session, caller))
    if row is None:
        raise routerstate.full(external)
    session.commit()
    log.info("event=floating_ip_allocated org_id=%d floating_ip=%d address=%s user_id=%d", caller.org_id, row.id,
             row.address, caller.user_id)
    return row


def list_floating(session: Session, caller: Caller, limit: int, after: str | None) -> tuple[list[ExternalIp], str | None]:
    return crud.page(session, ExternalIp, caller, limit, after, ExternalIp.kind == FLOATING)


def get_floating(session: Session, caller: Caller, fip_id: int) -> ExternalIp:
    query = crud.scoped(ExternalIp, caller).where(ExternalIp.id == fip_id, ExternalIp.kind == FLOATING)
    return crud.one(session, query, f"floating IP {fip_id} not found")  # type: ignore[no-any-return]


def associate(session: Session, caller: Caller, fip_id: int, spec: FloatingIpAssociate) -> ExternalIp:
    fip = get_floating(session, caller, fip_id)
    port = crud.get(session, Port, caller, spec.port, "port")
    change = netstate.begin(session, port.vpc_id)
    router = routerstate.router_of(session, port.vpc_id)
    if router is None or router.external_network_id != fip.external_network_id or \
            port.subnet_id not in routerstate.connected(session, port.vpc_id):
        raise Conflict(f"port {port.id} is not behind a router with a gateway on external network "
                       f"{fip.external_network_id}: connect its subnet {port.subnet_id} to a router of vpc "
                       f"{port.vpc_id} and set the router's gateway there first")
    ips = list(session.scalars(select(PortIp.address).where(PortIp.port_id == port.id).order_by(PortIp.id)))
    fixed = spec.fixed_ip or (ips[0] if ips else None)
    if fixed is None or fixed not in ips:
        raise InvalidRequest(f"port {port.id} has no fixed address {fixed or ''}".rstrip() + f" (it has {ips or 'none'})")
    other = session.scalar(select(ExternalIp.address).where(ExternalIp.port_id == port.id, ExternalIp.fixed_ip == fixed,
                                                             ExternalIp.id != fip.id))
    if other is not None:
        raise Conflict(f"{fixed} of port {port.id} already has floating IP {other}")
    if (fip.port_id, fip.fixed_ip) == (port.id, fixed):
        return fip
    moved_from = fip.port_id
    fip.port_id, fip.fixed_ip = port.id, fixed
    if moved_from is not None:  # from another port: that VPC changes too (in id order: no deadlock)
        old = session.get(Port, moved_from)
        if old is not None and old.vpc_id != port.vpc_id:
            follow_up(session, netstate.commit_router(session, netstate.begin(session, old.vpc_id), caller.org_id,
                                                      caller.user_id))
    _commit(session, caller, change)
    log.info("event=floating_ip_associated floating_ip=%d port=%d fixed_ip=%s user_id=%d", fip.id, port.id, fixed,
             caller.user_id)
    return fip


def disassociate(session: Session, caller: Caller, fip_id: int) -> ExternalIp:
    fip = get_floating(session, caller, fip_id)
    if fip.port_id is None:
        fip.fixed_ip = None
        session.commit()
        return fip
    port = session.get(Port, fip.port_id)
    assert port is not None  # SET NULL when it goes
    change = netstate.begin(session, port.vpc_id)
    fip.port_id = fip.fixed_ip = None
    _commit(session, caller, change)
    log.info("event=floating_ip_disassociated floating_ip=%d user_id=%d", fip.id, caller.user_id)
    return fip


def release(session: Session, caller: Caller, fip_id: int) -> None:
    fip = get_floating(session, caller, fip_id)
    if fip.port_id is not None:
        disassociate(session, caller, fip_id)
    session.delete(fip)
    session.commit()
    log.info("event=floating_ip_released org_id=%d floating_ip=%d user_id=%d", caller.org_id, fip.id, caller.user_id)
