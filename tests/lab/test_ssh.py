"""lab-ssh plays ssh for MPI launchers; MPICH's hydra and Open MPI launch across lab hosts with it."""

from __future__ import annotations

import os
import subprocess

from cloudland_lab import HYDRA_FLAGS

# Every rank learns every rank's hostname, and rank 0 shows what each one learnt (one writer:
# launchers would interleave the ranks' output).
GATHER = ("from mpi4py import MPI; import socket; world = MPI.COMM_WORLD; "
          "seen = world.gather(world.allgather(socket.gethostname())); world.rank or print(seen)")


def ssh(lab, *words, env=None, **kwargs):
    """lab-ssh from the machine itself (several labs may be up: say which)."""
    return subprocess.run([str(lab.ssh), *words], capture_output=True, text=True, timeout=30,
                          env={**os.environ, **lab.env(), **(env or {})}, **kwargs)


def test_runs_commands_as_ssh_would_by_name_and_address(lab_factory):
    lab = lab_factory(["h1", "h2"])
    assert ssh(lab, "h1", "hostname").stdout == "h1\n"
    assert ssh(lab, lab.address("h2"), "hostname").stdout == "h2\n"
    # Launchers' ssh options are skipped, user@ is dropped.
    options = ["-x", "-q", "-o", "StrictHostKeyChecking=no", "-oBatchMode=yes", "-p", "2222", "-l", "root", "-T"]
    assert ssh(lab, *options, "root@h2", "hostname").stdout == "h2\n"
    # Words are joined with spaces and the remote shell parses them again, as with ssh.
    assert ssh(lab, "h1", "printf", "'%s|'", "'a  b'", "c").stdout == "a  b|c|"
    assert ssh(lab, "h1", "echo", "$(hostname)", ";", "exit", "7").returncode == 7
    assert ssh(lab, "h1", "cat; echo more >&2", input="through stdin\n").stdout == "through stdin\n"
    assert ssh(lab, "-n", "h1", "cat", input="not read\n").stdout == ""
    both = ssh(lab, "h1", "echo out; echo err >&2; exit 3")
    assert (both.stdout, both.stderr, both.returncode) == ("out\n", "err\n", 3)
    # A session's environment is sshd's, not the caller's; it starts in the home directory.
    seen = ssh(lab, "h1", 'echo "[$LAB_SECRET]" $PATH; pwd', env={"LAB_SECRET": "leak", "LANG": "C.UTF-8"})
    assert seen.stdout.split() == ["[]", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                                   os.path.expanduser("~")]
    assert ssh(lab, "h1", "echo $LANG").stdout == "C.UTF-8\n"  # SendEnv LANG LC_*, as Debian's ssh


def test_from_inside_a_host_without_being_told_the_lab(lab_factory):
    lab = lab_factory(["ctl", "h1", "h2"])
    env = {k: v for k, v in os.environ.items() if k != "CLOUDLAND_LAB_DIR"}
    for target, host in (("h2", "h2"), (lab.address("h1"), "h1"), ("ctl", "ctl")):
        done = lab.run("ctl", [str(lab.ssh), target, "hostname"], capture_output=True, text=True, env=env)
        assert (done.returncode, done.stdout) == (0, f"{host}\n")


def test_fails_like_ssh_when_the_host_cannot_be_reached(lab_factory):
    lab = lab_factory(["ctl", "h1"])
    unknown = ssh(lab, "h7", "true")
    assert unknown.returncode == 255 and "'h7' is not a host of lab" in unknown.stderr
    lab.cut("h1")
    cut = ssh(lab, "h1", "true")
    assert cut.returncode == 255 and "h1 is cut" in cut.stderr
    # A cut caller cannot reach anyone either.
    assert lab.run("h1", [str(lab.ssh), "ctl", "true"], capture_output=True).returncode == 255
    lab.restore("h1")
    assert ssh(lab, "h1", "true").returncode == 0
    nolab = ssh(lab, "h1", "true", env={"CLOUDLAND_LAB_DIR": str(lab.lab_dir) + "-none"})
    assert nolab.returncode == 255 and "no lab at" in nolab.stderr
    assert ssh(lab).returncode == 255  # no host at all


def test_hydra_launches_across_lab_hosts(lab_factory, mpich):
    lab = lab_factory(["ctl", "h1", "h2", "h3", "h4"])
    hostfile = lab.hostfile(["h1", "h2", "h3", "h4"])
    mpiexec = [str(mpich / "mpiexec"), *HYDRA_FLAGS, str(lab.ssh), "-f", str(hostfile)]
    # From the controller, as an operator would; lab-ssh finds the lab by itself.
    done = lab.run("ctl", [*mpiexec, "-n", "4", "-ppn", "1", "hostname"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.split()) == ["h1", "h2", "h3", "h4"]
    # Real MPI traffic between the hosts.
    done = lab.run("ctl", [*mpiexec, "-n", "4", "-ppn", "1", str(mpich / "python"), "-c", GATHER],
                   capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{[['h1', 'h2', 'h3', 'h4']] * 4}\n"

