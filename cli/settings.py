"""Where the CLI finds its clouds: the config file, named profiles and the environment.

The file (mode 0600, it holds bearer tokens) is ``$CLOUDLAND_CONFIG``, else
``$XDG_CONFIG_HOME/cloudland/cli.json`` (``~/.config/...``). It holds named profiles, as kubectl
holds contexts: each an API endpoint, the token of its last login and, for the ``tree`` and
``cluster`` commands, the root's gRPC address and the directory of the control certificate
that root takes (``pki``: ``ca.pem``, ``control.pem``, ``control.key``; cloudland/pki.py)::

    {"current": "default",
     "profiles": {"default": {"endpoint": "http://127.0.0.1:8080", "token": "...", "expires_at": "...",
                              "grpc": null, "pki": null}}}

The profile in use is ``--profile NAME`` (before the command), else ``$CLOUDLAND_PROFILE``, else
the file's ``current``. A profile's ``project`` is the project its commands act in (``cloudland
project use``; none: the organisation's default project), sent as the ``X-CloudLand-Project``
header; ``--project NAME`` (before the command) or ``$CLOUDLAND_PROJECT`` overrides it.
``CLOUDLAND_ENDPOINT``, ``CLOUDLAND_TOKEN``, ``CLOUDLAND_GRPC`` and ``CLOUDLAND_PKI`` override
what the profile says, for every command. A file of the older flat shape (``endpoint``, ``token``)
reads as the profile ``default``.

This module imports nothing heavy: ``cloudland --help`` and ``configure`` run without httpx or gRPC.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from cloudland.config import DEFAULT_GRPC
from cloudland.errors import ConfigError, InvalidRequest

DEFAULT_ENDPOINT = "http://127.0.0.1:8080"
DEFAULT_PROFILE = "default"
API_PREFIX = "/api/v1"
_PROFILE_FIELDS = ("endpoint", "token", "expires_at", "grpc", "pki", "project")

# Set by the top-level ``--profile`` option (main.py); wins over $CLOUDLAND_PROFILE.
chosen_profile: str | None = None
# Set by the top-level ``--project`` option (main.py; or $CLOUDLAND_PROJECT): wins over the profile's.
chosen_project: str | None = None


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    """Where the CLI's profiles live (see the module docstring)."""
    environ = os.environ if environ is None else environ
    if environ.get("CLOUDLAND_CONFIG"):
        return Path(environ["CLOUDLAND_CONFIG"])
    base = Path(environ["XDG_CONFIG_HOME"]) if environ.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return base / "cloudland" / "cli.json"


