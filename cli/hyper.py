"""``cloudland hyper``: the hypervisors (operator admins): list, show, settings, drain and removal.

Exit codes are those of every REST command (common.py): 0 done, 2 a refusal the API
explains (an unknown id, VMs still on a host to remove), 3 no API, 4 not an operator admin.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.text import Text

from cloudland_cli.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    confirmed,
    connect,
    fail,
    out,
    print_json,
    print_page,
    print_record,
    print_table,
    styled,
)

hyper_app = typer.Typer(no_args_is_help=True)  # help: main.COMMANDS

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
HyperId = Annotated[int, typer.Argument(min=0, help="Hypervisor id (the tree's).")]


def state_cell(hyper: dict[str, Any]) -> Text:
    """up/down/gone/removed in its colour, and a marker while the host drains."""
    cell = styled(hyper["state"])
    return cell.append(" draining", style="yellow") if hyper.get("draining") else cell


@hyper_app.command("list")
def hyper_list(
    every: Annotated[bool, typer.Option("--all", help="Also removed hypervisors.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Every hypervisor with its state (up, down, gone; removed with --all) and what instances claim on it."""
    with connect() as client:
        params = {"include_removed": "true"} if every else {}
        hypers = list(client.iter_after("/hypervisors", **params))
    if as_json:
        print_page(hypers)
        return
    print_table(
        ("id", "hostname", "state", "enabled", "vcpus claimed/capacity", "memory MiB claimed/capacity", "domains"),
        [(h["id"], h["hostname"], state_cell(h), "yes" if h["enabled"] else "no",
          f"{h['vcpus_claimed']}/{h['vcpus_capacity']}", f"{h['memory_claimed_mib']}/{h['memory_capacity_mib']}",
          f"{h['running_domains']}/{h['domains']}") for h in hypers],
    )


@hyper_app.command("show")
def hyper_show(hypervisor: HyperId, as_json: JsonOpt = False) -> None:
    """One hypervisor (a removed one too)."""
    with connect() as client:
        hyper = client.get(f"/hypervisors/{hypervisor}")
    print_json(hyper) if as_json else print_record(hyper)


def _patch_hyper(hypervisor: int, body: dict[str, Any], as_json: bool) -> None:
    with connect() as client:
        hyper = client.patch(f"/hypervisors/{hypervisor}", body)
    if as_json:
        print_json(hyper)
    else:
        out.print(f"hypervisor {hyper['id']} {hyper['hostname']}: enabled={hyper['enabled']} "
                  f"cpu_ratio={hyper['cpu_ratio']} memory_ratio={hyper['memory_ratio']}")


@hyper_app.command("enable")
def hyper_enable(hypervisor: HyperId, as_json: JsonOpt = False) -> None:
    """Let the scheduler place new VMs on a hypervisor (a drain stays: see undrain)."""
    _patch_hyper(hypervisor, {"enabled": True}, as_json)


@hyper_app.command("disable")
def hyper_disable(hypervisor: HyperId, as_json: JsonOpt = False) -> None:
    """Place no new VMs on a hypervisor (its VMs keep running)."""
    _patch_hyper(hypervisor, {"enabled": False}, as_json)


@hyper_app.command("set")
def hyper_set(
    hypervisor: HyperId,
    cpu_ratio: Annotated[float | None, typer.Option(help="vCPU overcommit ratio.")] = None,
    memory_ratio: Annotated[float | None, typer.Option(help="Memory overcommit ratio.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a hypervisor's overcommit ratios."""
    body = {k: v for k, v in (("cpu_ratio", cpu_ratio), ("memory_ratio", memory_ratio)) if v is not None}
    if not body:
        fail(EXIT_USAGE, "nothing to set: give --cpu-ratio and/or --memory-ratio")
    _patch_hyper(hypervisor, body, as_json)


def vms_remain(names: list[str]) -> str:
    """``3 VMs remain: a, b, c``, ``1 VM remains: a`` or ``no VMs remain``."""
    if not names:
        return "no VMs remain"
    return f"{len(names)} VM remains: {names[0]}" if len(names) == 1 else \
        f"{len(names)} VMs remain: {', '.join(names)}"


@hyper_app.command("drain")
def hyper_drain(hypervisor: HyperId, as_json: JsonOpt = False) -> None:
    """Place no new VMs on a hypervisor; name the VMs that remain on it.

    Nothing is moved yet: move or delete them yourself. Draining again is harmless; undrain ends it.
    """
    with connect() as client:
        drained = client.post(f"/hypervisors/{hypervisor}/drain")
    if as_json:
        print_json(drained)
        return
    out.print(f"hypervisor {hypervisor} drained: {vms_remain([vm['name'] for vm in drained['remaining']])}")


@hyper_app.command("undrain")
def hyper_undrain(hypervisor: HyperId, as_json: JsonOpt = False) -> None:
    """Let the scheduler place new VMs on a drained hypervisor again."""
    with connect() as client:
        hyper = client.post(f"/hypervisors/{hypervisor}/undrain")
    if as_json:
        print_json(hyper)
        return
    closed = [why for why, holds in ((f"it is {hyper['state']}", hyper["state"] != "up"),
                                     ("it is disabled (hyper enable)", not hyper["enabled"])) if holds]
    out.print(f"hypervisor {hypervisor} undrained" + (f", but takes no new VMs: {' and '.join(closed)}"
                                                      if closed else ": it takes new VMs again"))


@hyper_app.command("remove")
def hyper_remove(
    hypervisor: HyperId,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Remove without asking.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Remove a hypervisor that no VM remains on; it is never placed on again.

    Drain it and delete its VMs first. It leaves `hyper list` (`--all` shows it). Asks first;
    --yes does not, and is needed when stdin is not a terminal.
    """
    with connect() as client:
        hyper = client.get(f"/hypervisors/{hypervisor}")
        question = (f"Remove hypervisor {hypervisor} ({hyper['hostname']}, {hyper['state']})? "
                    "It is never placed on again")
        if hyper["state"] != "removed" and not confirmed(question, f"remove hypervisor {hypervisor}", yes):
            fail(EXIT_FAILED, f"hypervisor {hypervisor} not removed")
        removed = client.delete(f"/hypervisors/{hypervisor}")
    if as_json:
        print_json(removed)
    else:
        out.print(f"hypervisor {hypervisor} ({removed['hostname']}) removed")
