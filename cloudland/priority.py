"""The tree's processes run ahead of tenants' work on a busy host (issue 15: healing bounds that
hold under load; docs/architecture.md, "Healing under load").

A host's cores belong to its tenants: their VMs' vCPUs, and on a test machine whatever else
spins. At the default nice level the root, a host agent and its ranks get a fair share beside
them, no more, and the tree's promises are about time: a lost relay's subtree whole again
within 10 s, a dead root's tree within 10 s. A replaced rank must start a Python process
(0.4 s of CPU for a leaf's imports), link and say hello: beside the tests' CPU hog (load 40-56
on 2 cores) a crashed leaf was back 4.0 s and more after its crash at the default level, 1.0-1.9 s
at -10. So every process of the tree lowers its nice value to ``TreeSettings.tree_nice``
(``CLOUDLAND_TREE_NICE``, default -10: about nine times a default process's weight in Linux's
scheduler) when it starts, before it makes any thread or child, which inherit it: the host agent
(and through it its ranks and their mpiexec), and the root. The tree is idle most of the time
(its ranks poll with backoff sleeps), so what this takes from tenants is the CPU of healing and
of commands, when they happen. Work an operation starts for a tenant (qemu-img, dnsmasq)
inherits it too: it is that tenant's request being served.

Lowering a nice value needs CAP_SYS_NICE (root, as a hypervisor's agent runs); without it the
process stays where it is and says so once in its log. 0 leaves the processes at the default.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def raise_priority(nice: int, what: str, pid: int = 0) -> int:
    """Lower the nice value of this thread (and so of the threads and children it makes from now
    on), and of its session's autogroup, to ``nice`` where they are higher; ``pid``: another
    process's autogroup instead (a child that is a session of its own). The nice value that
    holds afterwards."""
    current = os.getpriority(os.PRIO_PROCESS, pid)
    if nice < current:
        try:
            os.setpriority(os.PRIO_PROCESS, pid, nice)
            current = nice
        except PermissionError:
            log.warning("event=priority_kept what=%s nice=%d wanted=%d reason=no CAP_SYS_NICE", what, current, nice)
    _autogroup(nice, what, pid)
    return current


def _autogroup(nice: int, what: str, pid: int) -> None:
    """With autogroup on (``kernel.sched_autogroup_enabled``), the scheduler shares the cores
    between sessions first, each at its autogroup's nice, and a process's own nice counts only
    within its session: every rank is a session of its own (hydra's proxy makes it one), as is
    each spinning process of a busy machine, so its autogroup must say it too."""
    path = f"/proc/{pid or 'self'}/autogroup"
    try:
        with open(path, encoding="ascii") as f:
            held = int(f.read().split("nice")[1])  # "/autogroup-123 nice 0"
        if nice < held:
            with open(path, "w", encoding="ascii") as f:
                f.write(str(nice))
    except FileNotFoundError:
        return  # no autogroup in this kernel: the process's nice is what counts
    except (PermissionError, OSError, IndexError, ValueError) as exc:
        log.warning("event=priority_kept what=%s autogroup=%s wanted=%d reason=%s", what, path, nice, exc)
