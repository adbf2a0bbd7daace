"""``cloudland router``, ``cloudland external-network`` and ``cloudland floating-ip`` (issue 12).

Routers, subnets and external networks are named by id or name; a floating IP by id or address;
where a floating IP goes, by its port (id or name) or its VM (id or name: the VM's primary NIC).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cloudland.errors import CloudLandError, InvalidRequest
from cloudland_cli.common import all_pages, connect, err, out, print_json, print_record
from cloudland_cli.network import JsonOpt, Ref, _delete, _list, parse_pool
from cloudland_cli.restclient import ApiClient
from cloudland_cli.restclient import find_by_ref as find
from cloudland_cli.vm import resolve_instance

router_app = typer.Typer(no_args_is_help=True, help="Routers: connect a VPC's subnets, and reach the outside by SNAT.")
external_app = typer.Typer(no_args_is_help=True, help="External networks (operators create): public segments.")
fip_app = typer.Typer(no_args_is_help=True, help="Floating IPs: public addresses of VMs' ports.")


def _router_line(router: dict[str, Any], what: str) -> str:
    snat = ", ".join(f"{s['address']} (hv {s['hypervisor_id']})" for s in router["snat_addresses"])
    return (f"router {router['id']} {router['name']} {what}: subnets {router['subnet_ids'] or '-'}, "
            f"gateway {router['external_network_id'] or '-'}{', SNAT ' + snat if snat else ''}")


def _print_router(router: dict[str, Any], as_json: bool, what: str) -> None:
    print_json(router) if as_json else out.print(_router_line(router, what))


@router_app.command("create")
def router_create(name: Annotated[str, typer.Argument(help="Router name.")],
                  vpc: Annotated[str, typer.Option(help="VPC id or name (one router per VPC).")],
                  as_json: JsonOpt = False) -> None:
    """Create the router of a VPC."""
    with connect() as client:
        router = client.post("/routers", {"name": name, "vpc": int(find(client, "/vpcs", vpc, "vpc")["id"])})
    _print_router(router, as_json, "created")


@router_app.command("list")
def router_list(as_json: JsonOpt = False) -> None:
    """Every router of your project."""
    with connect() as client:
        routers = all_pages(client, "/routers")
    _list(routers, as_json, ("id", "name", "vpc", "subnets", "gateway", "snat"),
          lambda r: (r["id"], r["name"], r["vpc_id"], ", ".join(map(str, r["subnet_ids"])) or None,
                     r["external_network_id"], ", ".join(s["address"] for s in r["snat_addresses"]) or None))


@router_app.command("show")
def router_show(ref: Ref, as_json: JsonOpt = False) -> None:
    """One router."""
    with connect() as client:
        router = find(client, "/routers", ref, "router")
    print_json(router) if as_json else print_record(router | {
        "snat_addresses": ", ".join(f"{s['address']} (hv {s['hypervisor_id']})" for s in router["snat_addresses"])})


@router_app.command("delete")
def router_delete(ref: Ref) -> None:
    """Delete a router (refused while a floating IP is associated in its VPC)."""
    _delete("/routers", ref, "router")


@router_app.command("add-subnet")
def router_add_subnet(ref: Ref, subnet: Annotated[str, typer.Argument(help="Subnet id or name.")],
                      as_json: JsonOpt = False) -> None:
    """Connect a subnet of the router's VPC."""
    with connect() as client:
        router_id = find(client, "/routers", ref, "router")["id"]
        subnet_id = int(find(client, "/subnets", subnet, "subnet")["id"])
        _print_router(client.post(f"/routers/{router_id}/subnets", {"subnet": subnet_id}), as_json, "updated")


@router_app.command("remove-subnet")
def router_remove_subnet(ref: Ref, subnet: Annotated[str, typer.Argument(help="Subnet id or name.")],
                         as_json: JsonOpt = False) -> None:
    """Disconnect a subnet."""
    with connect() as client:
        router_id = find(client, "/routers", ref, "router")["id"]
        subnet_id = find(client, "/subnets", subnet, "subnet")["id"]
        _print_router(client.delete(f"/routers/{router_id}/subnets/{subnet_id}"), as_json, "updated")


@router_app.command("set-gateway")
def router_set_gateway(ref: Ref,
                       external: Annotated[str | None, typer.Option(
                           help="External network id or name; leave out to clear the gateway.")] = None,
                       as_json: JsonOpt = False) -> None:
    """Set (or with no --external, clear) the router's gateway on an external network."""
    with connect() as client:
        router_id = find(client, "/routers", ref, "router")["id"]
        target: int | str | None = int(external) if external and external.isdigit() else external
        _print_router(client.put(f"/routers/{router_id}/gateway", {"external_network": target}), as_json, "updated")


# -- external networks --------------------------------------------------------------------------


@external_app.command("create")
def external_create(name: Annotated[str, typer.Argument(help="Name.")],
                    cidr: Annotated[str, typer.Option(help="Public IPv4 network, e.g. 203.0.113.0/24.")],
                    bridge: Annotated[str, typer.Option(help="The provider bridge every hypervisor has on it.")],
                    gateway: Annotated[str | None, typer.Option(help="Next hop [default: the first host].")] = None,
                    pool: Annotated[list[str] | None, typer.Option(help="Allocation pool START-END (repeatable).")]
                    = None,
                    as_json: JsonOpt = False) -> None:
    """Define an external network (operators)."""
    body: dict[str, Any] = {"name": name, "cidr": cidr, "bridge": bridge}
    body |= ({"gateway": gateway} if gateway else {}) | ({"allocation_pools": [parse_pool(p) for p in pool]} if pool
                                                         else {})
    with connect() as client:
        external = client.post("/external-networks", body)
    print_json(external) if as_json else out.print(f"external network {external['id']} {external['name']} created: "
                                                   f"{external['cidr']}, gateway {external['gateway'] or '-'}")


