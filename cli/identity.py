"""``cloudland directory``, ``credential`` and ``audit``: how an organisation's people sign in
(operators) and which of its directory's groups map onto its local groups (its admins: ``directory
group``), application credentials for scripts (anyone, their own), and the audit trail (an
organisation's admins). Exit codes are those of every REST command (common.py).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from cloudland.errors import InvalidRequest
from cloudland_cli.common import connect, out, print_json, print_page, print_record, print_table
from cloudland_cli.tenants import find_org, print_list

directory_app = typer.Typer(no_args_is_help=True)  # help: main.COMMANDS
credential_app = typer.Typer(no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
OrgArg = Annotated[str, typer.Argument(help="Organisation name or id.")]
KindArg = Annotated[str, typer.Argument(help="ldap or oidc.")]
KINDS = ("ldap", "oidc")


def _kind(kind: str) -> str:
    if kind not in KINDS:
        raise InvalidRequest(f"the directory kind is ldap or oidc, not {kind!r}")
    return kind


# -- directory groups onto local groups (an organisation's admins) -----------------------------

directory_group_app = typer.Typer(no_args_is_help=True, help=(
    "Your organisation's directory groups mapped onto its local groups, applied at each sign-in."))
directory_app.add_typer(directory_group_app, name="group")
DirectoryOpt = Annotated[str, typer.Option("--directory", help="ldap or oidc.")]


@directory_group_app.command("map")
def directory_group_map(
    name: Annotated[str, typer.Argument(help="The directory's group: an LDAP group's DN or name, or a value of "
                                             "the OpenID groups claim.")],
    group: Annotated[str, typer.Option(help="The local group (name or id).")],
    directory: DirectoryOpt = "ldap",
    as_json: JsonOpt = False,
) -> None:
    """Put the directory's group's people in a local group, from each one's next sign-in."""
    with connect() as client:
        made = client.post("/directory-groups", {"directory": _kind(directory), "name": name, "group": group})
    print_json(made) if as_json else out.print(f"{directory} group {made['name']} maps onto group {made['group']} "
                                               f"(mapping {made['id']})")


@directory_group_app.command("list")
def directory_group_list(as_json: JsonOpt = False) -> None:
    """Your organisation's directory groups and the local groups they map onto."""
    print_list("/directory-groups", as_json, ("id", "directory", "name", "group"),
               lambda m: (m["id"], m["directory"], m["name"], m["group"]))


@directory_group_app.command("unmap")
def directory_group_unmap(mapping: Annotated[int, typer.Argument(help="Mapping id (directory group list).")]
                          ) -> None:
    """Forget a mapping: the memberships it made go at each one's next sign-in."""
    with connect() as client:
        client.delete(f"/directory-groups/{mapping}")
    out.print(f"mapping {mapping} removed")


# -- directories (operators) ----------------------------------------------------------------


