"""One settings object for the control plane, read from ``CLOUDLAND_API_*`` with embedded defaults.

Validated at start-up: a bad value raises ConfigError naming the variable.
"""

from __future__ import annotations

import ipaddress

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cloudland.config import DEFAULT_GRPC
from cloudland.errors import ConfigError

PREFIX = "CLOUDLAND_API_"
MAX_IMAGE_BYTES = 2**63 - 1
VOLUME_TYPE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
BRIDGE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,14}")  # schemas/routers.py Bridge


@dataclass(frozen=True)
class ApiSettings:
    """Everything the control plane needs to start; defaults give the all-in-one mode."""

    database_url: str = "sqlite:///var/cloudland.db"
    state_dir: Path = field(default_factory=lambda: Path("var"))
    token_lifetime_s: int = 3600        # a login's token, unless the login asks for another lifetime
    token_max_lifetime_s: int = 43200   # the ceiling: no token is issued, or honoured, for longer
    login_backoff_max_s: int = 300      # the longest wait repeated failed sign-ins earn (services/identity.py)
    host: str = "127.0.0.1"
    port: int = 8080
    # Largest image upload accepted (PUT /images/{id}/file); bigger bodies get a 413.
    max_image_bytes: int = 64 * 2**30
    # Largest body of every other request (JSON); bigger bodies get a 413 before they are read (issue 15).
    max_body_bytes: int = 2**20
    # Admission (api/limits.py): requests served at once, how many more may wait for a turn and for how
    # long; image transfers, consoles and job long polls, which last minutes, have their own. Past that: 429.
    max_requests: int = 64
    max_queued: int = 256
    queue_wait_s: float = 10.0
    max_streams: int = 64
    # How hypervisors reach this API to fetch images; "" means http://HOST:PORT.
    public_url: str = ""
    image_token_lifetime_s: int = 3600  # a job's image download token
    # The root rank's gRPC endpoint; "" runs without a tree (jobs stay pending).
    root_endpoint: str = DEFAULT_GRPC
    scheduler_weigher: str = "spread"   # spread: least used fraction first; pack: fullest first
    cpu_ratio: float = 4.0              # overcommit given to newly seen hypervisors
    memory_ratio: float = 1.0
    dispatch_workers: int = 64          # commands in flight to the root at once
    job_timeout_s: float = 120.0        # per attempt; the job fails with "timeout" after it
    capture_timeout_s: float = 3600.0   # a capture's attempt: it copies and uploads a whole disk
    # Tenant networks (issue 11): the VNIs subnets take, FIRST-LAST within VXLAN's 24 bits, and
    # the underlay's MTU, of which guests get all but VXLAN's 50 bytes of overhead.
    vni_range: str = "4096-16777215"
    underlay_mtu: int = 1500
    # A CIDR: at the first start, the operator organisation gets a VPC and a subnet "default" on
    # it, where VMs created without ``networks`` get their NIC (``make run`` sets 10.0.0.0/16 for
    # the all-in-one cloud); "" for none.
    default_network: str = ""
    # A CIDR and a provider bridge (issue 12): at every start, the operator organisation has the
    # external network "external" on them, and the default network (if any) a router "default"
    # with its gateway there. ``cloudland up`` as root sets both for the all-in-one cloud (its
    # bridge on this machine; ``make run`` EXTERNAL_NETWORK, 198.51.100.0/24); "" for none.
    external_network: str = ""
    external_bridge: str = ""
    # Volumes (issue 13): the types users choose from, TYPE=BACKEND,... (the first is the default).
    # Backend "local" is each hypervisor's qcow2 files; any other name is an rbd backend that the
    # agents have (CLOUDLAND_RBD_BACKENDS, agents/storage/ops.py), reachable from every hypervisor.
    volume_types: str = "local=local"

    def __post_init__(self) -> None:
        if not self.database_url.strip():
            raise ConfigError(f"{PREFIX}DATABASE_URL must not be empty")
        # Only the two databases we test against (ARCHITECTURE.md "Where it runs").
        if not self.database_url.startswith(("sqlite", "postgresql")):
            raise ConfigError(
                f"{PREFIX}DATABASE_URL must be a sqlite:// or postgresql+psycopg:// URL, got {self.database_url!r}"
            )
        # Upper bound: a token that lives longer than a day is a standing credential.
        if not 1 <= self.token_lifetime_s <= 86400:
            raise ConfigError(f"{PREFIX}TOKEN_LIFETIME_S must be 1..86400 seconds, got {self.token_lifetime_s}")
        if not self.token_lifetime_s <= self.token_max_lifetime_s <= 86400:
            raise ConfigError(f"{PREFIX}TOKEN_MAX_LIFETIME_S must be TOKEN_LIFETIME_S ({self.token_lifetime_s}).."
                              f"86400 seconds, got {self.token_max_lifetime_s}")
        if not 1 <= self.login_backoff_max_s <= 86400:
            raise ConfigError(f"{PREFIX}LOGIN_BACKOFF_MAX_S must be 1..86400 seconds, got {self.login_backoff_max_s}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"{PREFIX}PORT must be 0..65535, got {self.port}")
        if self.scheduler_weigher not in ("spread", "pack"):
            raise ConfigError(f"{PREFIX}SCHEDULER_WEIGHER must be spread or pack, got {self.scheduler_weigher!r}")
        for name in ("cpu_ratio", "memory_ratio"):
            if not 0 < getattr(self, name) <= 64:
                raise ConfigError(f"{PREFIX}{name.upper()} must be in (0, 64], got {getattr(self, name)}")
        if not 1 <= self.dispatch_workers <= 1024:
            raise ConfigError(f"{PREFIX}DISPATCH_WORKERS must be 1..1024, got {self.dispatch_workers}")
        if not 1 <= self.job_timeout_s <= 3600:
            raise ConfigError(f"{PREFIX}JOB_TIMEOUT_S must be 1..3600 seconds, got {self.job_timeout_s}")
        if not 60 <= self.capture_timeout_s <= 86400:
            raise ConfigError(f"{PREFIX}CAPTURE_TIMEOUT_S must be 60..86400 seconds, got {self.capture_timeout_s}")
        # Upper bound: images.size_bytes is a signed 64-bit BIGINT.
        if not 1 <= self.max_image_bytes <= MAX_IMAGE_BYTES:
            raise ConfigError(f"{PREFIX}MAX_IMAGE_BYTES must be 1..{MAX_IMAGE_BYTES} bytes, got {self.max_image_bytes}")
        if not 1024 <= self.max_body_bytes <= 2**30:
            raise ConfigError(f"{PREFIX}MAX_BODY_BYTES must be 1024..{2**30} bytes, got {self.max_body_bytes}")
        for name in ("max_requests", "max_streams"):
            if not 1 <= getattr(self, name) <= 4096:
                raise ConfigError(f"{PREFIX}{name.upper()} must be 1..4096, got {getattr(self, name)}")
        if not 0 <= self.max_queued <= 65536:
            raise ConfigError(f"{PREFIX}MAX_QUEUED must be 0..65536, got {self.max_queued}")
        if not 0 < self.queue_wait_s <= 600:
            raise ConfigError(f"{PREFIX}QUEUE_WAIT_S must be in (0, 600] seconds, got {self.queue_wait_s}")
        if self.public_url and not self.public_url.startswith(("http://", "https://")):
            raise ConfigError(f"{PREFIX}PUBLIC_URL must be an http:// or https:// URL, got {self.public_url!r}")
        if not 60 <= self.image_token_lifetime_s <= 86400:
            raise ConfigError(f"{PREFIX}IMAGE_TOKEN_LIFETIME_S must be 60..86400 seconds, got "
                              f"{self.image_token_lifetime_s}")
        self.vnis  # noqa: B018 - validates VNI_RANGE
        self.volume_backends  # noqa: B018 - validates VOLUME_TYPES
        if not 1280 <= self.underlay_mtu <= 65535:
            raise ConfigError(f"{PREFIX}UNDERLAY_MTU must be 1280..65535, got {self.underlay_mtu}")
        if not str(self.state_dir).strip():
            raise ConfigError(f"{PREFIX}STATE_DIR must not be empty")
        for name, example in (("default_network", "10.0.0.0/24"), ("external_network", "198.51.100.0/24")):
            try:
                if getattr(self, name):
                    ipaddress.IPv4Network(getattr(self, name))
            except ValueError as exc:
                raise ConfigError(f"{PREFIX}{name.upper()} must be an IPv4 network like {example}, or empty: "
                                  f"{exc}") from exc
        if self.external_network and not BRIDGE_RE.fullmatch(self.external_bridge):
            raise ConfigError(f"{PREFIX}EXTERNAL_BRIDGE must name the provider bridge of {PREFIX}EXTERNAL_NETWORK "
                              f"(1-15 letters, digits, '.', '_' or '-'), got {self.external_bridge!r}")

    @property
    def image_url_base(self) -> str:
        """Where agents download images from: ``<public_url>/api/v1/images``."""
        base = self.public_url.rstrip("/") or f"http://{self.host}:{self.port}"
        return f"{base}/api/v1/images"

    @property
    def vnis(self) -> tuple[int, int]:
        """The first and last VNI subnets may take (``vni_range``); ConfigError when it is not one."""
        first, _, last = self.vni_range.partition("-")
        try:
            low, high = int(first), int(last)
        except ValueError:
            low = high = -1
        if not 1 <= low <= high <= 2**24 - 1:
            raise ConfigError(f"{PREFIX}VNI_RANGE must be FIRST-LAST within 1-16777215, got {self.vni_range!r}")
        return low, high

    @property
    def volume_backends(self) -> dict[str, str]:
        """Volume type -> backend (``volume_types``), in order; ConfigError when it is not one."""
        types: dict[str, str] = {}
        for entry in self.volume_types.split(","):
            name, _, backend = entry.strip().partition("=")
            if not (VOLUME_TYPE_RE.fullmatch(name) and VOLUME_TYPE_RE.fullmatch(backend)) or name in types:
                raise ConfigError(f"{PREFIX}VOLUME_TYPES must be TYPE=BACKEND,... with distinct names of letters, "
                                  f"digits, '.', '_' or '-', got {self.volume_types!r}")
            types[name] = backend
        return types

    @property
    def guest_mtu(self) -> int:
        """The MTU guests get: the underlay's minus the VXLAN overhead over IPv4 (50 bytes)."""
        return self.underlay_mtu - 50

    def replace(self, **changes: object) -> ApiSettings:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> ApiSettings:
        """Defaults, then ``CLOUDLAND_API_<FIELD>`` variables, then explicit overrides."""
        environ = os.environ if environ is None else environ
        defaults = cls()
        values: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            name = f"{PREFIX}{f.name.upper()}"
            raw = environ.get(name)
            if raw is None:
                continue
            kind = type(getattr(defaults, f.name))
            try:
                values[f.name] = Path(raw) if issubclass(kind, Path) else kind(raw)
            except ValueError as exc:
                raise ConfigError(f"{name}={raw!r} is not a valid {kind.__name__}") from exc
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]
