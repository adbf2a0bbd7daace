"""``cloudland project`` and ``quota``: projects of your organisation and what they may use.

A project is named by name or id. ``project use NAME`` makes it the profile's current project:
every command then acts in it (the ``X-CloudLand-Project`` header), as ``--project NAME`` before
the command does for one call; without either, commands act in the organisation's default
project. Roles on a project are granted to a user by username (a member of your organisation)
or by id (a user of another organisation, who then joins yours for that project only), by the
organisation's admins or the project's (``grant`` and ``revoke`` act in that project). Exit
codes are those of every REST command (common.py).
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cloudland.errors import InvalidRequest
from cloudland_cli.common import (
    api_errors,
    connect,
    delete_asked,
    out,
    print_json,
    print_record,
    print_table,
)
from cloudland_cli.restclient import PROJECT_HEADER, ApiClient, find_by_ref
from cloudland_cli.settings import CliConfig
from cloudland_cli.tenants import JsonOpt, RoleArg, YesOpt, checked_role, find_org, find_user, print_list

project_app = typer.Typer(no_args_is_help=True)   # help: main.COMMANDS
quota_app = typer.Typer(no_args_is_help=True)

ProjectArg = Annotated[str, typer.Argument(help="Project name or id.")]


def find_project(client: ApiClient, ref: str) -> dict[str, Any]:
    return find_by_ref(client, "/projects", ref, "project")


@project_app.command("list")
def project_list(as_json: JsonOpt = False) -> None:
    """The projects of your organisation you hold a role on, with that role."""
    print_list("/projects", as_json, ("id", "name", "default", "role", "created"),
               lambda p: (p["id"], p["name"], "yes" if p["is_default"] else "", p["role"] or "", p["created_at"]))


@project_app.command("create")
def project_create(name: Annotated[str, typer.Argument(help="The new project's name.")], as_json: JsonOpt = False
                   ) -> None:
    """Create a project of your organisation (its admins)."""
    with connect() as client:
        project = client.post("/projects", {"name": name})
    print_json(project) if as_json else out.print(
        f"project {project['id']} {project['name']} created (cloudland project use {project['name']})")


@project_app.command("show")
def project_show(ref: ProjectArg, as_json: JsonOpt = False) -> None:
    """One project, with your role there."""
    with connect() as client:
        project = find_project(client, ref)
    print_json(project) if as_json else print_record(project)


@project_app.command("delete")
def project_delete(ref: ProjectArg, yes: YesOpt = False) -> None:
    """Delete an empty project (not the default one). Asks first; --yes does not."""
    with connect() as client:
        project = find_project(client, ref)
        delete_asked(client, "project", project, f"/projects/{project['id']}", yes)


@project_app.command("use")
def project_use(ref: Annotated[str | None, typer.Argument(help="Project name or id; none: the default one.")]
                = None) -> None:
    """Make a project the profile's current one: every command acts in it from now on."""
    with api_errors():
        config = CliConfig.load()
        if ref is not None:
            with ApiClient.from_config(config) as client:
                ref = find_project(client, ref)["name"]
        config.project = ref
        config.save()
    out.print(f"profile {config.profile} acts in project {ref or 'default (the organisation’s)'}")


def user_ref_id(client: ApiClient, user: str) -> int:
    """The id of a user named by username (a member of your organisation) or by id (anyone)."""
    return int(user) if user.isdigit() else int(find_user(client, user)["id"])


def _in(project: dict[str, Any]) -> dict[str, str]:
    return {PROJECT_HEADER: str(project["id"])}


@project_app.command("grant")
def project_grant(ref: ProjectArg, user: Annotated[str, typer.Argument(help="Username (or user id).")],
                  role: RoleArg = "member", as_json: JsonOpt = False) -> None:
    """Give a user a role on a project (your organisation's admins, or the project's)."""
    with connect() as client:
        project = find_project(client, ref)
        # Acting in that project: its admins' role there is the one the API checks.
        granted = client.request("PUT", f"/projects/{project['id']}/members/{user_ref_id(client, user)}",
                                 json={"role": checked_role(role)}, headers=_in(project))
    print_json(granted) if as_json else out.print(
        f"user {granted['username']} is {granted['role']} on project {project['name']}")


@project_app.command("revoke")
def project_revoke(ref: ProjectArg, user: Annotated[str, typer.Argument(help="Username (or user id).")]) -> None:
    """Remove a user's role on a project (their organisation role stays)."""
    with connect() as client:
        project = find_project(client, ref)
        client.request("DELETE", f"/projects/{project['id']}/members/{user_ref_id(client, user)}",
                       headers=_in(project))
    out.print(f"user {user} holds no role on project {project['name']} any more")


@project_app.command("members")
def project_members(ref: ProjectArg, as_json: JsonOpt = False) -> None:
    """The users holding a role on the project itself."""
    with connect() as client:
        project = find_project(client, ref)
    print_list(f"/projects/{project['id']}/members", as_json, ("user id", "username", "role"),
               lambda m: (m["user_id"], m["username"], m["role"]))


# -- quotas -----------------------------------------------------------------------------------


@quota_app.command("show")
def quota_show(as_json: JsonOpt = False) -> None:
    """Your project's usage and limits, beside the organisation's ceiling."""
    with connect() as client:
        quota = client.get("/quota")
    if as_json:
        print_json(quota)
        return
    unlimited = "-"
    print_table(("quota", "used", "limit", "org used", "org limit"),
                [(line["resource"], line["used"], unlimited if line["limit"] is None else line["limit"],
                  line["organisation_used"],
                  unlimited if line["organisation_limit"] is None else line["organisation_limit"])
                 for line in quota["items"]], title=f"project {quota['project']}")


def parse_limits(pairs: list[str]) -> dict[str, int | None]:
    """``instances=20 vcpus=none`` → {"instances": 20, "vcpus": None}; InvalidRequest otherwise."""
    limits: dict[str, int | None] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not (value.isdigit() or value == "none"):
            raise InvalidRequest(f"{pair!r}: expected KEY=NUMBER or KEY=none (unlimited)")
        limits[key] = None if value == "none" else int(value)
    return limits


@quota_app.command("set")
def quota_set(
    limits: Annotated[list[str], typer.Argument(help="KEY=NUMBER (or KEY=none: unlimited), e.g. instances=20.")],
    org: Annotated[str | None, typer.Option(help="Set this organisation's ceiling (name or id).")] = None,
    project_id: Annotated[int | None, typer.Option(
        help="Set this project's limits (any organisation's; default: the project you act in).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Set limits (operators): a project's, or with --org an organisation's ceiling."""
    with connect() as client:
        wanted = parse_limits(limits)
        if org is not None:
            org_id = find_org(client, org)["id"]
            reply = client.request("PUT", f"/organisations/{org_id}/quota", json={"limits": wanted})
        else:
            target = project_id if project_id is not None else client.get("/quota")["project_id"]
            reply = client.request("PUT", f"/projects/{target}/quota", json={"limits": wanted})
    print_json(reply) if as_json else out.print(
        "limits set: " + ", ".join(f"{k}={'none' if v is None else v}" for k, v in wanted.items()))