@directory_app.command("set")
def directory_set(
    org: OrgArg,
    kind: KindArg,
    settings: Annotated[Path, typer.Option(help="A JSON file of the settings (README, 'Sign in with your directory').")],
    bind_password_stdin: Annotated[bool, typer.Option(
        "--bind-password-stdin", help="Read the LDAP service account's password from stdin (not from the file).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Sign an organisation's people in through its LDAP server or OpenID provider."""
    with connect() as client:
        try:
            body: dict[str, Any] = json.loads(settings.read_text())
        except (OSError, ValueError) as exc:
            raise InvalidRequest(f"cannot read settings {settings}: {exc}") from exc
        if not isinstance(body, dict):
            raise InvalidRequest(f"{settings} must hold a JSON object")
        if bind_password_stdin:
            body["bind_password"] = sys.stdin.readline().rstrip("\r\n")
        found = find_org(client, org)
        shown = client.request("PUT", f"/organisations/{found['id']}/{_kind(kind)}", json=body)
    print_json(shown) if as_json else out.print(f"organisation {found['name']} signs in through its "
                                                f"{'LDAP server' if kind == 'ldap' else 'OpenID provider'} "
                                                f"{shown.get('url') or shown.get('issuer')}")


@directory_app.command("show")
def directory_show(org: OrgArg, kind: KindArg, as_json: JsonOpt = False) -> None:
    """An organisation's directory settings (never the LDAP bind password)."""
    with connect() as client:
        shown = client.get(f"/organisations/{find_org(client, org)['id']}/{_kind(kind)}")
    print_json(shown) if as_json else print_record(shown)


@directory_app.command("remove")
def directory_remove(org: OrgArg, kind: KindArg) -> None:
    """Stop signing an organisation's people in through that directory."""
    with connect() as client:
        found = find_org(client, org)
        client.delete(f"/organisations/{found['id']}/{_kind(kind)}")
    out.print(f"organisation {found['name']} no longer signs in through its {kind} directory")


# -- application credentials ----------------------------------------------------------------


@credential_app.command("create")
def credential_create(
    name: Annotated[str, typer.Argument(help="What it is for.")],
    role: Annotated[str | None, typer.Option(help="admin, member or reader: at most yours [default: yours].")] = None,
    lifetime: Annotated[int, typer.Option(min=60, help="Seconds until it expires [default: 90 days].")] = 90 * 86400,
    as_json: JsonOpt = False,
) -> None:
    """A credential for scripts, acting for you in the project you act in, and only there; its secret is
    shown once."""
    body: dict[str, Any] = {"name": name, "lifetime_s": lifetime}
    if role is not None:
        body["role"] = role
    with connect() as client:
        made = client.post("/app-credentials", body)
    if as_json:
        print_json(made)
    else:
        out.print(f"credential {made['id']} {made['name']} ({made['role']} in project {made['project_id']}) until "
                  f"{made['expires_at']}; its secret, "
                  f"shown this once (use it as CLOUDLAND_TOKEN):\n{made['secret']}")


@credential_app.command("list")
def credential_list(as_json: JsonOpt = False) -> None:
    """Your credentials in this organisation (never their secrets)."""
    print_list("/app-credentials", as_json, ("id", "name", "role", "project", "expires"),
               lambda c: (c["id"], c["name"], c["role"], c["project_id"], c["expires_at"]))


@credential_app.command("revoke")
def credential_revoke(credential_id: Annotated[int, typer.Argument(help="Credential id.")]) -> None:
    """Revoke one of your credentials: it stops working at once."""
    with connect() as client:
        client.delete(f"/app-credentials/{credential_id}")
    out.print(f"credential {credential_id} revoked")


# -- the audit trail ------------------------------------------------------------------------


def audit(
    username: Annotated[str | None, typer.Option(help="Only this user's events.")] = None,
    project_id: Annotated[int | None, typer.Option(min=1, help="Only requests acting in this project (id).")] = None,
    resource: Annotated[str | None, typer.Option(
        help="Only requests on this resource type (instance) or one resource (instance:12).")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="The newest this many.")] = 50,
    as_json: JsonOpt = False,
) -> None:
    """The audit trail, newest first: your organisation's (admins), everyone's (operators)."""
    params: dict[str, Any] = {"limit": limit}
    for name, value in (("username", username), ("project", project_id), ("resource", resource)):
        if value is not None:
            params[name] = value
    with connect() as client:
        items = client.get("/audit", **params)["items"]
    if as_json:
        print_page(items)
    else:
        print_table(("when", "who", "org", "project", "what", "resource", "status", "from"),
                    [(e["at"], e["username"] or "-", e["org_id"] or "-", e["project_id"] or "-",
                      f"{e['method']} {e['path']}", ":".join(str(part) for part in (e["resource_type"],
                                                                                    e["resource_id"]) if part) or "-",
                      e["status"], e["address"]) for e in items])
