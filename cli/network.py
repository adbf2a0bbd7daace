"""``cloudland vpc``, ``cloudland subnet`` and ``cloudland port``: tenant networks (issue 11).

VPCs, subnets and ports are named by id or name, as are VMs in ``port list --instance``.
``vm create --network SUBNET`` (vm.py) gives a VM a port on each subnet named, the first its
primary NIC.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer

from cloudland.errors import InvalidRequest
from cloudland_cli.restclient import find_by_ref as find
from cloudland_cli.common import all_pages, connect, out, print_json, print_page, print_record, print_table
from cloudland_cli.restclient import ApiClient
from cloudland_cli.vm import resolve_instance

vpc_app = typer.Typer(no_args_is_help=True, help="VPCs: a tenant's private routing domains.")
subnet_app = typer.Typer(no_args_is_help=True, help="Subnets of VPCs: CIDR, gateway, pools, DNS, DHCP; one VNI each.")
port_app = typer.Typer(no_args_is_help=True, help="Ports: a NIC's MAC and addresses on a subnet.")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Ref = Annotated[str, typer.Argument(help="Id or name.")]
Row = Sequence[Any]


def _id(client: ApiClient, path: str, ref: str | None, kind: str) -> int | None:
    """The id of the VPC or subnet named by id or name (None for None)."""
    return None if ref is None else int(find(client, path, ref, kind)["id"])


def _show(item: dict[str, Any], as_json: bool) -> None:
    print_json(item) if as_json else print_record(item)


def _list(items: list[dict[str, Any]], as_json: bool, columns: Sequence[str], row: Callable[[dict[str, Any]], Row],
          whole: Sequence[str] = ()) -> None:
    """Every page of a list, as ``--json`` prints it or as a table of ``row(item)`` each."""
    if as_json:
        print_page(items)
    else:
        print_table(columns, [row(item) for item in items], whole=whole)


def _delete(path: str, ref: str, kind: str) -> None:
    """Delete the VPC, subnet or port named by id or name."""
    with connect() as client:
        item = find(client, path, ref, kind)
        client.delete(f"{path}/{item['id']}")
    out.print(" ".join(filter(None, (kind, str(item["id"]), item["name"], "deleted"))))


# -- vpc ----------------------------------------------------------------------------------------


@vpc_app.command("create")
def vpc_create(name: Annotated[str, typer.Argument(help="VPC name.")],
               domain: Annotated[str | None, typer.Option(
                   help="DNS domain of its instances' names [default: vpc-ID.cloudland.internal].")] = None,
               as_json: JsonOpt = False) -> None:
    """Create a VPC."""
    body: dict[str, Any] = {"name": name} | ({"domain": domain} if domain else {})
    with connect() as client:
        vpc = client.post("/vpcs", body)
    print_json(vpc) if as_json else out.print(f"vpc {vpc['id']} {vpc['name']} created: domain {vpc['domain']}, "
                                              f"MTU {vpc['mtu']}")


@vpc_app.command("list")
def vpc_list(as_json: JsonOpt = False) -> None:
    """Every VPC of your organisation."""
    with connect() as client:
        vpcs = all_pages(client, "/vpcs")
    _list(vpcs, as_json, ("id", "name", "domain", "mtu", "generation"),
          lambda v: (v["id"], v["name"], v["domain"], v["mtu"], v["generation"]))


@vpc_app.command("show")
def vpc_show(ref: Ref, as_json: JsonOpt = False) -> None:
    """One VPC."""
    with connect() as client:
        _show(find(client, "/vpcs", ref, "vpc"), as_json)


@vpc_app.command("delete")
def vpc_delete(ref: Ref) -> None:
    """Delete a VPC and its subnets (refused while it has ports)."""
    _delete("/vpcs", ref, "vpc")


# -- subnet -------------------------------------------------------------------------------------


def parse_pool(text: str) -> dict[str, str]:
    """``START-END`` as the API's pool."""
    start, dash, end = text.partition("-")
    if not dash or not start or not end:
        raise InvalidRequest(f"--pool {text!r}: write it as START-END, e.g. 10.0.0.10-10.0.0.99")
    return {"start": start.strip(), "end": end.strip()}


