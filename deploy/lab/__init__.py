"""The lab: emulated hosts on one machine, for tests and for ``make lab``.

Each host is a network namespace on a shared underlay switch (a bridge in its own
namespace), with its own hostname, /tmp, /dev/shm, /run and an /etc/hosts naming every lab
host, reached through a launch agent (``lab-ssh``) that plays ssh for MPI launchers::

    from cloudland_lab import Lab
    with Lab(prefix="cl7", subnet="10.77.0.0/24") as lab:
        lab.up(["ctl", "h1", "h2"])            # ctl 10.77.0.1, h1 .2, h2 .3
        lab.run("h1", ["hostname"], capture_output=True, text=True).stdout   # "h1\\n"
        lab.cut("h2"); lab.restore("h2"); lab.crash("h2"); lab.add_host("h3")
    # leaving the block removes everything, also when the block raised

MPI launchers across lab hosts, run from the controller (flags below; tests/lab/test_ssh.py)::

    hosts = str(lab.hostfile(["h1", "h2"]))
    lab.run("ctl", [MPICH + "/mpiexec", *HYDRA_FLAGS, str(lab.ssh), "-f", hosts, "-n", "2", "-ppn", "1",
                    "hostname"])
    lab.run("ctl", [".venv/bin/mpirun", *PRRTE_FLAGS, str(lab.ssh), "--hostfile", hosts, "--map-by", "node",
                    "--bind-to", "none", "-n", "2", "hostname"])   # as root: add --allow-run-as-root

Measured (MPICH 5.0.2 wheel, Open MPI 5.0.x wheel): the flags above suffice; no -iface, -x PATH
or --prefix. Software must live outside /tmp (each host has its own, empty /tmp).
"""

from .agent import ENV_LAB_DIR, STATE_ROOT, LabError
from .cleanup import leftovers, sweep
from .lab import Lab

# What launchers need to use the lab, followed by the path of lab-ssh (``Lab.ssh``); run them
# inside a lab host (the machine itself is not on the underlay). Nothing else was needed:
# hydra's proxies reach back to the controller by its hostname, which every host's /etc/hosts
# resolves to its underlay address (``-iface eth0`` works too but is not needed).
HYDRA_FLAGS = ["-launcher", "ssh", "-launcher-exec"]
# Open MPI 5 (PRRTE): the setting's name matters, plm_rsh_agent is silently ignored
# (shared/reference/mpi-across-hosts.md). Add --bind-to none, or every host pins to core 0.
PRRTE_FLAGS = ["--prtemca", "plm_ssh_agent"]

__all__ = ["ENV_LAB_DIR", "HYDRA_FLAGS", "PRRTE_FLAGS", "STATE_ROOT", "Lab", "LabError", "leftovers", "sweep"]
