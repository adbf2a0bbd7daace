"""VPCs, subnets and ports, apart from HTTP (issue 11). Tenant-scoped through ``crud``: another
organisation's id is NotFound, NotFound before Forbidden, readers only read, admins delete.

IP allocation is atomic: a port's addresses are chosen and written while its subnet's row is
locked (``FOR UPDATE`` on PostgreSQL; on SQLite every write transaction is serial), and the
unique (subnet, address) constraint refuses a duplicate whatever happens. A subnet whose pools
are used up answers Conflict ("subnet full"). VNIs come from the operator's range
(``CLOUDLAND_API_VNI_RANGE``), the lowest free first, unique in the cluster (a constraint too).
Ports made here by hand are bound to no instance and no hypervisor; an instance's ports are
made with it (``instance_ports``) and bound where it is placed (netstate.bind).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from sqlalchemy import RowMapping, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from cloudland.errors import Conflict, InvalidRequest
from cloudland_api.db import for_change
from cloudland_api.models import Instance, Port, PortIp, Role, Router, RouterSubnet, Subnet, Vpc
from cloudland_api.schemas import PortCreate, SubnetCreate, VpcCreate, VpcPublic
from cloudland_api.services import crud, ipam, quotas
from cloudland_api.services.identity import Caller
from cloudland_api.services.netstate import port_ips
from cloudland_api.settings import ApiSettings

log = logging.getLogger(__name__)

DOMAIN = "vpc-{id}.cloudland.internal"
VNI_TRIES = 5  # racing subnet creates on PostgreSQL: each loser takes the next free VNI
DEFAULT = "default"  # the default network's VPC and subnet (settings.default_network)


# -- VPCs ---------------------------------------------------------------------------------------


def port_on(subnet: Subnet, **fields: Any) -> Port:
    """A new port on ``subnet``, owned by the subnet's organisation and project."""
    return Port(org_id=subnet.org_id, project_id=subnet.project_id, subnet_id=subnet.id, vpc_id=subnet.vpc_id, **fields)


def create_vpc(session: Session, caller: Caller, spec: VpcCreate, settings: ApiSettings) -> Vpc:
    """A VPC of the caller's organisation (admin or member), its MTU from the underlay's."""
    quotas.charge(session, caller, networks=1)
    vpc = crud.insert_named(session, Vpc(**crud.owner(caller), name=spec.name, domain=spec.domain or "",
                                         mtu=settings.guest_mtu, generation=0), "vpc", commit=False)
    vpc.domain = vpc.domain or DOMAIN.format(id=vpc.id)
    session.commit()
    log.info("event=vpc_created org_id=%d vpc=%d user_id=%d", caller.org_id, vpc.id, caller.user_id)
    return vpc


def list_vpcs(session: Session, caller: Caller, limit: int, after: str | None) -> tuple[list[RowMapping], str | None]:
    """One page of the caller's VPCs by id as rows of VpcPublic's columns (crud "hot reads as rows")."""
    return crud.page_rows(session, Vpc, VpcPublic, caller, limit, after, "vpcs", list, {})


def get_vpc(session: Session, caller: Caller, ref: int | str, *, lock: bool = False) -> Vpc:
    return crud.get(session, Vpc, caller, ref, "vpc", lock=lock)


def delete_vpc(session: Session, caller: Caller, vpc_id: int) -> None:
    """Delete a VPC and its subnets (admin); Conflict while any of its subnets has a port."""
    vpc = get_vpc(session, caller, vpc_id, lock=True)
    subnets = session.scalars(for_change(select(Subnet).where(Subnet.vpc_id == vpc.id).order_by(Subnet.id))).all()
    ports = session.scalar(select(func.count()).select_from(Port).where(Port.vpc_id == vpc.id))
    if ports:
        raise Conflict(f"vpc {vpc.id} ({vpc.name}) still has {ports} port{'s' if ports > 1 else ''}: "
                       "delete them (or their VMs) first")
    router = session.scalar(select(Router.name).where(Router.vpc_id == vpc.id))
    if router is not None:
        raise Conflict(f"vpc {vpc.id} ({vpc.name}) still has router {router!r}: delete it first")
    for subnet in subnets:
        session.delete(subnet)
    session.flush()
    crud.delete(session, vpc, caller, "vpc")


# -- subnets ------------------------------------------------------------------------------------


