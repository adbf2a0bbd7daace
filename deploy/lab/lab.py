"""``Lab``: emulated hosts on one machine, each a set of namespaces on a shared underlay switch.

Layout of a lab with prefix P (every name carries the prefix, so labs never collide):

- ``/run/netns/P-sw``: the switch, a network namespace holding the bridge ``P-br``;
- per host H: the network namespace ``/run/netns/P-H`` with ``eth0`` (a veth whose switch end
  is the bridge port ``P-H``), its UTS and mount namespaces kept alive by bind mounts on
  ``<lab dir>/ns/H.uts`` and ``H.mnt``;
- the lab directory (``/run/cloudland-lab/P`` by default): ``state.json`` (what ``lab-ssh`` and
  the CLI read), ``etc-hosts`` (every host's /etc/hosts), ``hostfile``, ``ns/``.

Division of labour: the lab's Python side cables hosts with pyroute2 (switch, ports, network
namespaces: a host's "hardware"), and each host configures itself with one boot script run
inside its namespaces (hostname, mounts, its address with ``ip``), as a real machine would.
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from pyroute2 import IPRoute, netns

from .agent import (
    BRIDGE,
    NETNS_DIR,
    STATE_ROOT,
    SWITCH,
    LabError,
    State,
    load_state,
    machine_link,
    mount,
    netns_name,
    ns_id,
    nsenter_argv,
    save_state,
    umount,
)
from .cleanup import kill_all, leftovers, pids_in, sweep

PREFIX_RE = re.compile(r"[a-z][a-z0-9]{0,9}")
HOST_RE = re.compile(r"[a-z][a-z0-9-]*")
MACHINE = "m"  # the switch's port for this machine itself (attach_machine)
RESERVED = {SWITCH, BRIDGE, MACHINE}
IFNAMSIZ = 15  # longest Linux interface name
MTU = 1500
MS_BIND, MS_PRIVATE = 0x1000, 0x40000
LAB_SSH = Path(__file__).with_name("lab-ssh")
HOST_PRIVATE = ("/tmp", "/dev/shm", "/run")  # each host has its own (the boot script mounts them)

# Runs inside the new host's namespaces as `sh -c BOOT sh HOST ADDRESS/LEN LAB_DIR STAGE LAB_IN_RUN KEEP`.
# mount -n: util-linux would otherwise update /run/mount/utab, which is in the /run being replaced.
BOOT = r"""
set -eu
host=$1 address=$2 lab=$3 stage=$4 lab_in_run=$5 keep=$6
hostname "$host"
# The copy of the root mount namespace includes other namespaces' bind mounts (/run/netns/*,
# other hosts' UTS files, other labs'): drop them, or they live as long as this host. One may
# vanish meanwhile (a lab going down unlinks its files, which detaches them everywhere).
awk '{for (i = 7; i <= NF; i++) if ($i == "-") { if ($(i + 1) == "nsfs") print $5; break }}' /proc/self/mountinfo |
while read -r point; do umount -n -l "$point" 2>/dev/null || true; done
if grep -q ' - nsfs ' /proc/self/mountinfo; then
    echo "namespace bind mounts left in $host:" >&2; grep ' - nsfs ' /proc/self/mountinfo >&2; exit 1
fi
# A fresh /tmp, built aside first: the installation, if it lives under the machine's /tmp
# (KEEP, ':'-separated), is bound into it at the same path, as it would be installed on a host.
mount -n -t tmpfs -o mode=1777,nosuid,nodev lab-tmp "$stage"
for path in $(echo "$keep" | tr ':' ' '); do
    mkdir -p "$stage/${path#/tmp/}"
    mount -n --bind "$path" "$stage/${path#/tmp/}"
done
mount -n --move "$stage" /tmp
mount -n -t tmpfs -o mode=1777,nosuid,nodev lab-shm /dev/shm
# A fresh /run, built aside first: the lab directory (under the real /run) is bound into it
# at the same path before the real /run disappears from view, so lab-ssh finds the lab.
mount -n -t tmpfs -o mode=755,nosuid,nodev lab-run "$stage"
mkdir -m 1777 "$stage/lock"
if [ -n "$lab_in_run" ]; then
    mkdir -p "$stage/$lab_in_run"
    mount -n --bind "$lab" "$stage/$lab_in_run"
