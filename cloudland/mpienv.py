"""The MPI environment a rank needs, applied before mpi4py initialises MPI, and how a rank is started.

CloudLand rides MPICH (the PyPI wheel), each rank a job of its own under a host-local
``mpiexec -n 1``, linked to its parent by ``MPI_Comm_connect``/``MPI_Comm_accept``
(proto/README.md §10). Facts behind each choice: shared/reference/mpi-across-hosts.md.
"""

from __future__ import annotations

import fcntl
import ipaddress
import os
import socket
import struct
import sys
from pathlib import Path

SIOCGIFADDR = 0x8915  # linux/sockios.h: an interface's IPv4 address

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


def interface_of(address: str) -> str | None:
    """The name of the network interface that holds ``address`` (an IP or a host name), or None.

    libfabric's sockets provider offers MPI every address of every interface that is up, and
    MPICH takes one as its NIC: on a hypervisor host that can be a VM's tap (``vnet*``), which
    fails MPI_Init ("ep_enable failed (default nic=vnet100: Cannot assign requested address)",
    seen here while a QEMU guest's tap came and went). A rank pins the interface its peers reach
    it on (``FI_SOCKETS_IFACE``).
    """
    try:
        ip = ipaddress.ip_address(socket.gethostbyname(address) if not _is_ip(address) else address)
    except (OSError, ValueError):
        return None
    if ip.is_unspecified:
        return None
    if ip.version == 6:
        wanted = ip.packed.hex()
        try:
            for line in Path("/proc/net/if_inet6").read_text().splitlines():
                fields = line.split()
                if fields and fields[0] == wanted:
                    return fields[-1]
        except OSError:
            return None
        return None
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _, name in socket.if_nameindex():
            request = struct.pack("256s", name.encode()[:15])
            try:
                answer = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, request)
            except OSError:
                continue  # no IPv4 address on it
            if socket.inet_ntoa(answer[20:24]) == str(ip):
                return name
    finally:
        probe.close()
    return None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def import_mpi(address: str | None = None):  # type: ignore[no-untyped-def]
    """Apply the environment, then import and initialise MPI (funneled: one MPI thread).

    ``address``: where this rank's peers reach it; MPI is kept to that address's interface
    (``interface_of``), unless the operator set ``FI_SOCKETS_IFACE`` already.
    """
    apply()
    iface = interface_of(address) if address else None
    if iface is not None and os.environ.get("FI_PROVIDER", "sockets") == "sockets":
        os.environ.setdefault("FI_SOCKETS_IFACE", iface)
    import mpi4py

    mpi4py.rc.thread_level = "funneled"
    from mpi4py import MPI

    unlink_init_shm()
    return MPI


def unlink_init_shm(maps: Path = Path("/proc/self/maps")) -> list[str]:
    """Unlink the shared-memory file MPICH's MPI_Init maps (``/dev/shm/mpich_shm_*``, 1 MiB).

    MPICH removes it only in MPI_Finalize, and a rank never finalises (it leaves with
    ``os._exit``, or is killed): each rank that ever ran left one behind, in RAM. Measured here:
    20,147 files, 20 GiB of /dev/shm after a day of test runs, and the suite OOM-killed. Every rank
    is a job of one process, so nothing else attaches to the file: our mapping stays valid and
    the memory goes with the process. Returns the paths unlinked.
    """
    mapped = {line.split()[-1] for line in maps.read_text().splitlines() if line.strip()}
    paths = sorted(p for p in mapped if p.startswith("/dev/shm/mpich_shm_"))
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    return paths