@external_app.command("list")
def external_list(as_json: JsonOpt = False) -> None:
    """Every external network."""
    with connect() as client:
        items = all_pages(client, "/external-networks")
    _list(items, as_json, ("id", "name", "cidr", "gateway", "bridge", "pools"),
          lambda e: (e["id"], e["name"], e["cidr"], e["gateway"], e["bridge"],
                     ", ".join(f"{p['start']}-{p['end']}" for p in e["allocation_pools"])))


@external_app.command("delete")
def external_delete(ref: Ref) -> None:
    """Delete an external network (operators; refused while used)."""
    _delete("/external-networks", ref, "external network")


# -- floating IPs -------------------------------------------------------------------------------


def _fip(client: ApiClient, ref: str) -> dict[str, Any]:
    if ref.isdigit():
        found: dict[str, Any] = client.get(f"/floating-ips/{ref}")
        return found
    for item in client.iter_after("/floating-ips"):
        if item["address"] == ref:
            return item  # type: ignore[no-any-return]
    raise InvalidRequest(f"no floating IP {ref!r}")


def _print_fip(fip: dict[str, Any], as_json: bool, what: str) -> None:
    where = f"port {fip['port_id']} ({fip['fixed_ip']})" if fip["port_id"] else "no port"
    print_json(fip) if as_json else out.print(f"floating IP {fip['id']} {fip['address']} {what}: {where}")


PortOpt = Annotated[str | None, typer.Option(help="Port id or name.")]
VmOpt = Annotated[str | None, typer.Option(help="VM id or name: its primary NIC (eth0).")]
FixedOpt = Annotated[str | None, typer.Option(help="Which of the port's addresses [default: the first].")]


def _port_of(client: ApiClient, port: str | None, vm: str | None) -> int:
    """The port ``--port`` or ``--vm`` names (exactly one of them)."""
    if (port is None) == (vm is None):
        raise InvalidRequest("name the floating IP's place with exactly one of --port and --vm")
    if port is not None:
        return int(find(client, "/ports", port, "port")["id"])
    instance = resolve_instance(client, vm)  # type: ignore[arg-type]
    nics = [p for p in all_pages(client, "/ports", instance=instance["id"]) if p["device_index"] == 0]
    if not nics:
        raise InvalidRequest(f"VM {instance['name']} ({instance['id']}) has no NIC")
    return int(nics[0]["id"])


def _associate(client: ApiClient, fip: dict[str, Any], port: int, fixed_ip: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"port": port} | ({"fixed_ip": fixed_ip} if fixed_ip else {})
    done: dict[str, Any] = client.put(f"/floating-ips/{fip['id']}/port", body)
    return done


@fip_app.command("create")
def fip_create(external: Annotated[str, typer.Option(help="External network id or name.")],
               port: PortOpt = None, vm: VmOpt = None, fixed_ip: FixedOpt = None, as_json: JsonOpt = False) -> None:
    """Allocate a floating IP; with --port or --vm, associate it there too."""
    with connect() as client:
        target: int | str = int(external) if external.isdigit() else external
        place = _port_of(client, port, vm) if port is not None or vm is not None else None
        fip = client.post("/floating-ips", {"external_network": target})
        if place is None:
            _print_fip(fip, as_json, "allocated")
            return
        try:
            _print_fip(_associate(client, fip, place, fixed_ip), as_json, "allocated and associated")
        except CloudLandError:  # allocated, not associated: say which it is, then why
            err.print(f"floating IP {fip['id']} {fip['address']} allocated, not associated")
            raise


@fip_app.command("list")
def fip_list(as_json: JsonOpt = False) -> None:
    """Every floating IP of your project."""
    with connect() as client:
        items = all_pages(client, "/floating-ips")
    _list(items, as_json, ("id", "address", "external", "port", "fixed ip"),
          lambda f: (f["id"], f["address"], f["external_network_id"], f["port_id"], f["fixed_ip"]))


@fip_app.command("associate")
def fip_associate(ref: Annotated[str, typer.Argument(help="Floating IP id or address.")],
                  port: PortOpt = None, vm: VmOpt = None, fixed_ip: FixedOpt = None, as_json: JsonOpt = False) -> None:
    """Associate a floating IP to a port, or a VM's primary NIC (behind a router with a gateway)."""
    with connect() as client:
        fip = _fip(client, ref)
        _print_fip(_associate(client, fip, _port_of(client, port, vm), fixed_ip), as_json, "associated")


@fip_app.command("disassociate")
def fip_disassociate(ref: Annotated[str, typer.Argument(help="Floating IP id or address.")],
                     as_json: JsonOpt = False) -> None:
    """Disassociate a floating IP from its port."""
    with connect() as client:
        fip = _fip(client, ref)
        _print_fip(client.delete(f"/floating-ips/{fip['id']}/port"), as_json, "disassociated")


@fip_app.command("delete")
def fip_delete(ref: Annotated[str, typer.Argument(help="Floating IP id or address.")]) -> None:
    """Release a floating IP."""
    with connect() as client:
        fip = _fip(client, ref)
        client.delete(f"/floating-ips/{fip['id']}")
    out.print(f"floating IP {fip['id']} {fip['address']} released")