def create_subnet(session: Session, caller: Caller, spec: SubnetCreate, settings: ApiSettings) -> Subnet:
    """A subnet of one of the caller's VPCs (admin or member), with the lowest free VNI of the range."""
    vpc = get_vpc(session, caller, spec.vpc, lock=True)
    pools = [(p.start, p.end) for p in spec.allocation_pools] if spec.allocation_pools is not None else None
    layout = ipam.layout(spec.cidr, spec.gateway, "gateway" not in spec.model_fields_set, pools, spec.dhcp)
    for dns in spec.dns_servers:
        ipam.address(dns, "dns server")
    siblings = [(name, cidr) for name, cidr in
                session.execute(select(Subnet.name, Subnet.cidr).where(Subnet.vpc_id == vpc.id))]
    clash = ipam.overlapping(spec.cidr, siblings)
    if clash is not None:
        raise Conflict(f"cidr {spec.cidr} overlaps subnet {clash} of vpc {vpc.name}: subnets of one VPC "
                       "must not overlap (another VPC's may)")
    if session.scalar(select(Subnet.id).where(Subnet.project_id == vpc.project_id, Subnet.name == spec.name)):
        raise Conflict(f"subnet name {spec.name!r} is already used in this project")
    low, high = settings.vnis
    tried: set[int] = set()
    for _ in range(VNI_TRIES):
        vni = _free_vni(session, low, high, tried)
        subnet = Subnet(org_id=vpc.org_id, project_id=vpc.project_id, vpc_id=vpc.id, name=spec.name, cidr=spec.cidr,
                        gateway=str(layout.gateway) if layout.gateway else None,
                        allocation_pools=layout.stored_pools(), dns_servers=list(spec.dns_servers), dhcp=spec.dhcp,
                        vni=vni)
        try:
            with session.begin_nested():  # a VNI taken meanwhile fails only this savepoint
                session.add(subnet)
            break
        except IntegrityError:
            tried.add(vni)
            if session.scalar(select(Subnet.id).where(Subnet.project_id == vpc.project_id, Subnet.name == spec.name)):
                raise Conflict(f"subnet name {spec.name!r} is already used in this project") from None
    else:
        raise Conflict("every VNI tried was taken meanwhile by other subnets; try again")
    session.commit()
    log.info("event=subnet_created org_id=%d subnet=%d vpc=%d vni=%d cidr=%s user_id=%d", caller.org_id,
             subnet.id, vpc.id, subnet.vni, subnet.cidr, caller.user_id)
    return subnet


def _free_vni(session: Session, low: int, high: int, tried: set[int]) -> int:
    """The lowest VNI of [low, high] no subnet holds (nor ``tried``); Conflict naming the range."""
    used = session.scalars(select(Subnet.vni).where(Subnet.vni >= low, Subnet.vni <= high).order_by(Subnet.vni))
    candidate = low
    for vni in sorted({*used, *tried}):
        if vni > candidate:
            break
        if vni == candidate:
            candidate += 1
    if candidate > high:
        raise Conflict(f"no VNI is free in the range {low}-{high} (CLOUDLAND_API_VNI_RANGE): all {high - low + 1} "
                       "are held by subnets; delete subnets or ask the operator to widen the range")
    return candidate


def list_subnets(session: Session, caller: Caller, limit: int, after: str | None,
                 vpc: int | None = None) -> tuple[list[Subnet], str | None]:
    where = [Subnet.vpc_id == vpc] if vpc is not None else []
    return crud.page(session, Subnet, caller, limit, after, *where)


def get_subnet(session: Session, caller: Caller, ref: int | str, *, lock: bool = False) -> Subnet:
    return crud.get(session, Subnet, caller, ref, "subnet", lock=lock)


def delete_subnet(session: Session, caller: Caller, subnet_id: int) -> None:
    """Delete a subnet (admin); Conflict while it has ports."""
    subnet = get_subnet(session, caller, subnet_id, lock=True)
    ports = session.scalar(select(func.count()).select_from(Port).where(Port.subnet_id == subnet.id))
    if ports:
        raise Conflict(f"subnet {subnet.id} ({subnet.name}) still has {ports} port{'s' if ports > 1 else ''}: "
                       "delete them (or their VMs) first")
    router = session.scalar(select(RouterSubnet.router_id).where(RouterSubnet.subnet_id == subnet.id))
    if router is not None:
        raise Conflict(f"subnet {subnet.id} ({subnet.name}) is connected to router {router}: remove it there first")
    crud.delete(session, subnet, caller, "subnet")


# -- ports --------------------------------------------------------------------------------------


