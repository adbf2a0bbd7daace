"""Lab fixtures for any test folder (registered in tests/conftest.py with ``pytest_plugins``).

- ``lab_factory(hosts, subnet=...)``: a ``cloudland_lab.Lab`` brought up for this test (its underlay
  10.77.0.0/24, or ``CLOUDLAND_TEST_LAB_SUBNET``), removed
  afterwards even when the test fails (a finalizer calls ``down()``, which kills every process
  in the lab's hosts);
- ``session_lab_factory``: the same, removed at the end of the session (for labs that tests
  only read; leave them as you found them);
- ``host_libvirt_factory``: ``start(lab, host) -> HostLibvirt``, a private libvirtd (and
  virtlogd) inside a lab host, its own /etc/libvirt, /var/lib/libvirt, /var/cache/libvirt and
  /var/log/libvirt (cloudland_lab.libvirt), so ``qemu:///system`` in that host is its own
  daemon; each is stopped (its domains destroyed) and its copies removed at the end of the
  session, also when a test failed. Ask for it after the lab's factory: it is torn down first;
- ``mpich``: the ``bin`` directory of a scratch venv with MPICH's wheel (``mpiexec``, hydra)
  and mpi4py, outside /tmp so lab hosts see it; skips the test if it cannot be installed.

Every lab of a session has the prefix ``t<pid, 7 digits><counter, letters>`` (``t0012345a``),
so parallel sessions never collide, and a session sweeps the labs of dead sessions when it
starts. That leaves host names of up to 5 characters (``<prefix>-<host>`` is an interface name). Tests
that use these fixtures are marked ``lab`` and ``root``.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from cloudland_lab import STATE_ROOT, Lab, sweep
from cloudland_lab.libvirt import HostLibvirt

LAB_FIXTURES = {"lab_factory", "session_lab_factory", "host_libvirt_factory"}
SESSION_PREFIX = re.compile(r"t([0-9]{7})[a-z]{1,2}")
MPICH_VENV = Path(os.environ.get("CLOUDLAND_LAB_MPICH", "/var/tmp/cloudland-lab-mpich"))
_counter = itertools.count()


def _letters(number: int) -> str:
    """0 -> 'a', 25 -> 'z', 26 -> 'aa': a counter that cannot run into the digits before it."""
    return chr(97 + number) if number < 26 else _letters(number // 26 - 1) + chr(97 + number % 26)


def lab_missing() -> str | None:
    """Why labs cannot be built here, or None."""
    if os.geteuid() != 0:
        return "the lab needs root (network, UTS and mount namespaces, mounts)"
    missing = [tool for tool in ("nsenter", "unshare", "ip", "mount") if shutil.which(tool) is None]
    return f"the lab needs {', '.join(missing)} (util-linux, iproute2)" if missing else None


def session_prefix() -> str:
    """This session's lab prefix stem: 't' and the pid, fixed width so stems never overlap."""
    return f"t{os.getpid():07d}"


def new_prefix() -> str:
    """A lab prefix of this session not used before (for tests that build a Lab themselves)."""
    return session_prefix() + _letters(next(_counter))


def sweep_dead_sessions() -> list[str]:
    """Remove the labs of test sessions whose process is gone (a killed pytest cleans nothing)."""
    prefixes = {p.name for p in STATE_ROOT.glob("t*")}
    prefixes |= {n.split("-")[0] for n in os.listdir("/run/netns")} if os.path.isdir("/run/netns") else set()
    swept = []
    for prefix in sorted(prefixes):
        match = SESSION_PREFIX.fullmatch(prefix)
        if match and not os.path.exists(f"/proc/{int(match[1])}"):
            sweep(prefix)
            swept.append(prefix)
    return swept


def default_subnet() -> str:
    """The underlay of a test's lab: 10.77.0.0/24, or ``CLOUDLAND_TEST_LAB_SUBNET`` so that two test
    sessions on one machine (two checkouts) can each have labs without their underlays' routes clashing.
    Tests that name addresses (tests/lab) assume the default."""
    return os.environ.get("CLOUDLAND_TEST_LAB_SUBNET") or "10.77.0.0/24"


class LabPool:
    """Labs made for one scope; ``close()`` removes them all and reports every failure."""

    def __init__(self) -> None:
        self.labs: list[Lab] = []

    def make(self, hosts: Iterable[str] = ("ctl", "h1", "h2"), subnet: str | None = None) -> Lab:
        lab = Lab(new_prefix(), subnet or default_subnet())
        self.labs.append(lab)  # before up(): a failed up() is cleaned again at close()
        return lab.up(hosts)

    def close(self) -> None:
        errors = []
        for lab in self.labs:
            try:
                lab.down()
            except Exception as error:  # noqa: BLE001 - report all, not only the first
                errors.append(f"{lab.prefix}: {error}")
        if errors:
            raise RuntimeError("lab cleanup failed: " + "; ".join(errors))


def _pool(request: pytest.FixtureRequest) -> Iterator[Callable[..., Lab]]:
    reason = lab_missing()
    if reason:
        pytest.skip(reason)
    request.getfixturevalue("_lab_sessions_swept")
    pool = LabPool()
    try:
        yield pool.make
    finally:
        pool.close()


@pytest.fixture(scope="session")
def _lab_sessions_swept() -> list[str]:
    return sweep_dead_sessions()


@pytest.fixture
def lab_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., Lab]]:
    """``make(hosts=("ctl", "h1", "h2"), subnet="10.77.0.0/24") -> Lab`` (up); all removed after the test."""
    yield from _pool(request)


@pytest.fixture(scope="session")
def session_lab_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., Lab]]:
    """Like ``lab_factory``, removed at the end of the session."""
    yield from _pool(request)


def libvirt_missing() -> str | None:
    """Why a lab host cannot run a libvirtd of its own here, or None."""
    missing = [p for p in ("/usr/sbin/libvirtd", "/usr/sbin/virtlogd") if not os.path.exists(p)]
    return f"needs {', '.join(missing)}: deploy/libvirtd.sh install" if missing else lab_missing()


@pytest.fixture(scope="session")
def host_libvirt_factory() -> Iterator[Callable[[Lab, str], HostLibvirt]]:
    """``start(lab, host) -> HostLibvirt`` (answering); all stopped at the end of the session."""
    reason = libvirt_missing()
    if reason:
        pytest.skip(reason)
    started: list[HostLibvirt] = []

    def start(lab: Lab, host: str) -> HostLibvirt:
        daemon = HostLibvirt(lab, host)
        started.append(daemon)
        return daemon.start()

    try:
        yield start
    finally:
        errors = []
        for daemon in started:
            try:
                daemon.stop()
            except Exception as error:  # noqa: BLE001 - stop every one, report all
                errors.append(str(error))
        if errors:
            raise RuntimeError("private libvirtd cleanup failed: " + "; ".join(errors))


@pytest.fixture(scope="session")
def mpich() -> Path:
    """``bin`` of a venv with the ``mpich`` and ``mpi4py`` wheels (made once, reused)."""
    bin_dir = MPICH_VENV / "bin"
    if not (bin_dir / "mpiexec").exists():
        steps = [["/usr/bin/python3", "-m", "venv", str(MPICH_VENV)],
                 [str(bin_dir / "pip"), "install", "-q", "mpich", "mpi4py"]]
        for argv in steps:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                pytest.skip(f"cannot install MPICH into {MPICH_VENV} ({' '.join(argv)}): {done.stderr.strip()[-300:]}")
    return bin_dir


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if LAB_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.lab)
            item.add_marker(pytest.mark.root)
