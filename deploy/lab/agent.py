"""The lab's launch agent, and what it needs to find and enter a lab host.

MPI launchers reach other hosts by running ``AGENT [ssh options] HOST WORD...``. ``ssh_main``
plays that part for lab hosts: it skips the ssh options, maps HOST (a lab host name or its
underlay address) to the host and runs ``$SHELL -c "WORD..."`` inside it (the words joined with
spaces, as ssh does), with stdin, stdout, stderr and the exit code passed through.

This module uses the standard library only and no other module of the package, so that
``lab-ssh`` can run it with any ``python3`` (launchers call it inside lab hosts, outside any
venv) and start quickly.

Entering a host means entering three namespaces: its network namespace (``/run/netns/<netns>``)
and its UTS and mount namespaces, which the lab keeps alive as bind mounts in ``<lab>/ns``.
Those bind mounts only exist in the mount namespace the lab was built from (the "root" one):
a host's mount namespace is a copy made before them, and the kernel never copies a mount
namespace file anyway. A caller inside a host (a launcher on the controller) therefore first
steps back into the root mount namespace through ``/proc/<pid>/ns/mnt`` of a process living
there; the pid namespace is shared, so such a process is always visible.
"""

from __future__ import annotations

import ctypes
import getopt
import json
import os
import pwd
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

# Every lab keeps its state in STATE_ROOT/<prefix>; hosts see their own lab's directory at
# the same path (the lab binds it into the host's private /run).
STATE_ROOT = Path("/run/cloudland-lab")
STATE_FILE = "state.json"
NETNS_DIR = Path("/run/netns")
ENV_LAB_DIR = "CLOUDLAND_LAB_DIR"
CLONE_NEWNS = 0x00020000
MNT_DETACH = 2
# getopt spec of OpenSSH's client: the letters followed by ':' take an argument.
SSH_OPTIONS = "46AaCfGgKkMNnqsTtVvXxYyB:b:c:D:E:e:F:I:i:J:L:l:m:O:o:p:Q:R:S:W:w:"
# What sshd gives a session: a fresh environment, plus the locale the client sends (Debian's
# ssh_config has SendEnv LANG LC_*). Launchers must not rely on anything else reaching a host.
SSH_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# Names: a lab owns every network namespace called "<prefix>-*" (prefixes have no "-").
# Host names never are "sw" or "br" (lab.validate_host), so these cannot collide with a host.
SWITCH = "sw"
BRIDGE = "br"

NsId = tuple[int, int]
State = dict[str, Any]


class LabError(RuntimeError):
    """A lab operation failed; the message names the lab, host and namespace involved."""


def ns_id(path: str | Path) -> NsId:
    """The (device, inode) pair identifying the namespace behind a ns file or /proc link."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino)


def netns_name(prefix: str, host: str) -> str:
    """The network namespace of a host (or of the switch, host=SWITCH)."""
    return f"{prefix}-{host}"


def machine_link(prefix: str) -> str:
    """This machine's own cable to the lab's switch, in its root namespace (Lab.attach_machine)."""
    return f"{prefix}-mach"


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def setns(fd: int, nstype: int, what: str) -> None:
    """setns(2); Python 3.11 has no os.setns."""
    _check(_libc().setns(fd, nstype), f"setns {what}")


def mount(source: str, target: str | Path, fstype: str | None, flags: int) -> None:
    """mount(2) without data, for binds and propagation changes."""
    _check(_libc().mount(os.fsencode(source), os.fsencode(str(target)), fstype and os.fsencode(fstype),
                         ctypes.c_ulong(flags), None), f"mount {source} on {target}")


def umount(target: str | Path) -> None:
    """Detach a mount (MNT_DETACH: busy mounts go too, like ``umount -l``)."""
    _check(_libc().umount2(os.fsencode(str(target)), MNT_DETACH), f"umount {target}")


def load_state(lab_dir: Path) -> State:
    """The lab's state file: its prefix, subnet, switch and hosts (see lab.Lab)."""
    try:
        return json.loads((lab_dir / STATE_FILE).read_text())  # type: ignore[no-any-return]
    except FileNotFoundError:
        raise LabError(f"no lab at {lab_dir} (no {STATE_FILE}); is it up?") from None
    except (OSError, ValueError) as error:
        raise LabError(f"cannot read {lab_dir / STATE_FILE}: {error}") from None


def save_state(lab_dir: Path, state: State) -> None:
    """Write the state file atomically (hosts see it through a bind of the directory)."""
    tmp = lab_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1))  # insertion order: hosts in creation order
    tmp.replace(lab_dir / STATE_FILE)


def own_host(state: State) -> str | None:
    """The lab host this process runs in, or None (the machine itself)."""
    mine = list(ns_id("/proc/self/ns/net"))
    return next((name for name, h in state["hosts"].items() if h.get("ns", {}).get("net") == mine), None)


