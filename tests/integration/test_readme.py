"""Issue 16, must show 5: the README's commands work as written, on a fresh clone and again after
the quick start has been run once in the same checkout.

Every line of README.md's ``sh`` blocks is either run by this module, literally (``bash -c LINE``),
or listed in ``EXCLUDED`` with the reason it cannot run here; ``test_every_readme_command_is_run_or_excluded``
fails when the README gains a command (or a block in another language) that is neither, and when
an entry here no longer matches the README.

Where they run: a copy of this checkout's tracked files (a fresh clone: no ``var/``, no generated
code), whose ``.venv`` is a symlink to the venv running the tests, inside a network and mount
namespace of the module's own. So the README's addresses hold as written (the API on
127.0.0.1:8080, the root on 127.0.0.1:50551, another cloud on 10.0.0.5) without touching a cloud
the machine runs or another test session; ``/tmp`` there is a directory of the module's, and
``HOME`` a fresh one (``~/.config/cloudland/cli.json``). Every process of the namespace is the
module's: the phases check that each Ctrl-C leaves none, and the teardown kills what is left.

The phases share that one checkout, in order:

1. ``make run`` on the fresh clone, the quick start, the tenant networks and the tenants (each
   section in the README's order; passwords typed at the prompts on a terminal, ``Sandbox.sh``'s
   ``answers``), the cluster's check commands, the tree's own commands and the profiles (``lab``
   is a second API, without a tree, on 10.0.0.5:8080); Ctrl-C. The tenants' sections leave the
   cloud as they found it (no VM, network, organisation or user of theirs, admin logged in), which
   phase 3's quick start needs.
2. "Running it yourself": ``cloudland up --hypervisors 1000`` (with ``CLOUDLAND_API_PORT=18080``,
   which the ``CLOUDLAND_ENDPOINT`` line is about), the tree alone with the API alone beside it,
   the root under ``mpiexec``; each stopped with Ctrl-C.
3. ``make run`` again in the same checkout: the quick start again on the cloud of phase 1, whose
   900 hypervisors beyond the first 100 are now ``gone``.

About two to four minutes on this 2-core machine (104-152 s with other tests loading it to a load
average of 26-37; 217-333 s at a load average of 27-37 once phase 1 ran the tenants' sections too;
675 s at 15-24 once the quick start also gave web-1 a floating IP and pinged it, phase 1 402 s of
it), most of it building the five trees.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import selectors
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from cloudland import procinfo
from cloudland_launcher.harness import wait_for
from tests.integration.test_cli_tree import BIN, REPO, clean_env, described, described_pids, kill_leftovers

README = REPO / "README.md"
BANNER_END = "Ctrl-C stops the API, then the tree."  # cloudland up's banner, last line
TREE_BANNER_END = "Ctrl-C stops the tree."
LAB_ADDRESS = "10.0.0.5"  # the README's other cloud ("lab")
SANDBOX_PREFIX = "cloudland-readme-"
# Not under /tmp: the namespace has a /tmp of its own, which would hide it.
SANDBOX_DIR = Path("/var/tmp")

# -- the README's commands ------------------------------------------------------------------

MAKE_RUN = "make run"
QUICK_START = (
    ".venv/bin/cloudland login",
    ".venv/bin/cloudland flavor create small --vcpus 1 --memory-mib 512 --disk-gib 1",
    "head -c 1M /dev/urandom > /tmp/tiny.img && .venv/bin/cloudland image upload /tmp/tiny.img --name tiny --format raw",
    ".venv/bin/cloudland vm create web --flavor small --image tiny --count 20",
    ".venv/bin/cloudland vm list",
    ".venv/bin/cloudland hyper list",
    ".venv/bin/cloudland vm exec web-1 -- busybox ping -c 3 10.0.0.3",
    ".venv/bin/cloudland floating-ip create --external external --vm web-1",
    ".venv/bin/cloudland secgroup rule add default --protocol icmp --remote-cidr 0.0.0.0/0",
    ".venv/bin/cloudland vm stop --name 'web-*'",
    ".venv/bin/cloudland vm delete --name 'web-*'",
)
LOGIN, FLAVOR, IMAGE, CREATE, VM_LIST, HYPER_LIST, PING, FLOATING, ICMP, STOP, DELETE = QUICK_START
PROFILES = (
    ".venv/bin/cloudland configure",
    ".venv/bin/cloudland configure --profile lab --endpoint http://10.0.0.5:8080 --grpc 10.0.0.5:50551 --pki ~/lab-pki",
    ".venv/bin/cloudland --profile lab login --username admin --password-stdin < pw.txt",
    ".venv/bin/cloudland --profile lab vm list",
    ".venv/bin/cloudland configure --profile lab --use",
)
ENDPOINT_LOGIN = "CLOUDLAND_ENDPOINT=http://127.0.0.1:18080 .venv/bin/cloudland login"
UP_1000 = ".venv/bin/cloudland up --hypervisors 1000 --fanout 32"
TREE_UP_1000 = ".venv/bin/cloudland tree up --hypervisors 1000"
API_ALONE = ".venv/bin/python -m cloudland_api"
ROOT_ALONE = ".venv/bin/python -m cloudland_launcher --hypervisors 1000"  # excluded, below
ROOT_UNDER_MPIEXEC = ".venv/bin/mpiexec -n 1 .venv/bin/python -m cloudland_launcher"
PKI_ENSURE = ".venv/bin/python -c 'from pathlib import Path; from cloudland import pki; pki.ensure(Path(\"var/pki\").resolve())'"
CLUSTER_CHECK = (
    ".venv/bin/cloudland cluster hosts",
    ".venv/bin/cloudland tree health",
    ".venv/bin/cloudland hyper list",
)
# Named in the README's prose ("The tree's own commands still work beside it"), not in a block.
TREE_COMMANDS = (  # `tree health` is run with CLUSTER_CHECK
    ".venv/bin/cloudland tree broadcast ping",
    ".venv/bin/cloudland tree ping 7",
    ".venv/bin/cloudland tree topology",
)

# README, "Tenant networks". The db subnet is one command on two lines (a trailing backslash): both
# lines are the README's, and it runs as they are joined there.
SUBNET_DB = (".venv/bin/cloudland subnet create db --vpc prod --cidr 10.0.1.0/24 --gateway none "
             "--pool 10.0.1.10-10.0.1.99 \\", "--dns 10.0.1.2 --no-dhcp")
NETWORKS = (
    ".venv/bin/cloudland vpc create prod",
    ".venv/bin/cloudland subnet create web --vpc prod --cidr 10.0.0.0/24",
    "\n".join(SUBNET_DB),
    ".venv/bin/cloudland vm create app --flavor small --image tiny --count 3 --network web --network db",
    ".venv/bin/cloudland port list --instance app-1",
    ".venv/bin/cloudland port create --subnet web --ip 10.0.0.50 --name spare",
    ".venv/bin/cloudland port list --subnet web",
    ".venv/bin/cloudland vm delete --name 'app-*' --yes",
    ".venv/bin/cloudland port delete spare",
    ".venv/bin/cloudland vpc delete prod",
)
# README, "Tenants".
TENANTS = (
    ".venv/bin/cloudland org create acme --admin alice",
    ".venv/bin/cloudland org list",
    ".venv/bin/cloudland user create carol --role reader",
    ".venv/bin/cloudland login --username alice --organisation acme",
    "(umask 077; head -c 12 /dev/urandom | base64 > bob-pw.txt)",
    ".venv/bin/cloudland user create bob --role member --password-stdin < bob-pw.txt",
    ".venv/bin/cloudland user add carol --role reader",
    ".venv/bin/cloudland user role bob admin",
    ".venv/bin/cloudland user list",
    ".venv/bin/cloudland user remove carol",
    ".venv/bin/cloudland user delete bob",
    ".venv/bin/cloudland whoami",
    ".venv/bin/cloudland passwd",
    ".venv/bin/cloudland logout",
    ".venv/bin/cloudland login --username admin",
    ".venv/bin/cloudland org delete acme",
    ".venv/bin/cloudland user delete carol",
)
# README, "Projects and quotas": run right after the tenants, as the operator.
PROJECTS = (
    ".venv/bin/cloudland project create dev",
    ".venv/bin/cloudland project list",
    ".venv/bin/cloudland --project dev vpc create lab",
    ".venv/bin/cloudland project use dev",
    ".venv/bin/cloudland quota set instances=20 vcpus=40",
    ".venv/bin/cloudland quota show",
    ".venv/bin/cloudland vpc delete lab",
    ".venv/bin/cloudland group create ops --role reader",
    ".venv/bin/cloudland group add-user ops admin",
    ".venv/bin/cloudland group grant ops --role member --project dev",
    ".venv/bin/cloudland group show ops",
    ".venv/bin/cloudland group delete ops --yes",
    ".venv/bin/cloudland project use",
    ".venv/bin/cloudland project delete dev --yes",
)

RUN = {MAKE_RUN, *QUICK_START, *PROFILES, ENDPOINT_LOGIN, UP_1000, TREE_UP_1000, API_ALONE, ROOT_UNDER_MPIEXEC,
       PKI_ENSURE, *CLUSTER_CHECK, *NETWORKS[:2], *SUBNET_DB, *NETWORKS[3:], *TENANTS, *PROJECTS}

REAL_VMS = ("needs libvirtd and QEMU running on this machine and the test guest built: tests/realvm "
            "runs these paths (test_api_to_qemu.py and its neighbours) with real guests")
LAB = ("builds emulated hosts (namespaces, bridges, mounts) on the machine under the one name `lab`, which "
       "`make lab-down` sweeps, an operator's own lab included; tests/lab checks the lab, tests/multihost the "
       "tree across it. Tried inside this module's namespaces with a /run of their own: `make lab` failed 1 run "
       "in 3 there (unshare binding a host's mount namespace file: EINVAL)")
HOSTS = "needs hosts reachable by root ssh (hv-01..): tests/multihost/test_cluster.py brings a cluster up on the lab's"
DIRECTORIES = ("needs an LDAP server or an OpenID provider for organisation acme: tests/api/test_ldap.py and "
               "test_oidc.py run these commands through the CLI against a real slapd and a real OpenID provider")
DIRECTORY_GROUPS = ("needs an organisation with an LDAP server and an OpenID provider: "
                    "tests/api/test_directory_groups.py runs these commands through the CLI against a served API, "
                    "and sign-ins against a real slapd and a real OpenID provider")
ROUTERS = ("needs root namespaces; run by tests/network/test_routers.py (the agents) and "
           "tests/network/test_router_vms.py (through the API), with an external segment and an internet host")
CREDENTIALS = ("needs a user of an organisation: tests/api/test_app_credentials.py and test_ldap.py run these "
               "commands through the CLI against a served API (issue 14)")
SECGROUPS = ("needs ports in an organisation's VPC: tests/unit/test_cli_secgroup.py runs these lines against a "
             "stub API, tests/api/test_secgroups.py the API behind them, tests/network/test_secgroups.py the "
             "firewall with real traffic")
EXCLUDED = {
    ".venv/bin/cloudland secgroup list": SECGROUPS,
    ".venv/bin/cloudland secgroup create web": SECGROUPS,
    ".venv/bin/cloudland secgroup rule add web --protocol tcp --port 22 --remote-cidr 0.0.0.0/0": SECGROUPS,
    ".venv/bin/cloudland secgroup rule add web --protocol icmp --remote-group default": SECGROUPS,
    ".venv/bin/cloudland port set spare --secgroup web --secgroup default --allowed-address 10.0.0.200": SECGROUPS,
    ".venv/bin/cloudland secgroup show web": SECGROUPS,
    ".venv/bin/cloudland secgroup rule delete web 3": SECGROUPS,
    ".venv/bin/cloudland port set spare --no-secgroup": SECGROUPS,
    ".venv/bin/cloudland secgroup delete web": SECGROUPS,
    ".venv/bin/cloudland directory set acme ldap --settings acme-ldap.json --bind-password-stdin < ldap-pw.txt":
        DIRECTORIES,
    ".venv/bin/cloudland login --organisation acme --username alice": DIRECTORIES,
    ".venv/bin/cloudland login --oidc --organisation acme": DIRECTORIES,
    ".venv/bin/cloudland directory group map cn=devs,ou=groups,dc=example,dc=org --group devs": DIRECTORY_GROUPS,
    ".venv/bin/cloudland directory group map ops-team --group ops --directory oidc": DIRECTORY_GROUPS,
    ".venv/bin/cloudland directory group list": DIRECTORY_GROUPS,
    ".venv/bin/cloudland directory group unmap 2": DIRECTORY_GROUPS,
    ".venv/bin/cloudland credential create backup --role reader": CREDENTIALS,
    ".venv/bin/cloudland credential revoke 3": CREDENTIALS,
    ".venv/bin/cloudland audit --username alice": CREDENTIALS,
    "make test": "runs the whole suite, this module included (CI runs it: .ci/run)",
    ROOT_ALONE: "the root that `tree up --hypervisors 1000` runs, run here: `tree up` starts this, under its "
                "own `mpiexec -n 1` as ROOT_UNDER_MPIEXEC (cli/start.py root_command, with the defaults spelled "
                "out); a third tree of 1000 would add ~15 s",
    "make libvirtd": "installs libvirtd and QEMU from Debian and starts them for the whole machine; " + REAL_VMS,
    "make guest": REAL_VMS,
    "CLOUDLAND_DRIVER=libvirt .venv/bin/cloudland up --hypervisors 1": REAL_VMS,
    ".venv/bin/cloudland image upload var/guest/guest.qcow2 --name guest --format qcow2": REAL_VMS,
    ".venv/bin/cloudland vm create demo --flavor small --image guest": REAL_VMS,
    ".venv/bin/cloudland vm console demo": REAL_VMS,
    ".venv/bin/cloudland vm vnc demo": REAL_VMS,
    ".venv/bin/cloudland vm stop demo && .venv/bin/cloudland vm capture demo demo-golden": REAL_VMS,
    "make libvirtd-stop": "stops the machine's libvirtd, which other tests share; " + REAL_VMS,
    ".venv/bin/cloudland up --hostfile hosts.txt --listen 10.0.0.1:50552 --hypervisors 1024": HOSTS,
    # One shell loop over four lines: each line is listed.
    "for h in hv-01 hv-02 hv-03; do": HOSTS,
    'ssh root@$h "install -d -m 0700 $PWD/var/pki" &&': HOSTS,
    "scp -p var/pki/ca.pem var/pki/node.pem var/pki/node.key root@$h:$PWD/var/pki/": HOSTS,
    "done": HOSTS,
    "make lab HOSTS=4": LAB,
    ".venv/bin/python -m cloudland_lab exec h1 -- bash": LAB,
    ".venv/bin/python -m cloudland_lab status": LAB,
    ".venv/bin/python -m cloudland_lab cut h2": LAB,
    "make lab-down": LAB,
    # README, "Routers and floating IPs".
    ".venv/bin/cloudland external-network create public --cidr 203.0.113.0/24 --bridge ext0 --pool "
    "203.0.113.10-203.0.113.200": ROUTERS,
    ".venv/bin/cloudland router create edge --vpc prod": ROUTERS,
    ".venv/bin/cloudland router add-subnet edge web": ROUTERS,
    ".venv/bin/cloudland router add-subnet edge db": ROUTERS,
    ".venv/bin/cloudland router set-gateway edge --external public": ROUTERS,
    ".venv/bin/cloudland floating-ip create --external public": ROUTERS,
    ".venv/bin/cloudland floating-ip associate 203.0.113.12 --port app-1-nic": ROUTERS,
    ".venv/bin/cloudland floating-ip disassociate 203.0.113.12": ROUTERS,
    ".venv/bin/cloudland router show edge": ROUTERS,
}
# Blocks in a language other than sh, by their first line.
EXCLUDED_BLOCKS = {
    'with Lab(prefix="cl7", subnet="10.77.0.0/24") as lab:':
        "Python, not shell: cloudland_lab.Lab, which tests/lab exercises",
}
SHELL = {"sh", "bash", "shell", "console"}
# The namespaces' first process: it sets them up, then holds them until its stdin closes (the module
# ends, or the test process dies) and kills every process left in them. `read` is a builtin, so
# while it waits the namespace holds no process of the holder's but itself.
HOLDER = """
{keep}mount --rbind {tmp} /tmp && ip link set lo up && ip addr add {lab}/32 dev lo || exit 1
echo ready
read -r _
me=$(readlink /proc/$$/ns/net)
for p in /proc/[0-9]*; do
    pid=${{p#/proc/}}
    [ "$pid" != $$ ] && [ "$(readlink "$p/ns/net" 2>/dev/null)" = "$me" ] && kill -9 "$pid" 2>/dev/null
done
exit 0
"""
def keep_under_tmp(tmp: Path) -> str:
    """Shell lines that keep the checkout and the venv at their paths when they sit under /tmp (a CI
    clone made by mktemp), which the sandbox's own /tmp would hide: each is bound into the sandbox's
    /tmp, in its mount namespace only, before that /tmp is mounted."""
    repo, venv = REPO.resolve(), BIN.parent.resolve()
    lines = []
    for path in [repo] if venv.is_relative_to(repo) else [repo, venv]:
        if path.is_relative_to("/tmp"):
            inside = tmp / path.relative_to("/tmp")
            lines.append(f"mkdir -p {shlex.quote(str(inside))} && mount --bind {shlex.quote(str(path))} "
                         f"{shlex.quote(str(inside))} &&\n")
    return "".join(lines)


FENCE = re.compile(r"^```(\S*)\n(.*?)^```", re.M | re.S)


def without_comment(line: str) -> str:
    """A command line without its trailing ``# comment`` (no README command has a # of its own)."""
    return re.sub(r"(^|\s+)#.*$", "", line).strip()


def readme_blocks() -> list[tuple[str, list[str]]]:
    """Every fenced block of README.md: its language and its lines, comments removed, empty ones dropped."""
    return [(lang, [cmd for cmd in map(without_comment, body.splitlines()) if cmd])
            for lang, body in FENCE.findall(README.read_text())]


def readme_commands() -> list[str]:
    return [cmd for lang, lines in readme_blocks() if lang in SHELL for cmd in lines]


def test_every_readme_command_is_run_or_excluded() -> None:
    commands = readme_commands()
    assert not RUN & EXCLUDED.keys(), f"both run and excluded: {sorted(RUN & EXCLUDED.keys())}"
    neither = [cmd for cmd in commands if cmd not in RUN and cmd not in EXCLUDED]
    assert not neither, f"README commands this module neither runs nor excludes (with a reason): {neither}"
    stale = sorted((RUN | EXCLUDED.keys()) - set(commands))
    assert not stale, f"commands listed here that README.md no longer has: {stale}"
    other = {lines[0]: lang for lang, lines in readme_blocks() if lang and lang not in SHELL and lines}
    assert other.keys() == EXCLUDED_BLOCKS.keys(), (
        f"README blocks in other languages {other} against those excluded {sorted(EXCLUDED_BLOCKS)}")
    # The quick start is one block, in this order; make run's banner prints the same lines.
    assert [lines for lang, lines in readme_blocks() if LOGIN in lines] == [list(QUICK_START)]
    # The tenants' blocks run as their sections say, in order, with nothing in between.
    blocks = [lines for lang, lines in readme_blocks() if lang in SHELL]
    assert [*NETWORKS[:2], *SUBNET_DB, *NETWORKS[3:]] in blocks
    assert list(TENANTS) in blocks
    assert list(PROJECTS) in blocks


# -- the sandbox: a fresh clone in namespaces of its own ------------------------------------


class Background:
    """A README command that runs until Ctrl-C (SIGINT to its process group, as a terminal sends it)."""

    def __init__(self, proc: subprocess.Popen[bytes], output: Path, line: str) -> None:
        self.proc, self.output, self.line = proc, output, line

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_for_text(self, text: str, timeout: float = 180) -> str:
        def printed() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.line!r} exited {self.proc.returncode} before printing {text!r}:\n"
                                     f"{self.text()[-3000:]}")
            return text in self.text()
        wait_for(printed, timeout, f"{self.line!r} to print {text!r}", every=0.2)
        return self.text()

    def interrupt(self, timeout: float = 60) -> int:
        """Ctrl-C; the exit status once the command has ended."""
        try:
            os.killpg(self.proc.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{self.line!r} still running {timeout} s after Ctrl-C:\n"
                                 f"{self.text()[-3000:]}") from None