@subnet_app.command("create")
def subnet_create(
    name: Annotated[str, typer.Argument(help="Subnet name.")],
    vpc: Annotated[str, typer.Option(help="VPC id or name.")],
    cidr: Annotated[str, typer.Option(help="IPv4 network, /8 to /29, e.g. 10.0.0.0/24.")],
    gateway: Annotated[str | None, typer.Option(
        help="Gateway address, or 'none' [default: the first host address].")] = None,
    pool: Annotated[list[str] | None, typer.Option(
        help="An allocation pool START-END (repeatable) [default: every host address].")] = None,
    dns: Annotated[list[str] | None, typer.Option(help="A DNS server for DHCP to give (repeatable).")] = None,
    dhcp: Annotated[bool, typer.Option("--dhcp/--no-dhcp", help="Serve the ports' addresses by DHCP.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Create a subnet of a VPC; it gets a VNI from the operator's range."""
    with connect() as client:
        body: dict[str, Any] = {"name": name, "vpc": int(find(client, "/vpcs", vpc, "vpc")["id"]), "cidr": cidr,
                                "dns_servers": dns or [], "dhcp": dhcp}
        if gateway is not None:
            body["gateway"] = None if gateway.lower() == "none" else gateway
        if pool:
            body["allocation_pools"] = [parse_pool(p) for p in pool]
        subnet = client.post("/subnets", body)
    if as_json:
        print_json(subnet)
        return
    out.print(f"subnet {subnet['id']} {subnet['name']} created: {subnet['cidr']}, gateway {subnet['gateway'] or '-'}, "
              f"VNI {subnet['vni']}")


@subnet_app.command("list")
def subnet_list(vpc: Annotated[str | None, typer.Option(help="Only this VPC's (id or name).")] = None,
                as_json: JsonOpt = False) -> None:
    """Every subnet of your organisation."""
    with connect() as client:
        subnets = all_pages(client, "/subnets", vpc=_id(client, "/vpcs", vpc, "vpc"))
    _list(subnets, as_json, ("id", "name", "vpc", "cidr", "gateway", "vni", "dhcp", "dns"),
          lambda s: (s["id"], s["name"], s["vpc_id"], s["cidr"], s["gateway"], s["vni"], "on" if s["dhcp"] else "off",
                     ", ".join(s["dns_servers"]) or None))


@subnet_app.command("show")
def subnet_show(ref: Ref, as_json: JsonOpt = False) -> None:
    """One subnet."""
    with connect() as client:
        subnet = find(client, "/subnets", ref, "subnet")
    if not as_json:
        subnet = subnet | {"allocation_pools": ", ".join(f"{p['start']}-{p['end']}" for p in subnet["allocation_pools"])}
    _show(subnet, as_json)


@subnet_app.command("delete")
def subnet_delete(ref: Ref) -> None:
    """Delete a subnet (refused while it has ports)."""
    _delete("/subnets", ref, "subnet")


# -- port ---------------------------------------------------------------------------------------


@port_app.command("create")
def port_create(
    subnet: Annotated[str, typer.Option(help="Subnet id or name.")],
    name: Annotated[str, typer.Option(help="Port name.")] = "",
    ip: Annotated[list[str] | None, typer.Option(help="A fixed address (repeatable) [default: the lowest free].")]
    = None,
    mac: Annotated[str | None, typer.Option(help="MAC address [default: generated].")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a port on a subnet, bound to no VM."""
    with connect() as client:
        body: dict[str, Any] = {"subnet": int(find(client, "/subnets", subnet, "subnet")["id"]), "name": name}
        body |= ({"fixed_ips": ip} if ip else {}) | ({"mac": mac} if mac else {})
        port = client.post("/ports", body)
    print_json(port) if as_json else out.print(f"port {port['id']} created: {port['mac']} "
                                               f"{', '.join(port['fixed_ips'])}")


@port_app.command("list")
def port_list(subnet: Annotated[str | None, typer.Option(help="Only this subnet's (id or name).")] = None,
              vpc: Annotated[str | None, typer.Option(help="Only this VPC's (id or name).")] = None,
              instance: Annotated[str | None, typer.Option(help="Only this VM's (id or name).")] = None,
              as_json: JsonOpt = False) -> None:
    """Every port of your organisation."""
    with connect() as client:
        ports = all_pages(client, "/ports", subnet=_id(client, "/subnets", subnet, "subnet"),
                          vpc=_id(client, "/vpcs", vpc, "vpc"),
                          instance=None if instance is None else resolve_instance(client, instance)["id"])
    _list(ports, as_json, ("id", "name", "subnet", "mac", "ips", "vm", "nic", "hypervisor"),
          lambda p: (p["id"], p["name"] or None, p["subnet_id"], p["mac"], ", ".join(p["fixed_ips"]),
                     p["instance_id"], p["device_index"], p["hypervisor_id"]), whole=("mac",))


@port_app.command("show")
def port_show(ref: Ref, as_json: JsonOpt = False) -> None:
    """One port."""
    with connect() as client:
        port = find(client, "/ports", ref, "port")
    _show(port if as_json else port | {"fixed_ips": ", ".join(port["fixed_ips"])}, as_json)


@port_app.command("set")
def port_set(
    ref: Ref,
    secgroup: Annotated[list[str] | None, typer.Option(
        "--secgroup", help="A security group (id or name; repeatable): the port's groups become these.")] = None,
    no_secgroup: Annotated[bool, typer.Option("--no-secgroup", help="Back to the default group only.")] = False,
    allowed_address: Annotated[list[str] | None, typer.Option(
        "--allowed-address", help="An address or network the guest may also send from (repeatable).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Set a port's security groups and allowed address pairs (issue 12)."""
    body: dict[str, Any] = {}
    with connect() as client:
        port = find(client, "/ports", ref, "port")
        if secgroup or no_secgroup:
            body["security_groups"] = [int(find(client, "/security-groups", g, "security group")["id"])
                                       for g in secgroup or []]
        if allowed_address is not None:
            body["allowed_addresses"] = allowed_address
        if not body:
            raise typer.BadParameter("nothing to set: give --secgroup, --no-secgroup or --allowed-address")
        port = client.patch(f"/ports/{port['id']}", body)
    print_json(port) if as_json else out.print(
        f"port {port['id']}: security groups {', '.join(map(str, port['security_groups'])) or 'none'}; "
        f"allowed addresses {', '.join(port['allowed_addresses']) or 'none'}")


@port_app.command("delete")
def port_delete(ref: Ref) -> None:
    """Delete a port made by hand (a VM's ports go with the VM)."""
    _delete("/ports", ref, "port")
