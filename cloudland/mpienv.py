"""The MPI environment a rank needs, applied before mpi4py initialises MPI, and how a rank is started.

CloudLand rides MPICH (the PyPI wheel), each rank a job of its own under a host-local
``mpiexec -n 1``, linked to its parent by ``MPI_Comm_connect``/``MPI_Comm_accept``
(proto/README.md §10). Facts behind each choice: shared/reference/mpi-across-hosts.md.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

MPI_ENV = {
    # The wheel carries two network modules and picks UCX first, which takes emulated hosts
    # (namespaces of one machine) for one node and hangs connecting across them; libfabric
    # (ofi) links them. Its sockets provider is the only one measured here that reports a
    # dead peer instead of freezing the process (tcp froze, UCX crashed).
    "MPIR_CVAR_CH4_NETMOD": "ofi",
    "FI_PROVIDER": "sockets",
    # Its progress thread spins 10 ms after every wake-up before it sleeps in epoll again: with
    # ~100 ranks sharing 2 cores, every heartbeat cost a core 1 s in each second. 0: sleep at once.
    "FI_SOCKETS_PE_WAITTIME": "0",
}


def bindir() -> Path:
    return Path(sys.executable).parent


def apply(environ: os._Environ[str] | dict[str, str] = os.environ) -> None:
    """Set the MPI variables (without overriding the operator's) and put our venv on PATH.

    Hydra's ``mpiexec`` finds its proxy (``hydra_pmi_proxy``) on PATH.
    """
    for key, value in MPI_ENV.items():
        environ.setdefault(key, value)
    path = environ.get("PATH", "")
    if str(bindir()) not in path.split(os.pathsep):
        environ["PATH"] = str(bindir()) + os.pathsep + path


def rank_argv(argv: list[str]) -> list[str]:
    """``argv`` as its own MPI job on this host.

    Each rank runs under a host-local ``mpiexec -n 1``: MPICH singletons share one job name
    and cannot link to each other, separate jobs can (mpi-across-hosts.md). No launcher
    spans hosts, so no launcher's failure costs more than the rank it carries.
    """
    return [str(bindir() / "mpiexec"), "-n", "1", *argv]


def import_mpi():  # type: ignore[no-untyped-def]
    """Apply the environment, then import and initialise MPI (funneled: one MPI thread)."""
    apply()
    import mpi4py

    mpi4py.rc.thread_level = "funneled"
    from mpi4py import MPI

    return MPI
