"""Private state (issue 15): the state directory is 0700 and what is in it 0600.

Every process that writes there (the API, the root, host agents, ranks, ``cloudland up``)
sets its umask to 077 first, so whatever it makes (the database, logs, keys, pid files,
credentials) is its owner's alone; ``make_private`` also closes a directory left open by an
older run. One exception: with the ``libvirt`` driver QEMU runs as its own user and must reach
its guests' disks, so the directories on the way stay searchable (0711: nothing can be
listed) and ``guests/`` and ``image-cache/`` are opened to it (agents/compute/guests.py).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

QEMU_DIRS = ("guests", "image-cache", "hosts")  # left as they are: QEMU reaches guests' disks there


def private_umask() -> None:
    """Files and directories this process makes are its owner's only (0600, 0700)."""
    os.umask(0o077)


def make_private(state_dir: Path, qemu: bool | None = False) -> Path:
    """``state_dir`` made (or closed) 0700, and its files and sub-directories its owner's.

    ``qemu``: True keeps it searchable for QEMU's user (0711); None keeps whatever search bit
    it has (a process that does not know the driver, as the API).
    """
    private_umask()
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = stat.S_IMODE(state_dir.stat().st_mode)
    search = 0o011 if qemu else (mode & 0o011 if qemu is None else 0)
    _chmod(state_dir, 0o700 | search)
    for path in (state_dir, state_dir / "logs"):
        if not path.is_dir():
            continue
        for entry in os.scandir(path):
            if entry.is_symlink() or (path == state_dir and entry.name in QEMU_DIRS and search):
                continue
            _chmod(Path(entry.path), 0o700 if entry.is_dir() else stat.S_IMODE(entry.stat().st_mode) & 0o700)
    return state_dir


def open_for_qemu(state_dir: Path) -> None:
    """Make ``state_dir`` and the directories above it searchable by QEMU's user, up to the
    first one that already is (or is not ours): the ``libvirt`` driver's exception."""
    path = state_dir.resolve()
    while path != path.parent:
        info = path.stat()
        if info.st_mode & 0o001 or info.st_uid != os.geteuid():
            return
        _chmod(path, stat.S_IMODE(info.st_mode) | 0o011)
        path = path.parent


def _chmod(path: Path, mode: int) -> None:
    try:
        os.chmod(path, mode)
    except PermissionError:  # not ours (a guest's disk that libvirt gave to QEMU's user)
        pass