def _taken(session: Session, subnet_id: int) -> set[str]:
    return set(session.scalars(select(PortIp.address).where(PortIp.subnet_id == subnet_id)))


def _full(subnet: Subnet, wanted: int, free: int) -> Conflict:
    return Conflict(f"subnet {subnet.id} ({subnet.name}, {subnet.cidr}) is full: {wanted} address"
                    f"{'es' if wanted > 1 else ''} wanted, {free} free in its allocation pools")


def _addresses(session: Session, subnet: Subnet, count: int, fixed: Sequence[str] | None) -> list[list[str]]:
    """``count`` ports' addresses on ``subnet`` (locked by the caller): the lowest free ones, or
    ``fixed`` for one port; Conflict when the subnet is full or a fixed address is taken."""
    layout = ipam.stored_layout(subnet.cidr, subnet.gateway, subnet.allocation_pools, subnet.dhcp)
    taken = _taken(session, subnet.id)
    if fixed is not None:
        wanted = ipam.requested(layout, fixed)
        used = [a for a in wanted if a in taken]
        if used:
            raise Conflict(f"address {used[0]} of subnet {subnet.id} ({subnet.name}) is already taken")
        return [wanted]
    found = ipam.allocate(layout, taken, count)
    if found is None:
        raise _full(subnet, count, ipam.free(layout, taken))
    return [[addr] for addr in found]


def _add_ports(session: Session, ports: list[Port], addresses: list[list[str]]) -> None:
    """Write ``ports`` (those without a MAC get a new one) and their addresses: two INSERTs."""
    macs = iter(_macs(session, sum(1 for p in ports if not p.mac)))
    for port in ports:
        port.mac = port.mac or next(macs)
    session.add_all(ports)
    session.flush()
    session.add_all(PortIp(port_id=port.id, subnet_id=port.subnet_id, address=addr)
                    for port, addrs in zip(ports, addresses) for addr in addrs)
    session.flush()


def _macs(session: Session, count: int) -> list[str]:
    """``count`` MACs no port has (4 random bytes each: a clash is rare, the unique constraint the guard)."""
    found: set[str] = set()
    while len(found) < count:
        fresh = {ipam.new_mac() for _ in range(count - len(found))} - found
        found |= fresh - set(session.scalars(select(Port.mac).where(Port.mac.in_(fresh))))
    return sorted(found)


def create_port(session: Session, caller: Caller, spec: PortCreate) -> Port:
    """A port on one of the caller's subnets (admin or member), bound to nothing, with its addresses."""
    subnet = get_subnet(session, caller, spec.subnet, lock=True)  # allocation on this subnet waits here
    mac = spec.mac.lower() if spec.mac else None
    if mac is not None and session.scalar(select(Port.id).where(Port.mac == mac)) is not None:
        raise Conflict(f"mac {mac} is already used by another port")
    quotas.charge(session, caller, ports=1)
    [addresses] = _addresses(session, subnet, 1, spec.fixed_ips)
    port = port_on(subnet, name=spec.name, mac=mac or "")
    _add_ports(session, [port], [addresses])
    try:
        session.commit()
    except IntegrityError as exc:  # the constraints' last word: never a duplicate address or MAC
        session.rollback()
        raise Conflict(f"address {addresses[0]} or mac of the new port was taken meanwhile; try again") from exc
    log.info("event=port_created org_id=%d port=%d subnet=%d ips=%s user_id=%d", caller.org_id, port.id, subnet.id,
             ",".join(addresses), caller.user_id)
    return port


def list_ports(session: Session, caller: Caller, limit: int, after: str | None, *, subnet: int | None = None,
               vpc: int | None = None, instance: int | None = None) -> tuple[list[Port], str | None]:
    where = [column == value for column, value in ((Port.subnet_id, subnet), (Port.vpc_id, vpc),
                                                   (Port.instance_id, instance)) if value is not None]
    return crud.page(session, Port, caller, limit, after, *where)


def get_port(session: Session, caller: Caller, port_id: int) -> Port:
    return crud.get(session, Port, caller, port_id, "port")


def delete_port(session: Session, caller: Caller, port_id: int) -> None:
    """Delete a port made by hand (admin); an instance's port goes with its instance (Conflict)."""
    port = crud.get(session, Port, caller, port_id, "port", lock=True)
    if port.instance_id is not None:
        raise Conflict(f"port {port.id} is instance {port.instance_id}'s NIC: it is deleted with the instance")
    crud.delete(session, port, caller, "port")


