"""The ``cloudland`` console script: every command group in one Typer app, loaded on first use.

``tree`` (tree.py) and ``cluster`` (cluster.py) talk to the tree's root over gRPC; ``up``
(up.py) starts the tree and the REST API together; the commands that talk to the API
(configure, login, flavor, image, key, job) are in cloud.py, vm.py and hyper.py, tenants and your
own account (org, user, whoami, passwd, logout) in tenants.py, tenant networks (vpc, subnet,
port) in network.py, routers, external networks and floating IPs in routers.py, with the exit codes of common.py.

A batch CLI runs in loops, so it must start fast (issue 16: ≤ 0.3 s). ``COMMANDS`` names each
command's module and its one-line help, and a module is imported only when its command runs:
``cloudland --help`` imports none of them, and ``cloudland vm list`` neither gRPC nor protobuf
(tests/unit/test_cli_startup.py). Usage errors are one line, ``cloudland: ...``, exit 2.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import Annotated, Any, NamedTuple

import typer
from typer import _click as click
from typer.core import TyperGroup
from typer.main import TyperInfo, get_command_from_info, get_group_from_info

from cloudland_cli import settings


class Lazy(NamedTuple):
    """A command not yet imported: ``module:attribute`` (a Typer app or a function) and its help line."""

    target: str
    help: str


COMMANDS: dict[str, Lazy] = {
    "tree": Lazy("cloudland_cli.tree:tree_app", "Start the message tree and send commands through it."),
    "cluster": Lazy("cloudland_cli.cluster:cluster_app", "The hosts of a multi-host tree: list, join, remove."),
    "configure": Lazy("cloudland_cli.cloud:configure",
                      "Set a profile's API endpoint (and root address); without options, show it."),
    "login": Lazy("cloudland_cli.cloud:login", "Log in and store the bearer token in the profile (mode 0600)."),
    "logout": Lazy("cloudland_cli.tenants:logout", "End the stored token at the API and forget it in the profile."),
    "whoami": Lazy("cloudland_cli.tenants:whoami",
                   "Who the stored token speaks for: user, organisation, role, and until when."),
    "passwd": Lazy("cloudland_cli.tenants:passwd",
                   "Change your password; every token you hold ends, and the profile gets a new one."),
    "org": Lazy("cloudland_cli.tenants:org_app", "Organisations (operators): list, create, delete."),
    "user": Lazy("cloudland_cli.tenants:user_app",
                 "Users of your organisation (its admins): list, create, add, role, remove, delete."),
    "project": Lazy("cloudland_cli.projects:project_app",
                    "Projects of your organisation: list, create, show, delete, use, grant, revoke."),
    "group": Lazy("cloudland_cli.groups:group_app",
                  "Groups of your organisation's users and their roles: list, create, show, delete, add-user, "
                  "remove-user, grant, revoke."),
    "quota": Lazy("cloudland_cli.projects:quota_app",
                  "Quotas: your project's usage and limits (show); operators set limits (set)."),
    "directory": Lazy("cloudland_cli.identity:directory_app",
                      ("How an organisation's people sign in (operators): its LDAP server or OpenID provider; "
                       "its groups onto local groups (its admins: directory group).")),
    "credential": Lazy("cloudland_cli.identity:credential_app",
                       "Application credentials for scripts: create, list, revoke."),
    "audit": Lazy("cloudland_cli.identity:audit",
                  "The audit trail, newest first: your organisation's (admins), everyone's (operators)."),
    "flavor": Lazy("cloudland_cli.cloud:flavor_app", "VM sizes."),
    "image": Lazy("cloudland_cli.cloud:image_app", "Disk images."),
    "key": Lazy("cloudland_cli.cloud:key_app", "SSH public keys."),
    "hyper": Lazy("cloudland_cli.hyper:hyper_app", "Hypervisors (admin): list, show, enable, disable, drain, remove."),
    "vm": Lazy("cloudland_cli.vm:vm_app", "Virtual machines."),
    "vpc": Lazy("cloudland_cli.network:vpc_app", "VPCs: a tenant's private routing domains."),
    "subnet": Lazy("cloudland_cli.network:subnet_app",
                   "Subnets of VPCs: CIDR, gateway, pools, DNS, DHCP; one VNI each."),
    "port": Lazy("cloudland_cli.network:port_app", "Ports: a NIC's MAC and addresses on a subnet."),
    "router": Lazy("cloudland_cli.routers:router_app",
                   "Routers: connect a VPC's subnets, and reach the outside by SNAT."),
    "external-network": Lazy("cloudland_cli.routers:external_app",
                             "External networks (operators create): public segments."),
    "floating-ip": Lazy("cloudland_cli.routers:fip_app", "Floating IPs: public addresses of VMs' ports."),
    "secgroup": Lazy("cloudland_cli.secgroup:secgroup_app", "Security groups: firewall rules that follow ports."),
    "volume": Lazy("cloudland_cli.volume:volume_app", "Volumes: block storage that outlives VMs."),
    "job": Lazy("cloudland_cli.cloud:job_app", "Jobs: one action on one resource (an instance, an image) each."),
    "up": Lazy("cloudland_cli.up:up", "Start the cloud: the message tree, then the REST API on it; run until Ctrl-C."),
    "down": Lazy("cloudland_cli.hostnet:down",
                 "Remove what a killed all-in-one cloud left on this machine: its networks' namespaces and links."),
}


def load(name: str, entry: Lazy) -> click.Command:
    """Import ``entry``'s module and build its Click command (plain help: no Rich, no markup)."""
    module, _, attribute = entry.target.partition(":")
    target = getattr(importlib.import_module(module), attribute)
    if isinstance(target, typer.Typer):
        return get_group_from_info(TyperInfo(target, name=name, help=entry.help), pretty_exceptions_short=True,
                                   suggest_commands=True, rich_markup_mode=None)
    holder = typer.Typer()
    holder.command(name)(target)
    return get_command_from_info(holder.registered_commands[0], pretty_exceptions_short=True,
                                 rich_markup_mode=None)