def netns(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/net")
    except OSError:
        return None


class Sandbox:
    """A copy of the checkout's tracked files, run inside a network and mount namespace of its own."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.clone = base / "cloudland"
        self.home = base / "home"
        self.tmp = base / "tmp"  # /tmp inside the namespace
        self.holder: subprocess.Popen[str] | None = None
        self.netns: str | None = None  # the namespace's id, as /proc/PID/ns/net reads
        self.passed: set[str] = set()  # the phases that passed: each later one runs on what they leave

    def up(self) -> None:
        installed = BIN.parent / ".installed"
        if not installed.exists():
            pytest.skip(f"{BIN.parent} was not set up by deploy/bootstrap.sh (no .installed): "
                        "`make run` would install the copy into it")
        for path in (self.clone, self.home, self.tmp):
            path.mkdir(parents=True)
        tracked = subprocess.run(["git", "-C", str(REPO), "ls-files", "-z"], capture_output=True, check=True,
                                 timeout=30).stdout.decode().split("\0")
        for name in filter(None, tracked):
            source, copy = REPO / name, self.clone / name
            if source.is_symlink() or source.is_file():
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, copy, follow_symlinks=False)
        (self.clone / ".venv").symlink_to(BIN.parent)
        # bootstrap.sh installs again when setup.cfg is newer than the venv's .installed; the copy's
        # is the checkout's, so its age is the venv's: `make run` must not install the copy into it.
        stamp = installed.stat().st_mtime - 1
        os.utime(self.clone / "setup.cfg", (stamp, stamp))
        self.holder = subprocess.Popen(["unshare", "--net", "--mount", "--propagation", "private", "sh", "-c",
                                        HOLDER.format(tmp=self.tmp, lab=LAB_ADDRESS, keep=keep_under_tmp(self.tmp))],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                       text=True)
        assert self.holder.stdout is not None
        ready = self.holder.stdout.readline().strip()
        self.netns = netns(self.holder.pid)
        if ready != "ready":
            self.holder.wait(timeout=10)
            pytest.fail(f"could not make the namespaces: {self.holder.stderr.read() if self.holder.stderr else ''}")

    def processes(self) -> set[int]:
        """Every process in the namespace but its holder: all of them started by this module."""
        assert self.holder is not None
        return {int(p) for p in os.listdir("/proc")
                if p.isdigit() and int(p) != self.holder.pid and netns(int(p)) == self.netns}

    def wait_empty(self, after: str, timeout: float = 30) -> None:
        try:
            wait_for(lambda: not self.processes(), timeout, f"no process left after {after}", every=0.2)
        except AssertionError:
            raise AssertionError(f"left {timeout} s after {after}: {described_pids(self.processes())}") from None

    def down(self) -> None:
        if self.holder is not None:
            assert self.holder.stdin is not None
            self.holder.stdin.close()  # the holder kills what is left in the namespace, then ends
            try:
                self.holder.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.holder.kill()
                self.holder.wait(timeout=10)
            kill_leftovers(self.processes())
        shutil.rmtree(self.base, ignore_errors=True)

    def env(self, **extra: str) -> dict[str, str]:
        """A fresh login shell's: no CLOUDLAND_* (not even the session's CA), no venv on PATH, HOME of
        its own; wide for Rich's tables."""
        path = [p for p in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep) if p and Path(p) != BIN]
        drop = {"VIRTUAL_ENV", "XDG_CONFIG_HOME", "TMPDIR", "CLOUDLAND_PKI"}
        env = {k: v for k, v in clean_env().items() if k not in drop}
        return env | {"HOME": str(self.home), "PATH": os.pathsep.join(path), "COLUMNS": "200"} | extra

    def argv(self, line: str) -> list[str]:
        assert self.holder is not None
        return ["nsenter", f"--target={self.holder.pid}", "--net", "--mount", f"--wdns={self.clone}", "--",
                "bash", "-c", line]

    def sh(self, line: str, *, answers: Sequence[str] | None = None, timeout: float = 120,
           **env: str) -> subprocess.CompletedProcess[str]:
        """``bash -c LINE`` in the clone; with ``answers``, stdin is a terminal that types each answer
        (and Enter) at the next prompt the command shows."""
        if answers is None:
            return subprocess.run(self.argv(line), env=self.env(**env), stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, timeout=timeout)
        terminal, stdin = os.openpty()
        try:
            # A session of its own: no controlling terminal, so getpass reads the password from this
            # stdin, not from /dev/tty (the terminal pytest may run in).
            proc = subprocess.Popen(self.argv(line), env=self.env(**env), stdin=stdin, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
            os.close(stdin)
            stdout, stderr = typed(proc, terminal, list(answers), timeout, line)
        finally:
            os.close(terminal)
        return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)

    def ok(self, line: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        result = self.sh(line, **kwargs)
        assert result.returncode == 0, f"{line}: {described(result)}\n{self.logs()}"
        return result

    def logs(self) -> str:
        """The end of the checkout's API and root logs, for a failure's message."""
        tails = []
        for log in ("api.out", "root.out"):
            path = self.clone / "var" / log
            if path.exists():
                tails.append(f"var/{log}:\n" + "\n".join(path.read_text(errors="replace").splitlines()[-40:]))
        return "\n".join(tails)

    def start(self, line: str, name: str, **env: str) -> Background:
        output = self.base / f"{name}.out"
        with open(output, "wb") as sink:
            proc = subprocess.Popen(self.argv(line), env=self.env(**env), stdin=subprocess.DEVNULL, stdout=sink,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        return Background(proc, output, line)


def typed(proc: subprocess.Popen[bytes], terminal: int, answers: list[str], timeout: float,
          line: str) -> tuple[str, str]:
    """Type each answer at ``proc``'s next prompt; its stdout and stderr once it has ended.

    An answer waits for its prompt, as a person does: getpass turns echo off with TCSAFLUSH, which
    drops whatever was typed before. Click's prompts end in ``: ``: the text to the colon on stderr,
    then, after the flush, the last space through getpass (to the terminal, or stderr without one)
    or input() (stdout). A prompt is there when both are, whichever was read first.
    """
    assert proc.stdout is not None and proc.stderr is not None
    output = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray(), terminal: bytearray()}
    prompt = bytearray()  # stderr since the last answer
    spaced = False  # a write since the last answer ended in a space
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        for fd in output:
            selector.register(fd, selectors.EVENT_READ)
        while proc.stdout.fileno() in selector.get_map() or proc.stderr.fileno() in selector.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                proc.wait(timeout=10)
                raise AssertionError(f"{line!r} still running after {timeout} s, {len(answers)} answers untyped:\n"
                                     f"stdout {output[proc.stdout.fileno()]!r}\nstderr {output[proc.stderr.fileno()]!r}\n"
                                     f"terminal {output[terminal]!r}")
            for key, _ in selector.select(min(left, 1.0)):
                try:
                    chunk = os.read(key.fd, 65536)
                except OSError:  # EIO: the terminal's last reader has gone
                    chunk = b""
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                output[key.fd] += chunk
                if key.fd == proc.stderr.fileno():
                    prompt += chunk
                spaced = spaced or chunk.endswith(b" ")
            if answers and spaced and prompt.rstrip(b" ").endswith(b":"):
                os.write(terminal, answers.pop(0).encode() + b"\n")
                prompt.clear()
                spaced = False
    proc.wait(timeout=max(deadline - time.monotonic(), 10))
    assert not answers, f"{line!r} ended before asking for {len(answers)} more answers:\n" \
                        f"{output[proc.stderr.fileno()].decode(errors='replace')}"
    return output[proc.stdout.fileno()].decode(errors="replace"), output[proc.stderr.fileno()].decode(errors="replace")


def sweep_dead_sandboxes() -> None:
    """Remove what a killed session left in the temporary directory (its pid is in the name)."""
    for old in SANDBOX_DIR.glob(f"{SANDBOX_PREFIX}*"):
        pid = old.name.removeprefix(SANDBOX_PREFIX).split("-")[0]
        if pid.isdigit() and not procinfo.alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)


