"""``python -m cloudland_lab up|down|status|exec|ssh|cut|restore|crash|add|remove``.

``make lab HOSTS=4`` runs ``up --hosts 4`` (a controller ``ctl`` and ``h1``..``h4``), ``make
lab-down`` runs ``down``. Every command but ``ssh`` takes ``--prefix`` (default ``lab``).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from . import HYDRA_FLAGS, PRRTE_FLAGS
from .agent import LabError, ssh_main
from .cleanup import sweep
from .lab import Lab


def _shown(path: str | Path) -> str:
    """A path as the user would type it from here: relative when below the current directory."""
    relative = os.path.relpath(path)
    return str(path) if relative.startswith("..") else relative


def _up(args: argparse.Namespace) -> None:
    workers = args.names or [f"h{i}" for i in range(1, args.hosts + 1)]
    lab = Lab(args.prefix, args.subnet).up([args.controller, *workers])
    hostfile = lab.hostfile(workers)
    python, me = _shown(sys.executable), f"-m cloudland_lab --prefix {args.prefix}"
    print(f"lab {args.prefix!r} is up on {lab.subnet}: "
          + ", ".join(f"{name} {lab.address(name)}" for name in lab.hosts))
    print(f"  enter a host:  {python} {me} exec {workers[0] if workers else args.controller} -- bash")
    print(f"  hostfile:      {hostfile} ({', '.join(workers)})")
    print(f"  launch agent:  {_shown(lab.ssh)} (in place of ssh; run launchers from {args.controller})")
    print(f"  MPICH hydra:   {python} {me} exec {args.controller} -- $MPICH/mpiexec {' '.join(HYDRA_FLAGS)} "
          f"{lab.ssh} -f {hostfile} -n {len(workers)} -ppn 1 hostname")
    print("                 ($MPICH: bin of a venv with the mpich wheel, outside /tmp, which hosts do not share)")
    print(f"  Open MPI:      {python} {me} exec {args.controller} -- {_shown(Path(sys.executable).parent)}/mpirun "
          f"{' '.join(PRRTE_FLAGS)} {lab.ssh} --hostfile {hostfile} --map-by node --bind-to none -n {len(workers)} "
          "hostname")
    print(f"  failures:      {python} {me} cut|restore|crash HOST")
    print(f"  remove it:     make lab-down (or {python} {me} down)")


def _down(args: argparse.Namespace) -> None:
    removed = sweep(args.prefix)
    print(f"lab {args.prefix!r}: " + (f"removed {len(removed)} things" if removed else "nothing to remove"))


def _status(args: argparse.Namespace) -> None:
    lab = Lab.attach(args.prefix)
    print(f"lab {args.prefix!r} on {lab.subnet}, directory {lab.lab_dir}")
    for name in lab.hosts:
        state = "CUT" if lab.is_cut(name) else "up"
        print(f"  {name:<12} {lab.address(name):<16} {state:<4} {len(lab.pids(name))} processes")


def _exec(args: argparse.Namespace) -> None:
    words = args.command[1:] if args.command[:1] == ["--"] else args.command
    argv = Lab.attach(args.prefix).command(args.host, words or [os.environ.get("SHELL", "/bin/sh")])
    os.execv(argv[0], argv)


def _host_action(args: argparse.Namespace) -> None:
    lab = Lab.attach(args.prefix)
    if args.action == "crash":
        lab.crash(args.host, wipe=args.wipe)
    elif args.action == "add":
        print(f"{args.host} {lab.add_host(args.host)}")
    elif args.action == "remove":
        lab.remove_host(args.host)
    else:
        getattr(lab, args.action)(args.host)


def parser() -> argparse.ArgumentParser:
    """The command line (``ssh`` is handled before it: its options are ssh's)."""
    top = argparse.ArgumentParser(prog="python -m cloudland_lab",
                                  description="Emulated hosts on this machine (README: The lab).")
    top.add_argument("--prefix", default="lab", help="the lab's name, prefix of all its names (default: lab)")
    commands = top.add_subparsers(dest="cmd", required=True)
    up = commands.add_parser("up", help="bring up a controller and worker hosts")
    up.add_argument("--hosts", type=int, default=4, help="workers h1..hN (default 4)")
    up.add_argument("--subnet", default="10.77.0.0/24", help="underlay subnet (default 10.77.0.0/24)")
    up.add_argument("--controller", default="ctl", help="controller host name (default ctl)")
    up.add_argument("names", nargs="*", help="worker names instead of h1..hN")
    up.set_defaults(func=_up)
    commands.add_parser("down", help="remove the lab and anything it left").set_defaults(func=_down)
    commands.add_parser("status", help="hosts, addresses, links, process counts").set_defaults(func=_status)
    run = commands.add_parser("exec", help="run a command (default: $SHELL) inside a host")
    run.add_argument("host")
    run.add_argument("command", nargs=argparse.REMAINDER)
    run.set_defaults(func=_exec)
    commands.add_parser("ssh", help="the launch agent: [ssh options] HOST [WORD...]")
    for action, text in (("cut", "take the host's underlay link down"), ("restore", "bring it back up"),
                         ("crash", "SIGKILL every process of the host"), ("add", "add a host live"),
                         ("remove", "remove a host live")):
        sub = commands.add_parser(action, help=text)
        sub.add_argument("host")
        if action == "crash":
            sub.add_argument("--wipe", action="store_true", help="also empty /tmp, /dev/shm, /run (a reboot)")
        sub.set_defaults(func=_host_action, action=action)
    return top


def main(argv: list[str] | None = None) -> None:
    """Entry point; errors print one line naming what failed and exit 1."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["ssh"]:
        ssh_main(argv[1:])
    args = parser().parse_args(argv)
    try:
        args.func(args)
    except LabError as error:
        sys.exit(f"cloudland_lab {args.cmd}: {error}")