def normalise_endpoint(url: str) -> str:
    """``http(s)://host[:port]`` without a trailing slash or ``/api/v1``; InvalidRequest otherwise."""
    text = url.strip().rstrip("/").removesuffix(API_PREFIX)
    try:
        parsed = urlsplit(text)
        parsed.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise InvalidRequest(f"bad endpoint {url!r}: {exc}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise InvalidRequest(f"bad endpoint {url!r}: expected http://host:port or https://host")
    return text


@dataclass
class CliConfig:
    """One profile: what ``cloudland configure`` and ``cloudland login`` store for one cloud."""

    endpoint: str = DEFAULT_ENDPOINT
    token: str | None = None
    expires_at: str | None = None   # ISO 8601, as the API's TokenPublic gives it
    grpc: str | None = None         # the root's host:port for `tree` and `cluster`
    pki: str | None = None          # the directory of that root's CA and our control certificate
    project: str | None = None      # the current project (`cloudland project use`); None: the default one
    profile: str = field(default=DEFAULT_PROFILE, compare=False)

    @classmethod
    def load(cls, path: Path | None = None, profile: str | None = None) -> CliConfig:
        """The profile in use (or ``profile``) from the file; defaults when it is not stored yet."""
        store = ProfileStore.load(path)
        name = profile or store.selected()
        if name not in store.profiles and name not in (DEFAULT_PROFILE, store.current):
            # As kubectl does for an unknown context: a typo must not reach another cloud.
            raise ConfigError(f"no profile {name!r} in {store.path}: make it with "
                              f"`cloudland configure --profile {name} --endpoint URL`")
        return store.profiles.get(name, cls(profile=name))

    def save(self, path: Path | None = None) -> Path:
        """Store this profile (the others stay); returns the file's path."""
        store = ProfileStore.load(path)
        store.profiles[self.profile] = self
        return store.save()

    def effective(self, environ: Mapping[str, str] | None = None) -> CliConfig:
        """This profile with ``CLOUDLAND_ENDPOINT`` / ``_TOKEN`` / ``_GRPC`` / ``_PKI`` and
        ``--project`` (or ``CLOUDLAND_PROJECT``) applied."""
        environ = os.environ if environ is None else environ
        token = environ.get("CLOUDLAND_TOKEN") or None
        return CliConfig(
            endpoint=environ.get("CLOUDLAND_ENDPOINT") or self.endpoint,
            token=token or self.token,
            expires_at=None if token else self.expires_at,
            grpc=environ.get("CLOUDLAND_GRPC") or self.grpc,
            pki=environ.get("CLOUDLAND_PKI") or self.pki,
            project=chosen_project or environ.get("CLOUDLAND_PROJECT") or self.project,
            profile=self.profile,
        )


@dataclass
class ProfileStore:
    """The whole config file: every profile and the one used when none is chosen."""

    path: Path
    current: str = DEFAULT_PROFILE
    profiles: dict[str, CliConfig] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path | None = None) -> ProfileStore:
        path = path or config_path()
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return cls(path)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read the CLI config {path}: {exc}") from exc
        if not isinstance(raw, dict):
            raise ConfigError(f"the CLI config {path} is not a JSON object")
        stored = raw.get("profiles") if isinstance(raw.get("profiles"), dict) else {DEFAULT_PROFILE: raw}
        profiles = {
            name: CliConfig(profile=name, **{k: v[k] for k in _PROFILE_FIELDS if isinstance(v.get(k), str)})
            for name, v in stored.items() if isinstance(v, dict)
        }
        current = raw.get("current") if isinstance(raw.get("current"), str) else DEFAULT_PROFILE
        return cls(path, current, profiles)

    def selected(self, environ: Mapping[str, str] | None = None) -> str:
        """``--profile``, else ``$CLOUDLAND_PROFILE``, else the file's current profile."""
        environ = os.environ if environ is None else environ
        return chosen_profile or environ.get("CLOUDLAND_PROFILE") or self.current

    def save(self) -> Path:
        """Write the file with mode 0600 (it holds bearer tokens); returns its path."""
        body = {"current": self.current,
                "profiles": {name: {k: v for k, v in asdict(p).items() if k != "profile"}
                             for name, p in sorted(self.profiles.items())}}
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.path.with_name(self.path.name + ".tmp")
        # Created 0600 from the start: a token is never readable by others, not even briefly.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(body, fh, indent=2)
            fh.write("\n")
        os.chmod(tmp, 0o600)  # an older tmp file may have had other bits
        os.replace(tmp, self.path)
        return self.path


def root_endpoint(explicit: str | None = None) -> str:
    """The root's gRPC address for ``tree`` and ``cluster``: ``--endpoint``, else $CLOUDLAND_GRPC,
    else the profile's ``grpc``, else the all-in-one default."""
    if explicit:
        return explicit
    return CliConfig.load().effective().grpc or DEFAULT_GRPC


def root_pki() -> Path:
    """Where the control certificate for ``tree`` and ``cluster`` is: $CLOUDLAND_PKI, else the
    profile's ``pki``, else the all-in-one cloud's (``$CLOUDLAND_STATE_DIR/pki``, ``var/pki``)."""
    from cloudland import pki  # ssl: not for every command

    return Path(CliConfig.load().effective().pki or pki.default_dir())
