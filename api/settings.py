"""One settings object for the control plane, read from ``CLOUDLAND_API_*`` with embedded defaults.

Validated at start-up: a bad value raises ConfigError naming the variable.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cloudland.errors import ConfigError

PREFIX = "CLOUDLAND_API_"


@dataclass(frozen=True)
class ApiSettings:
    """Everything the control plane needs to start; defaults give the all-in-one mode."""

    database_url: str = "sqlite:///var/cloudland.db"
    state_dir: Path = field(default_factory=lambda: Path("var"))
    token_lifetime_s: int = 3600
    host: str = "127.0.0.1"
    port: int = 8080

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
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"{PREFIX}PORT must be 0..65535, got {self.port}")
        if not str(self.state_dir).strip():
            raise ConfigError(f"{PREFIX}STATE_DIR must not be empty")

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
