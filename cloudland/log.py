"""Structured logging: one event per line, ``key=value`` pairs, naming the rank."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path


def setup(rank: str, level: str | None = None, log_file: Path | None = None, stderr: bool = True) -> None:
    """Log as ``<time> <level> <rank> pid=<pid> <logger> <message>`` to stderr and ``log_file``.

    Ranks log to a file of their own in the state directory only (``stderr=False``): their
    stderr is a file their host agent keeps for what is not a log line (MPI's own words).
    """
    level = level or os.environ.get("CLOUDLAND_LOG_LEVEL", "WARNING")
    formatter = logging.Formatter(f"%(asctime)s %(levelname)s {rank} pid={os.getpid()} %(name)s %(message)s")
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)] if stderr else []
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
