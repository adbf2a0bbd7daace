"""One settings object for the tree, read from ``CLOUDLAND_*`` with embedded defaults.

Validated at start-up: a bad value raises ConfigError naming the variable.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cloudland.addresses import canonical_ip
from cloudland.errors import ConfigError
from cloudland.topology import DEFAULT_FANOUT, Shape

DEFAULT_GRPC = "127.0.0.1:50551"
_TRUE = ("1", "true", "yes", "on")
# The network objects' name prefix (agents/network/names.py): a link is <prefix><kind><vni>, and
# must stay within 15 characters with a VNI of 8 digits.
NETWORK_PREFIX_RE = re.compile(r"[a-z][a-z0-9]{0,5}")
_FALSE = ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class TreeSettings:
    """Everything the root needs to build and run the tree."""

    hypervisors: int = 100
    per_leaf: int = 0                # 0: choose so the tree stays near max_ranks ranks
    fanout: int = DEFAULT_FANOUT     # 0: flat (the root talks to every leaf)
    max_ranks: int = 100             # the automatic per_leaf aims below this many ranks
    grpc: str = DEFAULT_GRPC
    # The root's rendezvous (proto/README.md §10): where ranks and host agents reach it.
    # Loopback and a free port for the all-in-one cloud; an underlay address in a cluster.
    listen: str = "127.0.0.1:0"
    # A cluster's hosts join by themselves (their host agents); without it the root starts
    # one host agent on this machine that runs every leaf (the all-in-one cloud).
    cluster: bool = False
    heartbeat_s: float = 1.0
    slow_after: int = 3              # missed heartbeats before a peer is SLOW
    lost_after: int = 10             # missed heartbeats before a silent peer is LOST
    max_sleep_s: float = 0.005       # longest idle poll sleep with a peer on another host
    local_max_sleep_s: float = 0.1   # ... when every peer is on this host and rings our doorbell
    linger_s: float = 0.05           # longest a reply waits in a relay's batch
    deadline_s: float = 30.0         # default command deadline
    driver: str = "test"             # "test": simulated hypervisors on libvirt test:///
    libvirt_uri: str = "qemu:///system"  # used when driver == "libvirt"
    vnc_listen: str = "127.0.0.1"    # where real guests' VNC displays listen (driver "libvirt"); "": none
    state_dir: Path = field(default_factory=lambda: Path("var"))
    # The tree's CA and certificates (cloudland/pki.py); "" is <state_dir>/pki.
    pki: str = ""
    test_ops: bool = False           # register test-only agent operations (tests only)
    # The agents' data plane of tenant networks (agents/network/): "kernel" (bridges, VXLAN,
    # dnsmasq), "netns" (the kernel's, each simulated hypervisor in a namespace of its own:
    # agents/network/hostns.py), "fake" (in memory), "" for the driver's: kernel with "libvirt",
    # fake with "test".
    network: str = ""
    network_prefix: str = "cl"       # the name prefix of every network object the agents make
    # The operator's Ceph pools for volumes: a JSON file on every host (agents/storage/ops.py
    # load_rbd_backends); "" for none (every hypervisor still has its local volumes).
    rbd_backends: str = ""
    # The nice value of the tree's processes (root, host agents, ranks): ahead of tenants' work,
    # so healing holds its bounds on a busy host (cloudland/priority.py); 0: the default level.
    tree_nice: int = -10

    def __post_init__(self) -> None:
        for name in ("heartbeat_s", "max_sleep_s", "local_max_sleep_s", "linger_s", "deadline_s"):
            if not getattr(self, name) > 0:  # also refuses NaN
                raise ConfigError(f"CLOUDLAND_{name.upper()} must be positive, got {getattr(self, name)}")
        if self.slow_after < 1 or self.lost_after <= self.slow_after:
            raise ConfigError(
                f"need 1 <= CLOUDLAND_SLOW_AFTER < CLOUDLAND_LOST_AFTER, got {self.slow_after}, {self.lost_after}"
            )
        if self.driver not in ("test", "libvirt"):
            raise ConfigError(f"CLOUDLAND_DRIVER must be 'test' or 'libvirt', got {self.driver!r}")
        if self.network not in ("", "kernel", "netns", "fake"):
            raise ConfigError(f"CLOUDLAND_NETWORK must be 'kernel', 'netns', 'fake' or empty, got {self.network!r}")
        if not NETWORK_PREFIX_RE.fullmatch(self.network_prefix):
            raise ConfigError(f"CLOUDLAND_NETWORK_PREFIX must be 1-6 lowercase letters and digits, starting with a "
                              f"letter (link names stay within 15 characters), got {self.network_prefix!r}")
        if self.vnc_listen and canonical_ip(self.vnc_listen) is None:
            raise ConfigError(f"CLOUDLAND_VNC_LISTEN must be an IPv4 or IPv6 address (without a zone), "
                              f"or empty for none, got {self.vnc_listen!r}")
        if self.per_leaf < 0 or self.max_ranks < 2:
            raise ConfigError("CLOUDLAND_PER_LEAF must be >= 0 and CLOUDLAND_MAX_RANKS >= 2")
        if not -20 <= self.tree_nice <= 19:
            raise ConfigError(f"CLOUDLAND_TREE_NICE must be a nice value, -20 to 19, got {self.tree_nice}")
        if self.hypervisors < 1:
            raise ConfigError(f"CLOUDLAND_HYPERVISORS must be at least 1, got {self.hypervisors}")
        if self.fanout == 1 or self.fanout < 0:
            raise ConfigError(f"CLOUDLAND_FANOUT must be 0 (flat) or at least 2, got {self.fanout}")
        host, _, port = self.listen.rpartition(":")
        if not host or not port.isdigit() or canonical_ip(host.strip("[]")) is None:
            raise ConfigError(f"CLOUDLAND_LISTEN must be IP:PORT (port 0: any free one), got {self.listen!r}")
        if canonical_ip(host.strip("[]")) in ("0.0.0.0", "::"):
            raise ConfigError(f"CLOUDLAND_LISTEN must name the address other hosts reach the root at, "
                              f"not {host}: the root tells ranks where their parents listen")
        self.shape  # noqa: B018 - validates the rest of the shape

    @property
    def pki_dir(self) -> Path:
        return Path(self.pki) if self.pki else self.state_dir / "pki"

    @property
    def shape(self) -> Shape:
        return Shape(self.hypervisors, self.per_leaf or auto_per_leaf(self), self.fanout)

    def replace(self, **changes: object) -> TreeSettings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: object) -> TreeSettings:
        """Defaults, then ``CLOUDLAND_<FIELD>`` variables, then explicit overrides."""
        environ = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(f"CLOUDLAND_{f.name.upper()}")
            if raw is None:
                continue
            kind = type(getattr(cls(), f.name)) if f.default is dataclasses.MISSING else type(f.default)
            try:
                if kind is bool:
                    word = raw.strip().lower()
                    if word not in _TRUE + _FALSE:
                        raise ValueError(word)
                    values[f.name] = word in _TRUE
                elif issubclass(kind, Path):
                    values[f.name] = Path(raw)
                else:
                    values[f.name] = kind(raw)
            except ValueError as exc:
                raise ConfigError(f"CLOUDLAND_{f.name.upper()}={raw!r} is not a valid {kind.__name__}") from exc
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


def auto_per_leaf(settings: TreeSettings) -> int:
    """Hypervisors per leaf rank so that leaves plus relays stay within max_ranks.

    In production (driver "libvirt") each leaf rank is one hypervisor.
    """
    if settings.driver == "libvirt":
        return 1
    per_leaf = 1
    while True:
        shape = Shape(settings.hypervisors, per_leaf, settings.fanout)
        if shape.leaves + len(shape.relays()) + 1 <= settings.max_ranks:
            return per_leaf
        per_leaf = max(per_leaf + 1, int(per_leaf * 1.1))
