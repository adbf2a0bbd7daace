"""Finding a lab's processes, killing them, and removing everything a lab leaves (``sweep``).

Everything here works from names and files alone (``/run/netns/<prefix>-*``, the lab
directory and its state file), not from a live ``Lab`` object, so it also cleans after a
half-built lab or a process that died without cleaning up.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from .agent import NETNS_DIR, STATE_ROOT, SWITCH, LabError, NsId, load_state, machine_link, netns_name, ns_id, umount

NS_KINDS = ("net", "uts", "mnt")


def pids_in(ids: set[NsId]) -> set[int]:
    """Every process in any of these namespaces (by its net, UTS or mount namespace)."""
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        for kind in NS_KINDS:
            try:
                if ns_id(f"/proc/{entry}/ns/{kind}") in ids:
                    found.add(int(entry))
                    break
            except OSError:
                break  # gone, or a zombie: it holds no namespace any more
    return found


def kill_all(ids: set[NsId], what: str, timeout: float = 5.0) -> None:
    """SIGKILL every process in these namespaces until none is left (killed parents may
    have forked meanwhile, and a killed process holds its namespaces until it has exited)."""
    deadline = time.monotonic() + timeout
    while pids := pids_in(ids):
        if time.monotonic() > deadline:
            raise LabError(f"{what}: processes {sorted(pids)} still alive {timeout:.0f} s after SIGKILL")
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.005)


def lab_netns(prefix: str) -> list[str]:
    """The network namespaces named for this lab, switch included."""
    try:
        return sorted(n for n in os.listdir(NETNS_DIR) if n.startswith(f"{prefix}-"))
    except FileNotFoundError:
        return []


def _unescape(field: str) -> str:
    # /proc/self/mountinfo writes space, tab, newline and backslash as octal escapes.
    for code in ("\\040", "\\011", "\\012", "\\134"):
        field = field.replace(code, chr(int(code[1:], 8)))
    return field


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` in this mount namespace, deepest first."""
    top = str(path)
    with open("/proc/self/mountinfo") as mountinfo:
        points = [_unescape(line.split()[4]) for line in mountinfo]
    inside = [p for p in points if p == top or p.startswith(top + "/")]
    return sorted(set(inside), key=len, reverse=True)


def lab_ns_ids(prefix: str, lab_dir: Path) -> set[NsId]:
    """The namespaces of a lab's hosts: from its netns files, its ns files, its state file."""
    files = [NETNS_DIR / n for n in lab_netns(prefix)]
    files += sorted((lab_dir / "ns").glob("*")) if (lab_dir / "ns").is_dir() else []
    ids: set[NsId] = set()
    for file in files:
        try:
            ids.add(ns_id(file))  # a file no longer mounted gives an id no process has
        except OSError:
            pass
    try:
        hosts = load_state(lab_dir)["hosts"].values()
    except LabError:
        hosts = []
    ids.update((dev, ino) for host in hosts for dev, ino in host.get("ns", {}).values())
    return ids


def leftovers(prefix: str, state_root: Path = STATE_ROOT) -> list[str]:
    """What of lab ``prefix`` exists on this machine: namespaces, mounts, its directory and
    processes. Empty when the lab is completely gone."""
    lab_dir = state_root / prefix
    found = [f"netns {n}" for n in lab_netns(prefix)]
    found += [f"mount {m}" for m in mounts_under(lab_dir)]
    found += [f"directory {lab_dir}"] if lab_dir.exists() else []
    found += [f"process {pid}" for pid in sorted(pids_in(lab_ns_ids(prefix, lab_dir)))]
    with IPRoute() as machine:
        found += [f"link {machine_link(prefix)}"] if machine.link_lookup(ifname=machine_link(prefix)) else []
    return found


def _unplug(prefix: str, switch: IPRoute | None) -> None:
    """Delete every link of the switch (each port takes its host's eth0 with it), so no
    interface outlives the lab even if something still holds a namespace."""
    own = switch is None
    try:
        switch = switch or IPRoute(netns=netns_name(prefix, SWITCH), flags=0)
    except (OSError, NetlinkError):
        return  # no switch namespace (half-built lab, or already gone)
    try:
        for link in switch.get_links():
            if link.get("ifname") != "lo":
                try:
                    switch.link("del", index=link["index"])
                except NetlinkError:
                    pass  # a port deleted with its peer meanwhile
    finally:
        if own:
            switch.close()


def sweep(prefix: str, state_root: Path = STATE_ROOT, switch: IPRoute | None = None) -> list[str]:
    """Remove everything of lab ``prefix``: kill its processes, delete its links, mounts,
    namespaces and directory. Returns what was there; raises LabError naming what is left.

    For a lab that is up (``Lab.down`` calls it) and for the leftovers of a crashed earlier
    run with the same prefix. Every ``/run/netns/<prefix>-*`` belongs to the lab.
    """
    lab_dir = state_root / prefix
    found = leftovers(prefix, state_root)
    kill_all(lab_ns_ids(prefix, lab_dir), f"lab {prefix!r}")
    if netns_name(prefix, SWITCH) in lab_netns(prefix):
        _unplug(prefix, switch)
    # Unmounting a host's mount namespace file frees that namespace (no process holds it now),
    # and with it the host's /tmp, /dev/shm and /run.
    for point in mounts_under(lab_dir):
        umount(point)
    shutil.rmtree(lab_dir, ignore_errors=True)
    for name in lab_netns(prefix):
        netns.remove(name)  # detach and unlink; a stale plain file is just unlinked
    with IPRoute() as machine:  # the machine's own cable (attach_machine), if the switch did not take it
        for index in machine.link_lookup(ifname=machine_link(prefix)):
            machine.link("del", index=index)
    left = leftovers(prefix, state_root)
    if left:
        raise LabError(f"sweep of lab {prefix!r} left: {', '.join(left)}")
    return found
