"""``cloudland group``: groups of your organisation's users and the roles they hold, on the
organisation (all its projects) or on one project; a member of a group holds what it holds.

A group is named by name or id, a user by username (a member of your organisation) or by id (a
user of another organisation, who then joins yours for its projects only), a project by name or
id. Changes are the organisation's admins'. Exit codes are those of every REST command (common.py).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cloudland_cli.common import connect, delete_asked, out, print_json, print_record
from cloudland_cli.projects import find_project, user_ref_id
from cloudland_cli.restclient import ApiClient, find_by_ref
from cloudland_cli.tenants import JsonOpt, YesOpt, checked_role, print_list

group_app = typer.Typer(no_args_is_help=True)   # help: main.COMMANDS

GroupArg = Annotated[str, typer.Argument(help="Group name or id.")]
UserArg = Annotated[str, typer.Argument(help="Username (or user id).")]
ProjectOpt = Annotated[str | None, typer.Option(help="A project (name or id); none: the organisation.")]


def find_group(client: ApiClient, ref: str) -> dict[str, Any]:
    return find_by_ref(client, "/groups", ref, "group")


def _where(project: dict[str, Any] | None) -> str:
    return f"project {project['name']}" if project else "the organisation"


def _show(group: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(group)
        return
    print_record({"id": group["id"], "name": group["name"], "role": group["role"] or "-",
                  "members": ", ".join(m["username"] for m in group.get("members") or []) or "-",
                  "projects": ", ".join(f"{p['project']}={p['role']}" for p in group.get("projects") or []) or "-",
                  "created_at": group["created_at"]})


@group_app.command("list")
def group_list(as_json: JsonOpt = False) -> None:
    """The groups of your organisation, with their role on it."""
    print_list("/groups", as_json, ("id", "name", "role", "created"),
               lambda g: (g["id"], g["name"], g["role"] or "", g["created_at"]))


@group_app.command("create")
def group_create(name: Annotated[str, typer.Argument(help="The new group's name.")],
                 role: Annotated[str | None, typer.Option(help="Its role on the organisation (admin, member or "
                                                                "reader) [default: none].")] = None,
                 as_json: JsonOpt = False) -> None:
    """Create a group of your organisation."""
    body: dict[str, Any] = {"name": name}
    if role is not None:
        body["role"] = checked_role(role)
    with connect() as client:
        group = client.post("/groups", body)
    print_json(group) if as_json else out.print(f"group {group['id']} {group['name']} created")


@group_app.command("show")
def group_show(ref: GroupArg, as_json: JsonOpt = False) -> None:
    """One group: its members and its roles."""
    with connect() as client:
        group = client.get(f"/groups/{find_group(client, ref)['id']}")
    _show(group, as_json)


@group_app.command("delete")
def group_delete(ref: GroupArg, yes: YesOpt = False) -> None:
    """Delete a group: its members lose the roles it gave them. Asks first; --yes does not."""
    with connect() as client:
        group = find_group(client, ref)
        delete_asked(client, "group", group, f"/groups/{group['id']}", yes)


@group_app.command("add-user")
def group_add_user(ref: GroupArg, user: UserArg) -> None:
    """Put a user in a group."""
    with connect() as client:
        group = find_group(client, ref)
        client.request("PUT", f"/groups/{group['id']}/members/{user_ref_id(client, user)}")
    out.print(f"user {user} is in group {group['name']}")


@group_app.command("remove-user")
def group_remove_user(ref: GroupArg, user: UserArg) -> None:
    """Take a user out of a group."""
    with connect() as client:
        group = find_group(client, ref)
        client.delete(f"/groups/{group['id']}/members/{user_ref_id(client, user)}")
    out.print(f"user {user} is not in group {group['name']} any more")


@group_app.command("grant")
def group_grant(ref: GroupArg, role: Annotated[str, typer.Option(help="admin, member or reader.")],
                project: ProjectOpt = None) -> None:
    """Give a group a role on the organisation, or with --project on one project."""
    with connect() as client:
        group = find_group(client, ref)
        where = find_project(client, project) if project is not None else None
        path = f"/groups/{group['id']}/" + (f"projects/{where['id']}" if where else "role")
        client.request("PUT", path, json={"role": checked_role(role)})
    out.print(f"group {group['name']} is {role} on {_where(where)}")


@group_app.command("revoke")
def group_revoke(ref: GroupArg, project: ProjectOpt = None) -> None:
    """Take a group's role on the organisation away, or with --project its role on one project."""
    with connect() as client:
        group = find_group(client, ref)
        where = find_project(client, project) if project is not None else None
        client.delete(f"/groups/{group['id']}/" + (f"projects/{where['id']}" if where else "role"))
    out.print(f"group {group['name']} holds no role on {_where(where)} any more")
