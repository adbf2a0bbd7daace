"""A private libvirtd per lab host: ``qemu:///system`` inside the host is its own daemon.

Why: a network namespace does not hide a filesystem socket, and a lab host's private /run
alone is not enough either: a second libvirtd would share /etc/libvirt (persistent domains,
secrets), /var/lib/libvirt and /var/log/libvirt with the machine's daemon, which other runs
use. Two hypervisors in two lab hosts on one daemon would each report, and reconcile away,
the other's domains (issue 13, must-show 2).

So, in the host's own mount namespace, each of those directories is bound over by a private
copy in the host's private /run (``PRIVATE``: a tmpfs of the host, gone with the host):

- /etc/libvirt: the machine's top-level ``*.conf`` only, never its domains, networks, pools
  or secrets (those are the machine daemon's);
- /var/cache/libvirt: a copy, so the daemon finds QEMU's capabilities cached (else it probes
  QEMU at its first start, tens of seconds here);
- /var/lib/libvirt and /var/log/libvirt: empty, with the directories the QEMU driver and
  virtlogd need (owned as on the machine: QEMU runs as libvirt-qemu).

virtlogd and libvirtd then run in the foreground as children of the caller (their pids are
the programs' own: ``Lab.popen`` execs through nsenter), with their sockets in the host's
/run/libvirt. virtlockd is not needed: no lock manager is configured. ``stop()`` destroys and
undefines every domain the daemon has (they are all the test's: the daemon is private), stops
the daemons, checks that no QEMU is left in the host, and removes the mounts and the copies;
it is safe after a failed ``start()`` and on a host already gone.

The caller reaches the daemon from outside the host through ``/proc/<libvirtd>/root``, which
resolves paths in that process's mount namespace: ``uri`` is ``qemu:///system?socket=...``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any, Self

from .agent import LabError
from .lab import Lab

PRIVATE = "/run/cloudland-libvirt-host"  # in the host's own /run
BOUND = {"etc": "/etc/libvirt", "lib": "/var/lib/libvirt", "cache": "/var/cache/libvirt", "log": "/var/log/libvirt"}
SOCKET = "/run/libvirt/libvirt-sock"
VIRTLOGD_SOCKET = "/run/libvirt/virtlogd-sock"
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 15.0  # libvirtd takes ~2 s to wind down

# Runs inside the host as `sh -c SETUP sh PRIVATE`. mount -n: /run/mount/utab is the host's.
SETUP = r"""
set -eu
root=$1
if grep -q " /etc/libvirt " /proc/self/mountinfo; then echo "a private libvirt is set up already" >&2; exit 1; fi
mkdir -p -m 0700 "$root"
for d in etc lib cache log; do mkdir -m 0755 "$root/$d"; done
for f in /etc/libvirt/*.conf; do [ -e "$f" ] && cp -p "$f" "$root/etc/"; done
[ -d /var/cache/libvirt ] && cp -a /var/cache/libvirt/. "$root/cache/"
mkdir -p "$root/lib/qemu" "$root/log/qemu" "$root/cache/qemu"
[ -d /var/lib/libvirt/qemu ] && chown --reference=/var/lib/libvirt/qemu "$root/lib/qemu"
mkdir -p /etc/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt /run/libvirt
mount -n --bind "$root/etc" /etc/libvirt
mount -n --bind "$root/lib" /var/lib/libvirt
mount -n --bind "$root/cache" /var/cache/libvirt
mount -n --bind "$root/log" /var/log/libvirt
"""
# Undoes SETUP: every bind that is there, then the copies (also after a half-done SETUP).
TEARDOWN = r"""
root=$1
for point in /etc/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt; do
    if grep -q " $point " /proc/self/mountinfo; then umount -n -l "$point"; fi
done
rm -rf "$root"
"""


def _libvirt() -> Any:
    import libvirt  # the caller's venv has it; the lab package itself does not need it

    return libvirt


class HostLibvirt:
    """The private libvirtd (and virtlogd) of one lab host: ``HostLibvirt(lab, "h1").start()``."""

    def __init__(self, lab: Lab, host: str) -> None:
        self.lab, self.host = lab, host
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.log = lab.lab_dir / f"libvirt-{host}.log"  # both daemons' output, readable from outside
        self.started_s = 0.0
        self._conn: Any = None

    @property
    def uri(self) -> str:
        """The daemon's URI from outside the host (this machine's own processes)."""
        proc = self.procs.get("libvirtd")
        if proc is None:
            raise LabError(f"lab {self.lab.prefix!r}, host {self.host!r}: no private libvirtd started")
        return f"qemu:///system?socket=/proc/{proc.pid}/root{SOCKET}"

    @property
    def conn(self) -> Any:
        """A connection to the host's daemon, opened once (only once it runs in the host)."""
        if self._conn is None:
            if not self._inside("libvirtd"):
                raise LabError(f"lab {self.lab.prefix!r}, host {self.host!r}: libvirtd is not running in the host")
            self._conn = _libvirt().open(self.uri)
        return self._conn

    def start(self, timeout: float = START_TIMEOUT_S) -> Self:
        """Bind the private directories, start virtlogd and libvirtd, wait until libvirtd answers.
        On a failure, everything started is stopped and removed before the error."""
        began = time.monotonic()
        try:
            self._sh(SETUP, "set up the private libvirt directories")
            with open(self.log, "ab") as log:
                self.procs["virtlogd"] = self.lab.popen(self.host, ["/usr/sbin/virtlogd"], cwd="/",
                                                        stdin=subprocess.DEVNULL, stdout=log, stderr=log)
                self._wait(lambda: self._exists(VIRTLOGD_SOCKET), timeout, "virtlogd's socket")
                self.procs["libvirtd"] = self.lab.popen(self.host, ["/usr/sbin/libvirtd"], cwd="/",
                                                        stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            self._wait(self._answers, timeout, "libvirtd to answer")
        except BaseException:
            self.stop()
            raise
        self.started_s = time.monotonic() - began
        return self

    def domains(self) -> list[str]:
        """Names of every domain this daemon has, running or only defined."""
        return sorted(d.name() for d in self.conn.listAllDomains())

    def stop(self) -> None:
        """Destroy and undefine every domain, stop the daemons, remove the mounts and copies;
        raises LabError afterwards if a QEMU of the host outlived its daemon. After the lab
        went down (which killed every process of the host) it only reaps the daemons."""
        libvirt = _libvirt()
        errors = []
        try:
            host_up = self.host in self.lab.hosts
        except LabError:
            host_up = False  # the lab is down: the host's processes, mounts and /run went with it
        if host_up and (self._conn is not None or self._inside("libvirtd")):
            try:
                # Never another host's daemon, nor the machine's (shared by other runs).
                if self.conn.getHostname() != self.host:
                    raise LabError(f"{self.uri} is not this host's daemon: its domains are left alone")
                for domain in self.conn.listAllDomains():
                    persistent = domain.isPersistent()
                    if domain.isActive():
                        domain.destroy()  # a transient domain is gone with it
                    if persistent:
                        domain.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
            except (libvirt.libvirtError, LabError) as exc:
                errors.append(f"domains: {exc}")
        if self._conn is not None:
            try:
                self._conn.close()
            except libvirt.libvirtError:
                pass
            self._conn = None
        for name in ("libvirtd", "virtlogd"):
            proc = self.procs.pop(name, None)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        if host_up:
            left = self.qemu_pids()
            if left:
                errors.append(f"QEMU processes left: {left}")
            try:
                self._sh(TEARDOWN, "remove the private libvirt directories")
            except LabError as exc:
                errors.append(str(exc))
        if errors:
            raise LabError(f"lab {self.lab.prefix!r}, host {self.host!r}: private libvirt stop: {'; '.join(errors)}")

    def qemu_pids(self) -> list[int]:
        """QEMU processes running inside the host."""
        found = []
        for pid in self.lab.pids(self.host):
            try:
                argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if os.path.basename(argv0).startswith(b"qemu-system-"):
                found.append(pid)
        return sorted(found)

    def log_tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    # -- internals ----------------------------------------------------------------------

    def _sh(self, script: str, what: str) -> None:
        done = self.lab.run(self.host, ["sh", "-c", script, "sh", PRIVATE], cwd="/", stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise LabError(f"lab {self.lab.prefix!r}, host {self.host!r}: cannot {what}: {done.stderr.strip()}")

    def _inside(self, name: str) -> bool:
        """Whether daemon ``name`` runs its program yet. Until then its pid is nsenter's (or
        env's), which may not have entered the host's mount namespace: its /proc/<pid>/root
        would be the machine's, and its /run/libvirt the machine daemon's sockets."""
        proc = self.procs.get(name)
        try:
            return proc is not None and os.readlink(f"/proc/{proc.pid}/exe") == f"/usr/sbin/{name}"
        except OSError:
            return False

    def _exists(self, path: str) -> bool:
        return self._inside("virtlogd") and os.path.exists(f"/proc/{self.procs['virtlogd'].pid}/root{path}")

    def _answers(self) -> bool:
        libvirt = _libvirt()
        if not self._inside("libvirtd"):
            return False
        try:
            hostname = self.conn.getHostname()
        except libvirt.libvirtError:
            self._conn = None
            return False
        if hostname != self.host:  # the lab's hosts have their own hostname: a daemon elsewhere answered
            raise LabError(f"lab {self.lab.prefix!r}, host {self.host!r}: {self.uri} reached the libvirtd of "
                           f"{hostname!r}, not this host's")
        return True

    def _wait(self, ready: Any, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while not ready():
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise LabError(f"lab {self.lab.prefix!r}, host {self.host!r}: {name} exited {proc.returncode} "
                                   f"before {what}:\n{self.log_tail()}")
            if time.monotonic() > end:
                raise LabError(f"lab {self.lab.prefix!r}, host {self.host!r}: no {what} within {timeout:.0f}s:\n"
                               f"{self.log_tail()}")
            time.sleep(0.05)