@pytest.fixture(scope="module")
def box() -> Iterator[Sandbox]:
    if os.geteuid() != 0:
        pytest.skip("needs root: network and mount namespaces")
    sweep_dead_sandboxes()
    sandbox = Sandbox(Path(tempfile.mkdtemp(prefix=f"{SANDBOX_PREFIX}{os.getpid()}-", dir=SANDBOX_DIR)))
    try:
        sandbox.up()
        yield sandbox
    finally:
        sandbox.down()


PHASES = ("test_quick_start_on_a_fresh_clone", "test_running_it_yourself", "test_quick_start_again_in_the_same_checkout")


@pytest.fixture
def phase(box: Sandbox, request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    """The sandbox, for one phase, once every earlier phase has passed: each runs on what they leave."""
    name = request.node.name
    missing = [p for p in PHASES[:PHASES.index(name)] if p not in box.passed]
    if missing:
        pytest.skip(f"runs on what {', '.join(missing)} leaves, which did not pass in this session")
    failed = request.session.testsfailed
    yield box
    if request.session.testsfailed == failed:
        box.passed.add(name)


# -- what each command should say --------------------------------------------------------------


def hypervisor_states(box: Sandbox, **env: str) -> dict[str, int]:
    """How many hypervisors are in each state, as ``hyper list --json`` says."""
    hypers = json.loads(box.ok(".venv/bin/cloudland hyper list --json", **env).stdout)["items"]
    return dict(Counter(hyper["state"] for hyper in hypers))


def quick_start(box: Sandbox, again: bool) -> None:
    """The quick start's lines, in the README's order, each checked against what its comment promises."""
    config = box.home / ".config" / "cloudland" / "cli.json"
    result = box.ok(LOGIN)  # reads var/admin-credentials; the token goes to ~/.config/cloudland/cli.json
    assert f"logged in to http://127.0.0.1:8080 as admin; token stored in {config}" in result.stdout, described(result)
    assert config.stat().st_mode & 0o777 == 0o600

    if not again:
        result = box.ok(FLAVOR)
        assert re.search(r"^flavor \d+ small created$", result.stdout, re.M), described(result)
        result = box.ok(IMAGE)
        assert re.search(r"^image \d+ tiny active, 1048576 bytes", result.stdout, re.M), described(result)
        assert (box.tmp / "tiny.img").stat().st_size == 1 << 20  # the namespace's own /tmp
    else:
        # The checkout keeps its cloud (var/): both are there already, and saying so is all these do.
        for line, kind in ((FLAVOR, "flavor"), (IMAGE, "image")):
            result = box.sh(line)
            assert result.returncode == 2, f"{line}: {described(result)}"
            assert result.stderr.count("\n") == 1 and "already" in result.stderr and kind in result.stderr, \
                described(result)

    result = box.ok(CREATE, timeout=180)
    assert re.search(r"^20 created in \d+\.\d s$", result.stdout, re.M), described(result)
    result = box.ok(VM_LIST)  # web-1 .. web-20, running, and the hypervisor of each
    for i in range(1, 21):
        assert re.search(rf"\bweb-{i}\W+running\W+\d+\b", result.stdout), f"web-{i}: {described(result)}"
    assert re.search(r"^20 VMs$", result.stdout, re.M), described(result)
    hosts = {int(h) for h in re.findall(r"\bweb-\d+\W+running\W+(\d+)\b", result.stdout)}
    assert hosts and max(hosts) < 100, f"VMs placed on hypervisors the tree does not have: {sorted(hosts)}"

    result = box.ok(HYPER_LIST)  # every hypervisor: state, vCPUs and memory claimed / capacity
    assert len(re.findall(r"\bsim-\d+\W+up\W+yes\b", result.stdout)) == 100, described(result)
    assert len(re.findall(r"\bgone\b", result.stdout)) == (900 if again else 0), described(result)

    # As root, make run's network is real (CLOUDLAND_NETWORK=netns): web-1 pings web-2 over VXLAN.
    result = box.ok(PING, timeout=60)
    assert re.search(r"3 packets transmitted, [123] packets received", result.stdout), described(result)

    # make run's external network (198.51.100.0/24 on this namespace's bridge): web-1's floating IP
    # answers this machine once the default group lets ICMP in.
    result = box.ok(FLOATING)
    found = re.search(r"^floating IP \d+ (198\.51\.100\.\d+) allocated and associated: port \d+ \(10\.0\.0\.2\)$",
                      result.stdout, re.M)
    assert found, described(result)
    box.ok(ICMP)
    wait_for(lambda: box.sh(f"busybox ping -c 1 -W 1 {found[1]}").returncode == 0, 60,
             f"web-1's floating IP {found[1]} to answer this machine")

    result = box.ok(STOP)
    assert re.search(r"^20 stopped in ", result.stdout, re.M), described(result)
    result = box.ok(DELETE, answers=["y"])  # asks first
    assert "Delete 20 VMs?" in result.stderr, described(result)
    # click writes the prompt's trailing space through input(), to stdout: on a terminal it ends the prompt.
    assert re.search(r"^ ?20 deleted in ", result.stdout, re.M), described(result)


def listed(box: Sandbox, what: str) -> list[dict[str, Any]]:
    """Every item of ``cloudland WHAT list --json`` (WHAT may carry filters)."""
    items: list[dict[str, Any]] = json.loads(box.ok(f".venv/bin/cloudland {what} --json").stdout)["items"]
    return items


def shown(box: Sandbox, what: str) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(box.ok(f".venv/bin/cloudland {what} --json").stdout)
    return record


def tenant_networks(box: Sandbox) -> None:
    """README, "Tenant networks", in its order on the quick start's flavor and image: each VM of
    ``app`` gets a NIC on each network, addressed from that subnet; the section leaves nothing behind."""
    vpc, web, db, create, app_ports, spare, web_ports, delete, spare_delete, vpc_delete = NETWORKS
    # make run's default network (vpc 1, "default") was made first: prod is the second VPC.
    default = (listed(box, "vpc list"), listed(box, "subnet list"))
    assert [[v["name"] for v in items] for items in default] == [["default"], ["default"]], default
    result = box.ok(vpc)  # domain vpc-2.cloudland.internal, MTU 1450
    assert re.search(r"^vpc 2 prod created: domain vpc-2\.cloudland\.internal, MTU 1450$", result.stdout, re.M), \
        described(result)
    result = box.ok(web)  # gateway 10.0.0.1, pool .1-.254, DHCP on
    assert re.search(r"^subnet \d+ web created: 10\.0\.0\.0/24, gateway 10\.0\.0\.1, VNI \d+$", result.stdout, re.M), \
        described(result)
    subnet = shown(box, "subnet show web")
    assert (subnet["allocation_pools"], subnet["dhcp"]) == ([{"start": "10.0.0.1", "end": "10.0.0.254"}], True), subnet
    result = box.ok(db)
    assert re.search(r"^subnet \d+ db created: 10\.0\.1\.0/24, gateway -, VNI \d+$", result.stdout, re.M), \
        described(result)
    subnet = shown(box, "subnet show db")
    assert (subnet["gateway"], subnet["allocation_pools"], subnet["dns_servers"], subnet["dhcp"]) == (
        None, [{"start": "10.0.1.10", "end": "10.0.1.99"}], ["10.0.1.2"], False), subnet
    subnets = {s["name"]: s["id"] for s in listed(box, "subnet list --vpc prod")}
    assert subnets.keys() == {"web", "db"}, subnets

    result = box.ok(create, timeout=180)
    assert re.search(r"^3 created in \d+\.\d s$", result.stdout, re.M), described(result)
    vms = {v["name"]: v for v in listed(box, "vm list --name 'app-*'")}
    assert sorted(vms) == ["app-1", "app-2", "app-3"] and {v["status"] for v in vms.values()} == {"running"}, vms
    # Each VM: eth0 on web, eth1 on db, each with one address from its subnet, on the VM's hypervisor.
    nics: dict[str, list[dict[str, Any]]] = {name: [] for name in vms}
    by_id = {v["id"]: name for name, v in vms.items()}
    for port in listed(box, "port list"):
        nics[by_id[port["instance_id"]]].append(port)
    for name, ports in nics.items():
        ports.sort(key=lambda p: p["device_index"])
        assert [(p["device_index"], p["subnet_id"], p["hypervisor_id"]) for p in ports] == [
            (0, subnets["web"], vms[name]["hypervisor_id"]), (1, subnets["db"], vms[name]["hypervisor_id"])], ports
        web_ip, db_ip = (p["fixed_ips"] for p in ports)
        assert len(web_ip) == 1 and re.fullmatch(r"10\.0\.0\.([2-9]|[1-9]\d|1\d\d|2[0-4]\d|25[0-3])", web_ip[0]), ports
        assert len(db_ip) == 1 and 10 <= int(db_ip[0].removeprefix("10.0.1.")) <= 99, ports
    # README: app-1..3 on .2-.4 of web; db's pool starts at .10.
    assert {name: [p["fixed_ips"][0] for p in ports] for name, ports in nics.items()} == {
        f"app-{i}": [f"10.0.0.{i + 1}", f"10.0.1.{i + 9}"] for i in (1, 2, 3)}, nics

    result = box.ok(app_ports)  # its NICs: MAC, addresses, hypervisor
    for port in nics["app-1"]:
        row = (rf"\b{port['mac']}\W+{re.escape(port['fixed_ips'][0])}\W+{vms['app-1']['id']}\W+"
               rf"{port['device_index']}\W+{port['hypervisor_id']}\b")
        assert re.search(row, result.stdout), f"no row {row}: {described(result)}"
    assert len(re.findall(r"\b02(:[0-9a-f]{2}){5}\b", result.stdout)) == 2, described(result)

    result = box.ok(spare)  # a port of no VM (yet)
    made = re.search(r"^port (\d+) created: ([0-9a-f:]{17}) 10\.0\.0\.50$", result.stdout, re.M)
    assert made, described(result)
    result = box.ok(web_ports)  # app-1..3 on .2-.4, spare on .50
    assert sorted(re.findall(r"\b10\.0\.\d\.\d+\b", result.stdout)) == [
        "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.50"], described(result)
    assert re.search(rf"^\W*{made[1]}\W+spare\W+{subnets['web']}\W+{made[2]}\W+10\.0\.0\.50\W*$", result.stdout,
                     re.M), described(result)

    result = box.ok(delete, timeout=180)  # their ports go with them
    assert re.search(r"^3 deleted in ", result.stdout, re.M), described(result)
    assert [p["name"] for p in listed(box, "port list")] == ["spare"]
    result = box.ok(spare_delete)
    assert result.stdout.strip() == f"port {made[1]} spare deleted", described(result)
    result = box.ok(vpc_delete)  # and its subnets, now without ports
    assert result.stdout.strip() == "vpc 2 prod deleted", described(result)
    assert (listed(box, "vpc list"), listed(box, "subnet list"), listed(box, "port list")) == (*default, [])
    assert listed(box, "vm list") == []


def projects(box: Sandbox) -> None:
    """README, "Projects and quotas", in its order: dev made, used for one call and then as the
    profile's project, limited and shown, emptied; a group made, given a member and a role on dev,
    shown and deleted; dev deleted; the cloud left as it was."""
    (create, project_list, one_call, use, quota_set, quota_show, vpc_delete, group_create, group_add, group_grant,
     group_show, group_delete, use_default, delete) = PROJECTS
    assert re.search(r"^project \d+ dev created", box.ok(create).stdout, re.M)
    box.ok(project_list)
    assert [(p["name"], p["role"]) for p in listed(box, "project list")] == [("default", "admin"), ("dev", "admin")]
    box.ok(one_call)
    assert "lab" not in [v["name"] for v in listed(box, "vpc list")]  # the profile still acts in default
    assert "acts in project dev" in box.ok(use).stdout
    assert [v["name"] for v in listed(box, "vpc list")] == ["lab"]
    assert "instances=20, vcpus=40" in box.ok(quota_set).stdout
    result = box.ok(quota_show)
    assert re.search(r"\binstances\W+0\W+20\b", result.stdout) and "project dev" in result.stdout, described(result)
    box.ok(vpc_delete)
    assert re.search(r"^group \d+ ops created$", box.ok(group_create).stdout, re.M)
    assert "user admin is in group ops" in box.ok(group_add).stdout
    assert "group ops is member on project dev" in box.ok(group_grant).stdout
    result = box.ok(group_show)
    assert re.search(r"members\W+admin\b", result.stdout) and "dev=member" in result.stdout, described(result)
    assert re.search(r"^group \d+ ops deleted$", box.ok(group_delete).stdout, re.M)
    assert listed(box, "group list") == []
    box.ok(use_default)
    assert shown(box, "whoami")["project"] == "default"
    assert re.search(r"^project \d+ dev deleted$", box.ok(delete).stdout, re.M)
    assert [p["name"] for p in listed(box, "project list")] == ["default"]


def tenants(box: Sandbox) -> None:
    """README, "Tenants", in its order: what each command says, and what ``org list``, ``user list``
    and ``whoami`` show after it. Passwords are typed at the prompts on a terminal, as a person does."""
    (org_create, org_list, carol_create, alice_login, bob_pw, bob_create, carol_add, bob_role, user_list,
     carol_remove, bob_delete, whoami, passwd, logout, admin_login, org_delete, carol_delete) = TENANTS
    alice_pw, alice_new, carol_pw = (secrets.token_urlsafe(12) for _ in range(3))

    def users() -> dict[str, str]:
        return {u["username"]: u["role"] for u in listed(box, "user list")}

    def token() -> str:
        store = json.loads((box.home / ".config" / "cloudland" / "cli.json").read_text())
        return str(store["profiles"]["default"]["token"])

    result = box.ok(org_create, answers=[alice_pw, alice_pw])  # asks for alice's new password twice
    assert re.search(r"^organisation \d+ acme created; alice is its admin\b", result.stdout, re.M), described(result)
    assert alice_pw not in result.stdout + result.stderr  # typed with the echo off
    result = box.ok(org_list)  # admin (the operator's) and acme
    assert re.search(r"\badmin\W+yes\b", result.stdout) and re.search(r"\bacme\b", result.stdout), described(result)
    assert [o["name"] for o in listed(box, "org list")] == ["admin", "acme"]
    result = box.ok(carol_create, answers=[carol_pw, carol_pw])  # in your organisation, admin
    assert re.search(r"^user \d+ carol created, reader$", result.stdout, re.M), described(result)
    assert users() == {"admin": "admin", "carol": "reader"}

    result = box.ok(alice_login, answers=[alice_pw])  # asks for alice's password
    assert "logged in to http://127.0.0.1:8080 as alice;" in result.stdout, described(result)
    box.ok(bob_pw)  # a password for bob, to hand him
    pw_file = box.clone / "bob-pw.txt"
    assert pw_file.stat().st_mode & 0o777 == 0o600 and len(pw_file.read_text().strip()) >= 8
    result = box.ok(bob_create)
    assert re.search(r"^user \d+ bob created, member$", result.stdout, re.M), described(result)
    result = box.ok(carol_add)  # carol, a user of another organisation, joins acme
    assert re.search(r"^user \d+ carol joined, reader$", result.stdout, re.M), described(result)
    result = box.ok(bob_role)
    assert re.search(r"^user \d+ bob is now admin$", result.stdout, re.M), described(result)
    result = box.ok(user_list)  # id, username, role: alice and bob admin, carol reader
    for name, role in (("alice", "admin"), ("bob", "admin"), ("carol", "reader")):
        assert re.search(rf"^\W*\d+\W+{name}\W+{role}\b", result.stdout, re.M), f"{name}: {described(result)}"
    assert users() == {"alice": "admin", "bob": "admin", "carol": "reader"}
    result = box.ok(carol_remove, answers=["y"])  # out of acme only (asks first)
    assert "Remove carol from this organisation?" in result.stderr, described(result)
    assert re.search(r"^ ?user \d+ carol removed$", result.stdout, re.M), described(result)
    assert users() == {"alice": "admin", "bob": "admin"}
    result = box.ok(bob_delete, answers=["y"])  # a user whose only organisation is acme (asks first)
    assert re.search(r"^ ?user \d+ bob deleted$", result.stdout, re.M), described(result)
    assert users() == {"alice": "admin"}

    result = box.ok(whoami)  # user, organisation, role, token expiry
    for key, value in (("username", "alice"), ("organisation", "acme"), ("role", "admin"), ("expires_at", r"\d{4}-")):
        assert re.search(rf"\b{key}\s+{value}", result.stdout), f"{key}: {described(result)}"
    before = token()
    result = box.ok(passwd, answers=[alice_pw, alice_new, alice_new])  # every token you hold ends
    assert "password changed" in result.stdout, described(result)
    after = token()
    assert after != before
    assert box.sh(".venv/bin/cloudland whoami", CLOUDLAND_TOKEN=before).returncode == 4  # ended
    assert shown(box, "whoami")["username"] == "alice"  # the profile's new one works
    result = box.ok(logout)  # this token ends at the API and leaves the profile
    assert result.stdout.strip() == "logged out of http://127.0.0.1:8080 (token revoked; profile default)", \
        described(result)
    assert box.sh(".venv/bin/cloudland whoami").returncode == 4
    assert box.sh(".venv/bin/cloudland whoami", CLOUDLAND_TOKEN=after).returncode == 4

    result = box.ok(admin_login)  # admin again, with var/admin-credentials
    assert "logged in to http://127.0.0.1:8080 as admin;" in result.stdout, described(result)
    result = box.ok(org_delete, answers=["y"])  # as an operator (asks first)
    assert re.search(r"^ ?organisation \d+ acme deleted$", result.stdout, re.M), described(result)
    assert [o["name"] for o in listed(box, "org list")] == ["admin"]
    result = box.ok(carol_delete, answers=["y"])  # her only organisation is admin now (asks first)
    assert re.search(r"^ ?user \d+ carol deleted$", result.stdout, re.M), described(result)
    assert users() == {"admin": "admin"}
    assert shown(box, "whoami")["username"] == "admin"


def wait_api(box: Sandbox, probe: str, **env: str) -> None:
    """Until ``probe`` (a CLI command) no longer exits 3 (the API does not answer)."""
    wait_for(lambda: box.sh(probe, **env).returncode != 3, 120, f"the API to answer {probe!r}", every=0.5)


def wait_root(box: Sandbox, root: Background) -> None:
    """Until the root that ``root`` started answers with a ready tree."""
    def ready() -> bool:
        assert root.proc.poll() is None, f"{root.line!r} exited {root.proc.returncode}:\n{root.text()[-3000:]}"
        topology = box.sh(".venv/bin/cloudland tree topology --json")
        return topology.returncode == 0 and json.loads(topology.stdout).get("ready") is True
    wait_for(ready, 180, f"{root.line!r} to answer", every=0.5)


# -- the phases --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)  # it does the most of the three phases; the whole module took 333 s at load 35
def test_quick_start_on_a_fresh_clone(phase: Sandbox) -> None:
    box = phase
    assert not (box.clone / "var").exists()
    cloud = box.start(MAKE_RUN, "make-run-1")
    # The profiles' "lab" is another cloud: an API without a tree on 10.0.0.5:8080 (the README's
    # API-alone line, told where by its CLOUDLAND_API_* settings). It starts while the tree builds.
    lab_state = box.base / "lab-var"
    lab = box.start(API_ALONE, "lab-api", CLOUDLAND_API_HOST=LAB_ADDRESS, CLOUDLAND_API_ROOT_ENDPOINT="",
                    CLOUDLAND_API_STATE_DIR=str(lab_state),
                    CLOUDLAND_API_DATABASE_URL=f"sqlite:///{lab_state / 'cloudland.db'}")
    try:
        text = cloud.wait_for_text(BANNER_END)
        assert "admin credentials: var/admin-credentials (mode 0600)" in text, text[-3000:]
        assert (box.clone / "var" / "admin-credentials").stat().st_mode & 0o777 == 0o600
        # The banner's "try in another terminal" is the README's quick start.
        tried = text.split("Try in another terminal:", 1)[1].splitlines()[1:1 + len(QUICK_START)]
        assert [line.strip() for line in tried] == list(QUICK_START), text[-3000:]

        quick_start(box, again=False)
        tenant_networks(box)
        tenants(box)
        projects(box)

        # "Check it" (README, Running a cluster) on the all-in-one cloud; its `hyper list` is the quick start's.
        hosts, health = (box.ok(line) for line in CLUSTER_CHECK if line != HYPER_LIST)
        assert re.search(r"\byes\b", hosts.stdout), described(hosts)  # this machine's host agent, connected
        assert re.search(r"\broot\b", health.stdout), described(health)
        for line in TREE_COMMANDS:
            box.ok(line)
        # The cluster's CA, made once: make run made it already, and ensure keeps it.
        ca = (box.clone / "var" / "pki" / "ca.pem").read_bytes()
        box.ok(PKI_ENSURE)
        assert (box.clone / "var" / "pki" / "ca.pem").read_bytes() == ca

        shown, configured, lab_login, lab_list, used = PROFILES
        result = box.ok(shown)
        assert re.search(r"\bendpoint\s+http://127\.0\.0\.1:8080\b", result.stdout), described(result)
        assert re.search(r"\blogged_in\s+True\b", result.stdout), described(result)
        box.ok(configured)
        wait_for(lambda: (lab_state / "admin-credentials").exists(), 60, "the lab's admin credentials")
        password = dict(line.split("=", 1) for line in (lab_state / "admin-credentials").read_text().split())
        (box.clone / "pw.txt").write_text(password["password"] + "\n")
        wait_api(box, "CLOUDLAND_ENDPOINT=http://10.0.0.5:8080 .venv/bin/cloudland flavor list")
        result = box.ok(lab_login)
        assert "logged in to http://10.0.0.5:8080 as admin" in result.stdout, described(result)
        # With lab's token, which only lab's API takes: the list came from lab.
        result = box.ok(lab_list)
        assert re.search(r"^0 VMs$", result.stdout, re.M), described(result)
        result = box.ok(used)
        assert re.search(r"\bprofile\s+lab\b", result.stdout) and re.search(r"\bcurrent\s+True\b", result.stdout), \
            described(result)
    finally:
        lab.interrupt()
        status = cloud.interrupt()
    assert "stopping the API, then the tree" in cloud.text(), cloud.text()[-3000:]
    box.wait_empty("Ctrl-C of make run")
    assert status in (0, 2, -signal.SIGINT), f"make run ended with {status}"


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_running_it_yourself(phase: Sandbox) -> None:
    box = phase
    # The CLOUDLAND_ENDPOINT line is for a cloud whose API is elsewhere: CLOUDLAND_API_PORT puts it there.
    cloud = box.start(UP_1000, "up-1000", CLOUDLAND_API_PORT="18080")
    try:
        text = cloud.wait_for_text(BANNER_END)
        assert re.search(r"hypervisors\s+1000 \(11 per leaf rank\)", text), text[-3000:]
        assert "configure --endpoint http://127.0.0.1:18080" in text, text[-3000:]
        # The README leaves "lab" in use: the login stores there, with the endpoint it reached.
        result = box.ok(ENDPOINT_LOGIN)
        assert "logged in to http://127.0.0.1:18080 as admin" in result.stdout, described(result)
        assert "(profile lab)" in result.stdout, described(result)
        result = box.ok("CLOUDLAND_ENDPOINT=http://127.0.0.1:18080 .venv/bin/cloudland vm list")
        assert re.search(r"^0 VMs$", result.stdout, re.M), described(result)
        # As the README says, lab now points where the login went: no variable needed any more.
        result = box.ok(".venv/bin/cloudland vm list")
        assert re.search(r"^0 VMs$", result.stdout, re.M), described(result)
    finally:
        cloud.interrupt()
    box.wait_empty(f"Ctrl-C of {UP_1000!r}")
    box.ok(".venv/bin/cloudland configure --profile default --use")

    # The tree alone, then the API alone beside it: the all-in-one cloud in two terminals.
    tree = box.start(TREE_UP_1000, "tree-up-1000")
    try:
        tree.wait_for_text(TREE_BANNER_END)
        api = box.start(API_ALONE, "api-alone")
        try:
            wait_api(box, ".venv/bin/cloudland vm list")
            box.ok(".venv/bin/cloudland vm list")  # the token of phase 1: the same var/, the same cloud
            # The API alone found the tree alone; the database now knows 1000 hypervisors.
            wait_for(lambda: hypervisor_states(box) == {"up": 1000}, 60, "1000 hypervisors up")
        finally:
            api.interrupt()
    finally:
        tree.interrupt()
    box.wait_empty(f"Ctrl-C of {TREE_UP_1000!r} and {API_ALONE!r}")

    # The root under MPICH's launcher: the tree's commands reach it, and Ctrl-C ends it all.
    root = box.start(ROOT_UNDER_MPIEXEC, "root-mpiexec")
    try:
        wait_root(box, root)
        result = box.ok(".venv/bin/cloudland tree broadcast ping")
        assert re.search(r"\b100/100 replies\b", result.stdout), described(result)
    finally:
        root.interrupt()
    box.wait_empty(f"Ctrl-C of {ROOT_UNDER_MPIEXEC!r}")


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_quick_start_again_in_the_same_checkout(phase: Sandbox) -> None:
    box = phase
    cloud = box.start(MAKE_RUN, "make-run-2")
    try:
        cloud.wait_for_text(BANNER_END)
        # The token of the first run still works: the same var/ keeps the signing key and the users.
        wait_api(box, ".venv/bin/cloudland vm list")
        box.ok(".venv/bin/cloudland vm list")
        # The 900 hypervisors of the bigger tree are not in this one.
        wait_for(lambda: hypervisor_states(box) == {"up": 100, "gone": 900}, 60, "100 hypervisors up, 900 gone")
        quick_start(box, again=True)
    finally:
        cloud.interrupt()
    box.wait_empty("Ctrl-C of the second make run")
