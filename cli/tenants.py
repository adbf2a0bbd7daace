"""``cloudland org``, ``user``, ``whoami``, ``passwd`` and ``logout``: tenants and your own account.

``org`` is for operators (admins of the operator organisation); ``user`` for an organisation's
admins (its readers may list). Users are named by username. New passwords are asked for twice
on the terminal, or read as one line from stdin with ``--password-stdin``. Exit codes are those
of every REST command (common.py).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

from cloudland.errors import InvalidRequest, NotFound, Unauthorized
from cloudland_cli.common import (
    EXIT_FAILED,
    api_errors,
    confirmed,
    connect,
    fail,
    out,
    print_json,
    print_page,
    print_record,
    print_table,
)
from cloudland_cli.restclient import ApiClient
from cloudland_cli.settings import CliConfig

org_app = typer.Typer(no_args_is_help=True)   # help: main.COMMANDS
user_app = typer.Typer(no_args_is_help=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do it without asking.")]
PasswordStdin = Annotated[bool, typer.Option("--password-stdin", help="Read the new password from stdin.")]
RoleArg = Annotated[str, typer.Option(help="admin, member or reader.")]
ROLES = ("admin", "member", "reader")


def new_password(from_stdin: bool, what: str = "password") -> str:
    """A new password: one line of stdin, or asked twice on the terminal."""
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt(what, hide_input=True, confirmation_prompt=True, err=True)
    if len(password) < 8:
        raise InvalidRequest(f"the {what} must have at least 8 characters")
    return password


def checked_role(role: str) -> str:
    """``role`` if it is one of admin, member, reader; else InvalidRequest (exit 2) before any call."""
    if role not in ROLES:
        raise InvalidRequest(f"role must be admin, member or reader, not {role!r}")
    return role


def store_token(reply: dict[str, Any]) -> str:
    """Put a new token in the profile in use; the file's path."""
    config = CliConfig.load()
    config.token, config.expires_at = reply["token"], str(reply["expires_at"])
    return str(config.save())


# -- your own account -----------------------------------------------------------------------


def whoami(as_json: JsonOpt = False) -> None:
    """Who the stored token speaks for: user, organisation, role, and until when."""
    with connect() as client:
        me = client.get("/me")
    print_json(me) if as_json else print_record(me)


def passwd(password_stdin: Annotated[bool, typer.Option(
        "--password-stdin", help="Read the current password, then the new one, as two lines of stdin.")] = False,
) -> None:
    """Change your password; every token you hold ends, and the profile gets a new one."""
    with connect() as client:
        if password_stdin:
            current = sys.stdin.readline().rstrip("\r\n")
        else:
            current = typer.prompt("current password", hide_input=True, err=True)
        new = new_password(password_stdin, "new password")
        reply = client.post("/me/password", {"current_password": current, "new_password": new})
        path = store_token(reply)
    out.print(f"password changed; your other tokens no longer work; the new token is in {path} "
              f"until {reply['expires_at']}")


def logout() -> None:
    """End the stored token at the API and forget it in the profile."""
    with api_errors():
        config = CliConfig.load()
        if not config.effective().token:
            raise Unauthorized("not logged in")
        try:
            with ApiClient.from_config(config) as client:  # Unauthorized too if it expired
                client.post("/logout")
            said = "token revoked"
        except Unauthorized:  # expired or revoked already: nothing is left to end at the API
            said = "the token no longer worked"
        config.token = config.expires_at = None
        config.save()
    out.print(f"logged out of {config.endpoint} ({said}; profile {config.profile})")


# -- organisations (operators) --------------------------------------------------------------


def find_org(client: Any, ref: str) -> dict[str, Any]:
    """The organisation of that name (or id)."""
    for org in client.iter_after("/organisations"):
        if org["name"] == ref or str(org["id"]) == ref:
            return dict(org)
    raise NotFound(f"no organisation named {ref!r}")


def print_list(path: str, as_json: bool, columns: tuple[str, ...], row: Callable[[dict[str, Any]], tuple[Any, ...]]
               ) -> None:
    """Every item of the list at ``path``: the API's page shape with ``--json``, else a table."""
    with connect() as client:
        items = list(client.iter_after(path))
    if as_json:
        print_page(items)
    else:
        print_table(columns, [row(item) for item in items])


@org_app.command("list")
def org_list(as_json: JsonOpt = False) -> None:
    """Every organisation (operators)."""
    print_list("/organisations", as_json, ("id", "name", "operator", "created"),
               lambda o: (o["id"], o["name"], "yes" if o["operator"] else "", o["created_at"]))


