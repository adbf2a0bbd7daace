"""A throwaway single-node Ceph (Debian's Pacific): one monitor, one manager, one OSD on
memstore, bound to one address (127.0.0.1 by default; a lab's underlay address when lab hosts
are its clients, as a host's network namespace cannot reach this machine's loopback) on free
ports, everything in one private (0700) directory.

Built by hand as shared/reference/storage-on-this-machine.md measured it: keyrings with
``ceph-authtool`` (every daemon's and the ``client.cloudland`` user's key imported into the
monitor's keyring before ``--mkfs``, so no ``ceph auth`` round trip is needed), ``monmaptool``,
``ceph-mon --mkfs``, then the daemons in the foreground as children of this process (so their
exit is seen at once). ``stop`` ends the OSD first, then the manager and the monitor, and
removes the directory, whatever state the start reached.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

PACKAGES = "ceph-mon ceph-osd ceph-mgr ceph-common qemu-block-extra"
POOL = "volumes"
USER = "cloudland"
START_TIMEOUT_S = 120.0


def ceph_missing() -> str | None:
    """Why a Ceph cluster cannot be started here, or None if it can."""
    for tool in ("ceph-mon", "ceph-mgr", "ceph-osd", "ceph-authtool", "monmaptool", "ceph", "rbd"):
        if shutil.which(tool) is None:
            return f"{tool} not found: apt-get install --no-install-recommends {PACKAGES} (deploy/bootstrap.sh does)"
    return None


def _free_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        port: int = probe.getsockname()[1]
        return port


class CephCluster:
    """One cluster in ``base``, listening on ``address`` only; ``monitors`` and ``keyring`` are
    what a client needs. Lab hosts have a private /tmp: give them a ``base`` they see (/var/tmp)."""

    def __init__(self, base: Path | None = None, address: str = "127.0.0.1") -> None:
        self.base = base or Path(tempfile.mkdtemp(prefix="cloudland-ceph-"))
        self.address = address
        self.base.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.base, 0o700)
        self.fsid = str(uuid.uuid4())
        self.mon_port = _free_port(address)
        # The OSD and manager bind from this range: a random slice of the ephemeral ports'
        # lower half, so two sessions side by side rarely meet (the reference ran two).
        self.port_min = random.randrange(20000, 30000, 50)
        self.conf = self.base / "ceph.conf"
        self.admin_keyring = self.base / "client.admin.keyring"
        self.keyring = self.base / f"client.{USER}.keyring"
        self.client_conf = self.base / "client.conf"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.started_s = 0.0

    @property
    def monitors(self) -> tuple[tuple[str, int], ...]:
        return ((self.address, self.mon_port),)

    def _write_conf(self) -> None:
        b = self.base
        self.conf.write_text(f"""[global]
fsid = {self.fsid}
mon host = [v2:{self.address}:{self.mon_port}]
public addr = {self.address}
cluster addr = {self.address}
ms bind ipv6 = false
ms bind msgr1 = false
ms bind msgr2 = true
ms bind port min = {self.port_min}
ms bind port max = {self.port_min + 49}
run dir = {b}/run
osd pool default size = 1
osd pool default min size = 1
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
auth allow insecure global id reclaim = false
mon data avail warn = 2
mon data avail crit = 1
mgr initial modules =
osd objectstore = memstore
memstore device bytes = 1073741824

[client.admin]
keyring = {self.admin_keyring}

[mon]
mon data = {b}/mon/$name
log file = {b}/log/$name.log

[mgr]
mgr data = {b}/mgr/$name
keyring = {b}/mgr/$name/keyring
log file = {b}/log/$name.log

[osd]
osd data = {b}/osd/$name
keyring = {b}/osd/$name/keyring
log file = {b}/log/$name.log
""")

    def _run(self, *argv: str, timeout: float = 60.0) -> str:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}{done.stderr}\n"
                               f"{self.log_tail()}")
        return done.stdout

    def _key(self, keyring: Path, name: str, *caps: str) -> None:
        args = [arg for cap in caps for arg in ("--cap", *cap.split(" ", 1))]
        self._run("ceph-authtool", "--create-keyring", str(keyring), "--gen-key", "-n", name, *args)
        os.chmod(keyring, 0o600)

    def _daemon(self, name: str, *argv: str) -> None:
        self.procs[name] = subprocess.Popen([*argv, "-c", str(self.conf), "-f"], stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def ceph(self, *args: str, timeout: float = 60.0) -> str:
        return self._run("ceph", "-c", str(self.conf), "--connect-timeout", "30", *args, timeout=timeout)

    def start(self) -> CephCluster:
        began = time.monotonic()
        b = self.base
        for sub in ("run", "log", "mon/mon.a", "mgr/mgr.x", "osd/osd.0"):
            (b / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
        self._write_conf()
        mon_keyring = b / "mon.keyring"
        self._key(mon_keyring, "mon.", "mon allow *")
        self._key(self.admin_keyring, "client.admin", "mon allow *", "osd allow *", "mgr allow *", "mds allow *")
        self._key(b / "mgr/mgr.x/keyring", "mgr.x", "mon allow profile mgr", "osd allow *", "mds allow *")
        self._key(b / "osd/osd.0/keyring", "osd.0", "mon allow profile osd", "mgr allow profile osd", "osd allow *")
        self._key(self.keyring, f"client.{USER}", "mon profile rbd", "osd profile rbd pool=" + POOL,
                  "mgr profile rbd pool=" + POOL)
        for other in (self.admin_keyring, b / "mgr/mgr.x/keyring", b / "osd/osd.0/keyring", self.keyring):
            self._run("ceph-authtool", str(mon_keyring), "--import-keyring", str(other))
        self._run("monmaptool", "--create", "--addv", "a", f"[v2:{self.address}:{self.mon_port}]", "--fsid", self.fsid,
                  str(b / "monmap"))
        self._run("ceph-mon", "-c", str(self.conf), "--mkfs", "-i", "a", "--monmap", str(b / "monmap"),
                  "--keyring", str(mon_keyring))
        self._daemon("mon", "ceph-mon", "-i", "a")
        self._daemon("mgr", "ceph-mgr", "-i", "x")
        osd_uuid = str(uuid.uuid4())
        self.ceph("osd", "new", osd_uuid, "0")
        self._run("ceph-osd", "-c", str(self.conf), "-i", "0", "--mkfs", "--no-mon-config", "--osd-uuid", osd_uuid)
        self._daemon("osd", "ceph-osd", "-i", "0")
        self.ceph("osd", "pool", "create", POOL, "8", "8")
        self._run("rbd", "-c", str(self.conf), "pool", "init", POOL, timeout=START_TIMEOUT_S)
        # What a client (qemu-io in tests) reads: the monitor only, no daemon's log or socket.
        self.client_conf.write_text(f"[global]\nmon host = [v2:{self.address}:{self.mon_port}]\n")
        self._check_alive()
        self.started_s = time.monotonic() - began
        return self

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"ceph {name} exited {proc.returncode}\n{self.log_tail()}")

    def stop(self) -> None:
        """The OSD first (it waits for a monitor that went), then the manager and the monitor."""
        for name in ("osd", "mgr", "mon"):
            proc = self.procs.pop(name, None)
            if proc is None:
                continue
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)
        shutil.rmtree(self.base, ignore_errors=True)

    def log_tail(self, lines: int = 15) -> str:
        tails = []
        for log in sorted((self.base / "log").glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            tails.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(tails)
