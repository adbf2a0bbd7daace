"""``cloudland secgroup``: security groups and their rules (issue 12); ``port set`` (network.py)
puts a port in groups. Groups are named by id or name; a rule by its id."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cloudland_cli.common import all_pages, connect, out, print_json, print_page, print_record, print_table
from cloudland_cli.restclient import find_by_ref as find

secgroup_app = typer.Typer(no_args_is_help=True, help="Security groups: firewall rules that follow ports.")
rule_app = typer.Typer(no_args_is_help=True, help="Rules of a security group.")
secgroup_app.add_typer(rule_app, name="rule")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
Group = Annotated[str, typer.Argument(help="Security group id or name.")]


def describe(rule: dict[str, Any]) -> str:
    """``ingress tcp 22 from 0.0.0.0/0``, ``egress any to anywhere``."""
    ports = ""
    if rule["port_min"] is not None:
        low, high = rule["port_min"], rule["port_max"]
        ports = f" {low}" if low == high else f" {low}-{high}"
    remote = rule["remote_cidr"] or (f"group {rule['remote_group_id']}" if rule["remote_group_id"] else "anywhere")
    return f"{rule['direction']} {rule['protocol']}{ports} {'from' if rule['direction'] == 'ingress' else 'to'} {remote}"


@secgroup_app.command("create")
def create(name: Annotated[str, typer.Argument(help="Group name.")],
           description: Annotated[str, typer.Option(help="What it is for.")] = "", as_json: JsonOpt = False) -> None:
    """Create a security group with no rule."""
    with connect() as client:
        group = client.post("/security-groups", {"name": name, "description": description})
    print_json(group) if as_json else out.print(f"security group {group['id']} {group['name']} created")


@secgroup_app.command("list")
def list_groups(as_json: JsonOpt = False) -> None:
    """Every security group of your project (its default group among them)."""
    with connect() as client:
        groups = all_pages(client, "/security-groups")
    if as_json:
        print_page(groups)
        return
    print_table(("id", "name", "default", "rules", "description"),
                [(g["id"], g["name"], "yes" if g["is_default"] else "", len(g["rules"]), g["description"])
                 for g in groups])


@secgroup_app.command("show")
def show(group: Group, as_json: JsonOpt = False) -> None:
    """One security group and its rules."""
    with connect() as client:
        found = client.get(f"/security-groups/{find(client, '/security-groups', group, 'security group')['id']}")
    if as_json:
        print_json(found)
        return
    print_record({k: v for k, v in found.items() if k != "rules"})
    print_table(("rule", "what"), [(r["id"], describe(r)) for r in found["rules"]])


@secgroup_app.command("delete")
def delete(group: Group) -> None:
    """Delete a security group that no port and no other group's rule uses."""
    with connect() as client:
        found = find(client, "/security-groups", group, "security group")
        client.delete(f"/security-groups/{found['id']}")
    out.print(f"security group {found['id']} {found['name']} deleted")


@rule_app.command("add")
def rule_add(
    group: Group,
    direction: Annotated[str, typer.Option(help="ingress (to the port) or egress (from it).")] = "ingress",
    protocol: Annotated[str, typer.Option(help="tcp, udp, icmp or any.")] = "any",
    port: Annotated[str | None, typer.Option(help="A destination port or range, e.g. 22 or 8000-8080 (tcp, udp).")]
    = None,
    remote_cidr: Annotated[str | None, typer.Option("--remote-cidr", help="The remote end's network.")] = None,
    remote_group: Annotated[str | None, typer.Option("--remote-group",
                                                     help="The remote end: a group's members (id or name).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Add a rule to a security group; the hypervisors of your VPCs apply it at once."""
    body: dict[str, Any] = {"direction": direction, "protocol": protocol}
    if port is not None:
        low, _, high = port.partition("-")
        if not low.isdigit() or (high and not high.isdigit()):
            raise typer.BadParameter(f"--port {port!r}: a port (22) or a range (8000-8080)")
        body |= {"port_min": int(low), "port_max": int(high or low)}
    with connect() as client:
        found = find(client, "/security-groups", group, "security group")
        if remote_cidr is not None:
            body["remote_cidr"] = remote_cidr
        if remote_group is not None:
            body["remote_group"] = int(find(client, "/security-groups", remote_group, "security group")["id"])
        rule = client.post(f"/security-groups/{found['id']}/rules", body)
    print_json(rule) if as_json else out.print(f"rule {rule['id']} added to {found['name']}: {describe(rule)}")


@rule_app.command("delete")
def rule_delete(group: Group, rule: Annotated[int, typer.Argument(help="Rule id.")]) -> None:
    """Delete a rule: new flows it allowed stop; established ones go on until they end."""
    with connect() as client:
        found = find(client, "/security-groups", group, "security group")
        client.delete(f"/security-groups/{found['id']}/rules/{rule}")
    out.print(f"rule {rule} of {found['name']} deleted")