@org_app.command("create")
def org_create(
    name: Annotated[str, typer.Argument(help="The new organisation's name.")],
    admin: Annotated[str, typer.Option(help="Its first admin's username.")],
    existing: Annotated[bool, typer.Option(help="The admin is an existing user (no password).")] = False,
    password_stdin: PasswordStdin = False,
    as_json: JsonOpt = False,
) -> None:
    """Create an organisation with its first admin: a new user (asks for a password) or, with
    --existing, a user who exists already."""
    with connect() as client:
        first = {"username": admin} if existing else {"username": admin, "password": new_password(password_stdin)}
        org = client.post("/organisations", {"name": name, "admin": first})
    if as_json:
        print_json(org)
    else:
        out.print(f"organisation {org['id']} {org['name']} created; {admin} is its admin "
                  f"(cloudland login --username {admin} --organisation {org['name']})")


@org_app.command("delete")
def org_delete(ref: Annotated[str, typer.Argument(help="Organisation name or id.")], yes: YesOpt = False) -> None:
    """Delete an organisation with no instances, images or unfinished jobs left; its users who are
    in no other organisation go too. Asks first; --yes does not."""
    with connect() as client:
        org = find_org(client, ref)
        if not confirmed(f"Delete organisation {org['name']} and its users who are in no other?",
                         f"delete organisation {org['name']}", yes):
            fail(EXIT_FAILED, f"organisation {org['name']} not deleted")
        client.delete(f"/organisations/{org['id']}")
    out.print(f"organisation {org['id']} {org['name']} deleted")


# -- users of your organisation -------------------------------------------------------------


def find_user(client: Any, username: str) -> dict[str, Any]:
    """The member of your organisation with that username."""
    page = client.get("/users", username=username, limit=1)
    if not page["items"]:
        raise NotFound(f"no user named {username!r} in this organisation")
    return dict(page["items"][0])


def _said(user: dict[str, Any], as_json: bool, what: str) -> None:
    print_json(user) if as_json else out.print(f"user {user['id']} {user['username']} {what}")


@user_app.command("list")
def user_list(as_json: JsonOpt = False) -> None:
    """Every user of your organisation, with their role in it."""
    print_list("/users", as_json, ("id", "username", "role", "created"),
               lambda u: (u["id"], u["username"], u["role"], u["created_at"]))


@user_app.command("create")
def user_create(
    username: Annotated[str, typer.Argument(help="The new user's name (unique in the whole cloud).")],
    role: RoleArg = "member",
    password_stdin: PasswordStdin = False,
    as_json: JsonOpt = False,
) -> None:
    """Create a user in your organisation (asks for their password)."""
    with connect() as client:
        body = {"username": username, "password": new_password(password_stdin), "role": checked_role(role)}
        user = client.post("/users", body)
    _said(user, as_json, f"created, {user['role']}")


@user_app.command("add")
def user_add(
    username: Annotated[str, typer.Argument(help="An existing user (of another organisation).")],
    role: RoleArg = "member",
    as_json: JsonOpt = False,
) -> None:
    """Let an existing user join your organisation."""
    with connect() as client:
        user = client.post("/memberships", {"username": username, "role": checked_role(role)})
    _said(user, as_json, f"joined, {user['role']}")


@user_app.command("role")
def user_role(
    username: Annotated[str, typer.Argument(help="A user of your organisation.")],
    role: Annotated[str, typer.Argument(help="admin, member or reader.")],
    as_json: JsonOpt = False,
) -> None:
    """Change a user's role in your organisation."""
    with connect() as client:
        role = checked_role(role)
        user = client.patch(f"/memberships/{find_user(client, username)['id']}", {"role": role})
    _said(user, as_json, f"is now {user['role']}")


def _remove(username: str, yes: bool, path: str, verb: str, question: str) -> None:
    with connect() as client:
        user = find_user(client, username)
        if not confirmed(question, f"{verb} {username}", yes):
            fail(EXIT_FAILED, f"user {username} not {verb}d")
        client.delete(path.format(id=user["id"]))
    out.print(f"user {user['id']} {username} {verb}d")


@user_app.command("remove")
def user_remove(username: Annotated[str, typer.Argument(help="A user of your organisation.")],
                yes: YesOpt = False) -> None:
    """Take a user out of your organisation (not out of their others); their tokens end.
    Asks first; --yes does not."""
    _remove(username, yes, "/memberships/{id}", "remove", f"Remove {username} from this organisation?")


@user_app.command("delete")
def user_delete(username: Annotated[str, typer.Argument(help="A user whose only organisation is yours.")],
                yes: YesOpt = False) -> None:
    """Delete a user whose only organisation is yours. Asks first; --yes does not."""
    _remove(username, yes, "/users/{id}", "delete", f"Delete user {username}?")