def fixed_ips(session: Session, ports: Sequence[Port]) -> dict[int, list[str]]:
    """Each port's addresses, for the responses (one query)."""
    return port_ips(session, (p.id for p in ports))


# -- the default network -------------------------------------------------------------------------


def make_default_network(session: Session, org_id: int, settings: ApiSettings) -> Subnet:
    """VPC and subnet ``default`` (``settings.default_network``) of organisation ``org_id``, made
    at the all-in-one cloud's first start (api/__main__.py), committed."""
    caller = Caller(user_id=0, username="", org_id=org_id, role=Role.admin)
    vpc = create_vpc(session, caller, VpcCreate(name=DEFAULT), settings)
    return create_subnet(session, caller, SubnetCreate(name=DEFAULT, vpc=vpc.id, cidr=settings.default_network),
                         settings)


def default_subnets(session: Session, caller: Caller) -> list[Subnet]:
    """Where a VM created without ``networks`` gets its NIC: the organisation's subnet ``default``
    (locked for the address, as ``resolve_networks``), or nowhere when it has none."""
    found = session.scalar(crud.scoped(Subnet, caller).where(Subnet.name == DEFAULT).with_only_columns(Subnet.id))
    return resolve_networks(session, caller, [found]) if found is not None else []


# -- an instance's NICs -------------------------------------------------------------------------


def attach_port(session: Session, caller: Caller, instance: Instance, network: int | str | None,
                port_id: int | None) -> tuple[Port, bool]:
    """The port an attach gives ``instance`` as its next NIC: a new one on subnet ``network`` (with
    the lowest free address), or ``port_id``, one of the caller's ports bound to no instance
    (NotFound for another organisation's, Conflict for a bound one); Conflict when the instance
    has a NIC on that subnet already. Flushed, not committed; True when it was made now."""
    taken = {subnet for subnet, in session.execute(select(Port.subnet_id).where(Port.instance_id == instance.id))}
    indexes = session.scalars(select(Port.device_index).where(Port.instance_id == instance.id)).all()
    device_index = max((i for i in indexes if i is not None), default=-1) + 1
    if port_id is not None:
        port = crud.get(session, Port, caller, port_id, "port", lock=True)
        if port.instance_id is not None:
            raise Conflict(f"port {port.id} is already a NIC of instance {port.instance_id}")
        subnet = session.get(Subnet, port.subnet_id)
    else:
        assert network is not None
        [subnet] = resolve_networks(session, caller, [network])  # locked for the address below
    assert subnet is not None
    if subnet.id in taken:
        raise Conflict(f"instance {instance.id} ({instance.name}) has a NIC on subnet {subnet.id} "
                       f"({subnet.name}) already; an instance has one NIC per subnet")
    if port_id is None:
        quotas.charge(session, caller, ports=1)
        port = port_on(subnet, mac="")
        _add_ports(session, [port], _addresses(session, subnet, 1, None))
    port.instance_id, port.device_index = instance.id, device_index
    session.flush()
    return port, port_id is None


def resolve_networks(session: Session, caller: Caller, refs: Sequence[int | str]) -> list[Subnet]:
    """The subnets an instance's NICs go on, in order, each locked for its allocation (in id
    order, so two creates on the same subnets cannot deadlock); NotFound for another's."""
    subnets = [get_subnet(session, caller, ref) for ref in refs]
    ids = sorted({s.id for s in subnets})
    if len(ids) < len(subnets):
        raise InvalidRequest("networks: a subnet is named twice; an instance has one NIC per subnet")
    locked = {s.id: s for s in session.scalars(for_change(select(Subnet).where(Subnet.id.in_(ids))
                                                          .order_by(Subnet.id)))}
    return [locked[s.id] for s in subnets]


def instance_ports(session: Session, subnets: Sequence[Subnet], instances: Sequence[Instance]) -> list[Port]:
    """One port per subnet for each instance (flushed, ids known), NIC ``i`` on ``subnets[i]``;
    Conflict ("subnet full") before any is written when a subnet cannot give every instance one."""
    allocated = [_addresses(session, subnet, len(instances), None) for subnet in subnets]
    ports: list[Port] = []
    addresses: list[list[str]] = []
    for index, (subnet, per_instance) in enumerate(zip(subnets, allocated)):
        for instance, addrs in zip(instances, per_instance):
            ports.append(port_on(subnet, mac="", name=f"{instance.name}-nic{index}", instance_id=instance.id,
                                 device_index=index))
            addresses.append(addrs)
    _add_ports(session, ports, addresses)
    return ports