class LazyGroup(TyperGroup):
    """The top-level group: commands from ``COMMANDS``, imported when first asked for; errors in one line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return [*self.commands, *(name for name in COMMANDS if name not in self.commands)]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            self.commands[cmd_name] = load(cmd_name, COMMANDS[cmd_name])
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # The help lines from COMMANDS: listing them must not import every module.
        rows = [(name, COMMANDS[name].help if name in COMMANDS else self.commands[name].get_short_help_str())
                for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def main(self, args: Sequence[str] | None = None, prog_name: str | None = None,
             complete_var: str | None = None, standalone_mode: bool = True, **extra: Any) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.exceptions.NoArgsIsHelpError as exc:
            click.echo(exc.ctx.get_help() if exc.ctx else exc.format_message())
            code = exc.exit_code
        except click.ClickException as exc:
            # One line, as README promises, naming where more help is (issue 16: not Rich's box).
            where = f" (see `{exc.ctx.command_path} --help`)" if getattr(exc, "ctx", None) else ""
            click.echo(f"cloudland: {exc.format_message()}{where}", err=True)
            code = exc.exit_code
        except typer.Abort:
            click.echo("cloudland: aborted", err=True)
            code = 1
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(cls=LazyGroup, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None)


@app.callback()
def cloudland(
    profile: Annotated[str | None, typer.Option(
        envvar="CLOUDLAND_PROFILE", help="The profile (endpoint and login) to use [default: the current one].")]
    = None,
    project: Annotated[str | None, typer.Option(
        envvar="CLOUDLAND_PROJECT", help="The project to act in [default: the profile's, else the default one].")]
    = None,
) -> None:
    """CloudLand, a lightweight IaaS over an MPI message tree of hypervisor agents."""
    settings.chosen_profile = profile
    settings.chosen_project = project


def main() -> None:
    """Entry point of the ``cloudland`` console script (and of ``python -m cloudland_cli``)."""
    app(prog_name="cloudland")