def find_lab_dir(environ: Mapping[str, str] = os.environ) -> Path:
    """The lab a caller means: ``$CLOUDLAND_LAB_DIR``, else the lab of the host it runs in,
    else the only lab up on this machine."""
    if environ.get(ENV_LAB_DIR):
        return Path(environ[ENV_LAB_DIR])
    labs = sorted(p.parent for p in STATE_ROOT.glob(f"*/{STATE_FILE}"))
    if len(labs) == 1:
        return labs[0]
    for lab in labs:
        try:
            if own_host(load_state(lab)):
                return lab
        except LabError:
            continue
    if not labs:
        raise LabError(f"no lab is up (nothing in {STATE_ROOT}); set {ENV_LAB_DIR}")
    raise LabError(f"several labs are up ({', '.join(str(p) for p in labs)}): set {ENV_LAB_DIR}")


def resolve(state: State, target: str) -> str:
    """A host name of the lab from a name or an underlay address."""
    hosts: dict[str, Any] = state["hosts"]
    if target in hosts:
        return target
    for name, host in hosts.items():
        if host["address"] == target:
            return name
    raise LabError(f"{target!r} is not a host of lab {state['prefix']!r} (hosts: {', '.join(hosts) or 'none'})")


def enter_root_mount_ns(state: State) -> None:
    """Step into the mount namespace the lab was built from, if not there yet.

    Only the root mount namespace holds the hosts' namespace files. The process must be
    single-threaded (a kernel rule for mount namespaces): call this before starting threads.
    """
    root = tuple(state["root_mnt"])
    if ns_id("/proc/self/ns/mnt") == root:
        return
    # The lab's creator first (it may still be there), then any process: all that matters is
    # that it lives in that namespace, and it cannot vanish once its ns file is open.
    candidates = [str(state.get("creator_pid", 1))] + [p for p in os.listdir("/proc") if p.isdigit()]
    for pid in candidates:
        try:
            fd = os.open(f"/proc/{pid}/ns/mnt", os.O_RDONLY)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) == root:
                setns(fd, CLONE_NEWNS, f"root mount namespace of lab {state['prefix']!r} (via pid {pid})")
                os.chdir("/")
                return
        finally:
            os.close(fd)
    raise LabError(f"no process left in the root mount namespace of lab {state['prefix']!r} {root}")


def nsenter_argv(state: State, host: str, wd: str | None = None) -> list[str]:
    """The command prefix that runs a program inside ``host``: its network, UTS and mount
    namespaces, in working directory ``wd`` of the host (default /)."""
    h = state["hosts"][host]
    argv = [shutil.which("nsenter") or "/usr/bin/nsenter", f"--net={NETNS_DIR / h['netns']}", f"--uts={h['uts']}",
            f"--mount={h['mnt']}", "--"]
    # Not nsenter --wd: it opens the directory before entering, so --wd=/tmp would be the
    # machine's /tmp. env -C changes directory inside the host, then execs (same pid).
    return argv + (["/usr/bin/env", "-C", wd] if wd else [])


def ssh_environment(user: pwd.struct_passwd, environ: Mapping[str, str]) -> dict[str, str]:
    """The environment sshd gives a session (see SSH_PATH)."""
    env = {"HOME": user.pw_dir, "USER": user.pw_name, "LOGNAME": user.pw_name,
           "SHELL": user.pw_shell or "/bin/sh", "PATH": SSH_PATH}
    env.update({k: v for k, v in environ.items() if k == "LANG" or k.startswith("LC_")})
    return env


def ssh_main(argv: list[str]) -> NoReturn:
    """``lab-ssh [ssh options] [user@]HOST [WORD...]``: run WORDs in HOST as ssh would.

    Exits 255 as ssh does when it cannot reach the host: an unknown host, or a cut link
    (the target's or the caller's). Without WORDs, starts a login shell.
    """
    try:
        opts, rest = getopt.getopt(argv, SSH_OPTIONS)
        if not rest:
            raise getopt.GetoptError("no host given")
    except getopt.GetoptError as error:
        print(f"lab-ssh: {error}\nusage: lab-ssh [ssh options] [user@]HOST [command ...]", file=sys.stderr)
        sys.exit(255)
    target, words = rest[0].rpartition("@")[2], rest[1:]
    try:
        state = load_state(find_lab_dir())
        host = resolve(state, target)
        caller = own_host(state)
        for end in (host, caller):
            if end is not None and state["hosts"][end].get("cut"):
                raise LabError(f"connect to host {target} port 22: Network is unreachable "
                               f"(lab {state['prefix']!r}: {end} is cut)")
        enter_root_mount_ns(state)
        user = pwd.getpwuid(os.getuid())
        shell = user.pw_shell or "/bin/sh"
        if ("-n", "") in opts:  # ssh -n: stdin from /dev/null
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
        command = [shell, "-c", " ".join(words)] if words else [shell, "-l"]
        argv = nsenter_argv(state, host, wd=user.pw_dir) + command
        os.execve(argv[0], argv, ssh_environment(user, os.environ))
    except (LabError, OSError) as error:
        print(f"lab-ssh: {error}", file=sys.stderr)
        sys.exit(255)


if __name__ == "__main__":
    ssh_main(sys.argv[1:])
