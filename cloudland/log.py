"""Structured logging: one event per line, ``key=value`` pairs, naming the rank."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path


def setup(rank: str, level: str | None = None, log_file: Path | None = None) -> None:
    """Log as ``<time> <level> <rank> pid=<pid> <logger> <message>`` to stderr and ``log_file``.

    Spawned ranks' stderr is relayed by Open MPI's launcher only while it can,
    so every rank also appends to a file of its own in the state directory.
    """
    level = level or os.environ.get("CLOUDLAND_LOG_LEVEL", "WARNING")
    formatter = logging.Formatter(f"%(asctime)s %(levelname)s {rank} pid={os.getpid()} %(name)s %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    for handler in handlers:
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(level.upper())


def rank_log_file(state_dir: str | Path, rank: str) -> Path:
    """Where a rank's log goes: ``<state_dir>/logs/<rank>.log``."""
    safe = rank.replace(" ", "-").replace("[", "").replace(")", "").replace(":", "-")
    return Path(state_dir) / "logs" / f"{safe}.log"