fi
mount -n --move "$stage" /run
mount -n --bind "$lab/etc-hosts" /etc/hosts
# sysfs as this host's network namespace sees it (/sys/class/net: lo and eth0), like ip netns exec.
umount -n -l /sys
mount -n -t sysfs lab-sys /sys
ip link set lo up
ip address add "$address" dev eth0
ip link set eth0 up
"""
# A reboot empties tmpfs: delete what is on the host's own /tmp, /dev/shm and /run only
# (-xdev: never below the lab directory bound into /run), then make /run/lock again.
WIPE = "find /tmp /dev/shm /run -xdev -mindepth 1 -delete 2>/dev/null; mkdir -p -m 1777 /run/lock"


def validate_host(prefix: str, name: str) -> None:
    """Refuse names that are no valid hostname, collide with the switch, or make the switch
    port name ``<prefix>-<name>`` longer than an interface name may be."""
    if not HOST_RE.fullmatch(name) or name in RESERVED:
        raise LabError(f"bad host name {name!r}: lowercase letters, digits and '-', starting with a letter, "
                       f"not {' or '.join(sorted(RESERVED))}")
    if len(netns_name(prefix, name)) > IFNAMSIZ:
        raise LabError(f"host name {name!r} too long for lab {prefix!r}: port {netns_name(prefix, name)!r} "
                       f"exceeds {IFNAMSIZ} characters")


def installation_in_tmp() -> list[Path]:
    """This checkout and its interpreter's prefix, where they lie under the machine's /tmp (a CI
    clone may): every host must see them, as every real host has the installation at one path."""
    found: list[Path] = []
    for path in sorted({Path(__file__).resolve().parents[2], Path(sys.prefix).resolve()}, key=lambda p: len(p.parts)):
        if path.is_relative_to("/tmp") and path != Path("/tmp") and not any(path.is_relative_to(f) for f in found):
            found.append(path)
    return found


class Lab:
    """Hosts emulated on this machine: ``Lab(prefix, subnet).up(["ctl", "h1", ...])``.

    Each host has its own network namespace on the switch (address ``.1``, ``.2``, ... of
    ``subnet`` in order), hostname, /tmp, /dev/shm, /run, and an /etc/hosts naming every lab
    host. Use as a context manager, or call ``down()``: it removes everything, also after a
    failed ``up()``. Needs root.
    """

    def __init__(self, prefix: str = "lab", subnet: str = "10.77.0.0/24", state_root: Path = STATE_ROOT) -> None:
        if not PREFIX_RE.fullmatch(prefix):
            raise LabError(f"bad lab prefix {prefix!r}: 1-10 lowercase letters and digits, starting with a letter")
        self.prefix = prefix
        try:
            # IPv4: the hosts' MACs are derived from their addresses (_cable).
            self.subnet = ipaddress.IPv4Network(subnet)
        except ValueError as error:
            raise LabError(f"lab {prefix!r}: bad subnet {subnet!r}: {error}") from None
        self.state_root = Path(state_root)
        self.lab_dir = self.state_root / prefix
        if any(self.lab_dir.is_relative_to(private) for private in HOST_PRIVATE[:2]):
            raise LabError(f"lab directory {self.lab_dir} would be hidden inside hosts (private /tmp, /dev/shm)")
        self._state: State | None = None
        self._switch: IPRoute | None = None

    @classmethod
    def attach(cls, prefix: str = "lab", state_root: Path = STATE_ROOT) -> Self:
        """The lab ``prefix`` that is already up (brought up by another process)."""
        lab_dir = Path(state_root) / prefix
        state = load_state(lab_dir)
        lab = cls(prefix, state["subnet"], state_root)
        lab._state = state
        return lab

    # -- building -----------------------------------------------------------------------

    def up(self, hosts: Iterable[str]) -> Self:
        """Build the switch and the hosts; on any failure remove what was built, then raise."""
        names = list(hosts)
        for name in names:
            validate_host(self.prefix, name)
        if len(set(names)) != len(names):
            raise LabError(f"lab {self.prefix!r}: duplicate host names in {names}")
        if self._state is not None:
            raise LabError(f"lab {self.prefix!r} is already up")
        found = leftovers(self.prefix, self.state_root)
        if found:
            raise LabError(f"lab {self.prefix!r} exists already ({', '.join(found[:4])}...): "
                           f"`python -m cloudland_lab down --prefix {self.prefix}` or cloudland_lab.sweep()")
        try:
            self._build_switch()
            self._build_hosts(names)
        except BaseException:
            self.down()
            raise
        return self

    def _build_switch(self) -> None:
        (self.lab_dir / "ns").mkdir(parents=True)
        (self.lab_dir / "stage").mkdir()
        # unshare(1) can only bind a mount namespace onto a mount that does not propagate.
        mount(str(self.lab_dir / "ns"), self.lab_dir / "ns", None, MS_BIND)
        mount("none", self.lab_dir / "ns", None, MS_PRIVATE)
        self._state = {"prefix": self.prefix, "subnet": str(self.subnet), "hosts": {},
                       "root_mnt": list(ns_id("/proc/self/ns/mnt")), "creator_pid": os.getpid()}
        self._write_hosts()
        switch = netns_name(self.prefix, SWITCH)
        netns.create(switch)
        self._switch = IPRoute(netns=switch, flags=0)
        self._switch.link("add", ifname=netns_name(self.prefix, BRIDGE), kind="bridge")
        self._switch.link("set", index=self._port_index(BRIDGE), state="up")

    def _build_hosts(self, names: list[str]) -> None:
        """Cable the hosts one by one, each booting while the next is cabled. A boot mostly
        waits for the kernel's mount bookkeeping (RCU grace periods), not for the CPU, so
        booting side by side makes a 5-host lab come up about twice as fast."""
        boots: dict[str, subprocess.Popen[str]] = {}
        errors: dict[str, str] = {}
        try:
            for name in names:
                boots[name] = subprocess.Popen(self._cable(name), stdin=subprocess.DEVNULL,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        finally:
            # Every boot started ends before anything else happens, also when cabling a later
            # host failed: the clean-up must not race a half-booted host.
            for name, boot in boots.items():
                errors[name] = boot.communicate(timeout=60)[1].strip()
        for name, boot in boots.items():
            host = self._host(name)
            if boot.returncode != 0:
                raise LabError(f"lab {self.prefix!r}: boot of host {name!r} (netns {host['netns']}) failed: "
                               f"{errors[name]}")
            host["ns"] = {"net": list(ns_id(NETNS_DIR / host["netns"])),
                          **{kind: list(ns_id(host[kind])) for kind in ("uts", "mnt")}}
        self._save()

    def _cable(self, name: str) -> list[str]:
        """Give a host its namespaces and its cable to the switch; returns its boot command."""
        state = self._up_state()
        address = self._free_address(name)
        files = {kind: str(self.lab_dir / "ns" / f"{name}.{kind}") for kind in ("uts", "mnt")}
        host: dict[str, Any] = {"address": str(address), "netns": netns_name(self.prefix, name), **files, "cut": False}
        state["hosts"][name] = host
        self._save()
        self._write_hosts()  # before the boot, so the new host finds itself too
        netns.create(host["netns"])
        for file in files.values():
            Path(file).touch()
        # A MAC derived from the address: a host re-added with an old address keeps the other
        # hosts' ARP entries right.
        mac = "02:00:" + ":".join(f"{b:02x}" for b in address.packed)
        self.switch.link("add", ifname=host["netns"], kind="veth", mtu=MTU,
                         peer={"ifname": "eth0", "net_ns_fd": host["netns"], "address": mac, "mtu": MTU})
        self.switch.link("set", index=self._port_index(name), master=self._port_index(BRIDGE), state="up")
        in_run = self.lab_dir.relative_to("/run") if self.lab_dir.is_relative_to("/run") else ""
        return ["nsenter", f"--net={NETNS_DIR / host['netns']}", "unshare", f"--uts={files['uts']}",
                f"--mount={files['mnt']}", "--propagation", "private", "sh", "-c", BOOT, "sh",
                name, f"{address}/{self.subnet.prefixlen}", str(self.lab_dir), str(self.lab_dir / "stage"), str(in_run),
                ":".join(str(p) for p in installation_in_tmp())]

    def attach_machine(self) -> str:
        """Cable this machine itself (its root network namespace) to the switch at the subnet's
        last address, and return that address: tests reach services inside lab hosts (the
        root's gRPC, the API) from outside without entering a host. ``down()`` removes it."""
        address = list(self.subnet.hosts())[-1]
        state = self._up_state()
        if state.get("machine"):
            return str(state["machine"])
        outside = machine_link(self.prefix)
        with IPRoute() as machine:
            machine.link("add", ifname=outside, kind="veth", mtu=MTU,
                         peer={"ifname": netns_name(self.prefix, MACHINE), "net_ns_fd": netns_name(self.prefix, SWITCH),
                               "mtu": MTU})
            index = machine.link_lookup(ifname=outside)[0]
            machine.addr("add", index=index, address=str(address), prefixlen=self.subnet.prefixlen)
            machine.link("set", index=index, state="up")
        self.switch.link("set", index=self._port_index(MACHINE), master=self._port_index(BRIDGE), state="up")
        state["machine"] = str(address)
        self._save()
        return str(address)

    def add_host(self, name: str) -> str:
        """Add a host to the running lab; returns its address. The others keep running."""
        validate_host(self.prefix, name)
        if name in self._up_state()["hosts"]:
            raise LabError(f"lab {self.prefix!r} has a host {name!r} already")
        try:
            self._build_hosts([name])
        except BaseException:
            self._remove(name)
            raise
        return self.address(name)

    def remove_host(self, name: str) -> None:
        """Kill a host's processes and remove it; the others keep running."""
        self._host(name)
        self._remove(name)

    def _remove(self, name: str) -> None:
        state = self._up_state()
        host = state["hosts"].get(name)
        if host is None:
            return
        kill_all(self._ns_ids(name), f"lab {self.prefix!r}, host {name!r}")
        try:
            self.switch.link("del", index=self._port_index(name))  # takes eth0 with it
        except LabError:
            pass  # never cabled (a failed add)
        for kind in ("uts", "mnt"):
            if os.path.ismount(host[kind]):
                umount(host[kind])
            Path(host[kind]).unlink(missing_ok=True)
        if (NETNS_DIR / host["netns"]).exists():
            netns.remove(host["netns"])
        del state["hosts"][name]
        self._save()
        self._write_hosts()

    def down(self) -> None:
        """Kill every process of every host, delete namespaces, links, mounts and the lab
        directory. Safe to call twice, and after a half-built ``up()``."""
        try:
            sweep(self.prefix, self.state_root, self._switch)
        finally:
            if self._switch is not None:
                self._switch.close()
            self._switch, self._state = None, None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.down()

    # -- looking ------------------------------------------------------------------------

    @property
    def hosts(self) -> list[str]:
        """Host names, in the order they were added."""
        return list(self._up_state()["hosts"])

    def address(self, name: str) -> str:
        """The host's underlay address."""
        return str(self._host(name)["address"])

    def pids(self, name: str) -> set[int]:
        """Every process running inside the host."""
        return pids_in(self._ns_ids(name))

    def is_cut(self, name: str) -> bool:
        return bool(self._host(name)["cut"])

    @property
    def ssh(self) -> Path:
        """The launch agent (``lab-ssh``) to give MPI launchers in place of ssh."""
        return LAB_SSH

    def env(self) -> dict[str, str]:
        """Environment that points ``lab-ssh`` at this lab (needed only when several labs are up)."""
        return {"CLOUDLAND_LAB_DIR": str(self.lab_dir)}

    def hostfile(self, names: Iterable[str] | None = None, path: Path | None = None) -> Path:
        """Write an MPI hostfile (one host name a line; default: every host) and return its path
        (default ``<lab dir>/hostfile``, visible inside the hosts too)."""
        chosen = list(self.hosts if names is None else names)
        for name in chosen:
            self._host(name)
        path = path or self.lab_dir / "hostfile"
        path.write_text("".join(f"{name}\n" for name in chosen))
        return path

    # -- running ------------------------------------------------------------------------

    def command(self, name: str, argv: Sequence[str] | str, cwd: str | os.PathLike[str] | None = None) -> list[str]:
        """The argv that runs ``argv`` inside the host (a string runs under ``sh -c``), in the
        host's directory ``cwd``. Default: the caller's directory, so relative paths mean the
        same, unless it is in a directory each host has its own of (/tmp, ...) and not in the
        installation bound into every host from there: then /."""
        self._host(name)
        words = ["sh", "-c", argv] if isinstance(argv, str) else list(argv)
        here = os.getcwd()
        private = any(here == d or here.startswith(d + "/") for d in HOST_PRIVATE)
        visible = any(Path(here).is_relative_to(path) for path in installation_in_tmp())  # bound into each host
        default = "/" if private and not visible else here
        return nsenter_argv(self._up_state(), name, wd=os.fspath(cwd or default)) + words

    def run(self, name: str, argv: Sequence[str] | str, **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """``subprocess.run`` inside the host; ``cwd`` is the directory inside the host."""
        return subprocess.run(self.command(name, argv, kwargs.pop("cwd", None)), **kwargs)

    def popen(self, name: str, argv: Sequence[str] | str, **kwargs: Any) -> subprocess.Popen[Any]:
        """``subprocess.Popen`` inside the host. Its pid is the program's own (nsenter execs it)."""
        return subprocess.Popen(self.command(name, argv, kwargs.pop("cwd", None)), **kwargs)

    # -- failures -----------------------------------------------------------------------

    def cut(self, name: str) -> None:
        """Pull the host's cable: its switch port goes down; its processes keep running."""
        self._set_port(name, up=False)

    def restore(self, name: str) -> None:
        """Plug the host's cable back in."""
        self._set_port(name, up=True)

    def crash(self, name: str, wipe: bool = False) -> None:
        """SIGKILL every process inside the host, as a host crash would. Its namespaces stay:
        starting processes again "reboots" it. ``wipe`` also empties /tmp, /dev/shm and /run,
        as a reboot empties tmpfs."""
        kill_all(self._ns_ids(name), f"lab {self.prefix!r}, host {name!r}")
        if wipe:
            self.run(name, WIPE, check=True, cwd="/")

    # -- internals ----------------------------------------------------------------------

    @property
    def switch(self) -> IPRoute:
        """Netlink handle in the switch namespace, opened once (each open forks a helper)."""
        if self._switch is None:
            self._up_state()
            self._switch = IPRoute(netns=netns_name(self.prefix, SWITCH), flags=0)
        return self._switch

    def _up_state(self) -> State:
        if self._state is None:
            raise LabError(f"lab {self.prefix!r} is not up")
        return self._state

    def _host(self, name: str) -> dict[str, Any]:
        hosts = self._up_state()["hosts"]
        if name not in hosts:
            raise LabError(f"lab {self.prefix!r} has no host {name!r} (hosts: {', '.join(hosts) or 'none'})")
        return hosts[name]  # type: ignore[no-any-return]

    def _ns_ids(self, name: str) -> set[tuple[int, int]]:
        return {(dev, ino) for dev, ino in self._host(name).get("ns", {}).values()}

    def _port_index(self, name: str) -> int:
        found = self.switch.link_lookup(ifname=netns_name(self.prefix, name))
        if not found:
            raise LabError(f"lab {self.prefix!r}: no link {netns_name(self.prefix, name)!r} in the switch namespace")
        return int(found[0])

    def _set_port(self, name: str, up: bool) -> None:
        host = self._host(name)
        self.switch.link("set", index=self._port_index(name), state="up" if up else "down")
        host["cut"] = not up
        self._save()

    def _free_address(self, name: str) -> ipaddress.IPv4Address:
        used = {h["address"] for h in self._up_state()["hosts"].values()}
        used.add(str(list(self.subnet.hosts())[-1]))  # kept for attach_machine
        for address in self.subnet.hosts():
            if str(address) not in used:
                return address
        raise LabError(f"lab {self.prefix!r}: no free address in {self.subnet} for host {name!r}")

    def _save(self) -> None:
        save_state(self.lab_dir, self._up_state())

    def _write_hosts(self) -> None:
        # Rewritten in place: every host has this very file bind-mounted as /etc/hosts, and a
        # new file (rename) would not reach them.
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback",
                 f"# lab {self.prefix}: every host on the underlay {self.subnet}"]
        lines += [f"{h['address']}\t{name}" for name, h in self._up_state()["hosts"].items()]
        # Written over the old text, then cut to length: a reader never sees an empty file.
        path = self.lab_dir / "etc-hosts"
        with open(path, "r+" if path.exists() else "w") as file:
            file.write("\n".join(lines) + "\n")
            file.truncate()
