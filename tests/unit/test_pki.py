"""The tree's CA (cloudland/pki.py) and private state (cloudland/statedir.py)."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from cloudland import pki
from cloudland.errors import ConfigError
from cloudland.statedir import make_private, open_for_qemu


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def common_name(pem: bytes) -> str:
    cert = x509.load_pem_x509_certificate(pem)
    return str(cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def test_first_start_makes_a_ca_and_one_certificate_per_role_for_the_owner_only(tmp_path: Path):
    directory = pki.ensure(tmp_path / "state" / "pki")
    assert mode(directory) == 0o700
    files = sorted(p.name for p in directory.iterdir())
    assert files == sorted([f"{stem}.{ext}" for stem in ("ca", *pki.ROLES) for ext in ("pem", "key")])
    assert all(mode(directory / f) == 0o600 for f in files)
    ca = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    for role in pki.ROLES:
        pem = (directory / f"{role}.pem").read_bytes()
        assert common_name(pem) == f"cloudland-{role}"
        x509.load_pem_x509_certificate(pem).verify_directly_issued_by(ca)
    before = (directory / "ca.pem").read_bytes()
    assert pki.ensure(directory) == directory and (directory / "ca.pem").read_bytes() == before, "made once"


def test_processes_starting_at_once_agree_on_one_ca(tmp_path: Path):
    directory = tmp_path / "pki"
    threads = [threading.Thread(target=pki.ensure, args=(directory,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pki"], "no scratch directory left behind"
    ca = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    for role in pki.ROLES:  # every certificate of the one CA that won
        x509.load_pem_x509_certificate((directory / f"{role}.pem").read_bytes()).verify_directly_issued_by(ca)


def test_two_clouds_never_share_a_ca(tmp_path: Path):
    one, two = pki.ensure(tmp_path / "a"), pki.ensure(tmp_path / "b")
    assert common_name((one / "ca.pem").read_bytes()) != common_name((two / "ca.pem").read_bytes())


def test_missing_credentials_name_the_file_and_what_to_do(tmp_path: Path):
    with pytest.raises(ConfigError, match=r"no node credentials in .*No such file.*ca\.pem.*copies ca.pem"):
        pki.Credentials.load(tmp_path, pki.NODE)


def test_the_default_directory_follows_the_state_directory():
    assert pki.default_dir({}) == Path("var/pki")
    assert pki.default_dir({"CLOUDLAND_STATE_DIR": "/s"}) == Path("/s/pki")
    assert pki.default_dir({"CLOUDLAND_STATE_DIR": "/s", "CLOUDLAND_PKI": "/p"}) == Path("/p")


@pytest.fixture
def old_state(tmp_path: Path) -> Path:
    """A state directory as an older run left it: open to everyone."""
    state = tmp_path / "var"
    for path in (state / "logs", state / "images", state / "guests" / "u1"):
        path.mkdir(parents=True)
    for path in (state, state / "logs", state / "images", state / "guests", state / "guests" / "u1"):
        os.chmod(path, 0o755)
    for name in ("cloudland.db", "api.out", "logs/root.log", "images/1.qcow2", "guests/u1/disk.qcow2"):
        (state / name).write_text("x")
        os.chmod(state / name, 0o644)
    return state


def test_private_state_closes_what_an_older_run_left_open(old_state: Path):
    previous = os.umask(0o022)
    try:
        make_private(old_state)
        (old_state / "new.log").write_text("made after")
        (old_state / "newdir").mkdir()
    finally:
        os.umask(previous)
    assert mode(old_state) == 0o700
    assert {n: mode(old_state / n) for n in ("cloudland.db", "api.out", "logs/root.log", "new.log")} == dict.fromkeys(
        ("cloudland.db", "api.out", "logs/root.log", "new.log"), 0o600)
    assert mode(old_state / "logs") == mode(old_state / "images") == mode(old_state / "newdir") == 0o700


def test_with_the_libvirt_driver_qemu_may_still_reach_its_guests(old_state: Path):
    previous = os.umask(0o022)
    try:
        make_private(old_state, qemu=True)
        assert mode(old_state) == 0o711, "searchable, not listable"
        assert mode(old_state / "guests") == 0o755 and mode(old_state / "guests/u1/disk.qcow2") == 0o644
        assert mode(old_state / "images") == 0o700 and mode(old_state / "cloudland.db") == 0o600
        make_private(old_state, qemu=None)  # the API, which does not know the driver
        assert mode(old_state) == 0o711
    finally:
        os.umask(previous)


def test_qemu_gets_a_path_to_a_state_directory_made_private(tmp_path: Path):
    os.chmod(tmp_path, 0o755)
    state = tmp_path / "a" / "b"
    state.mkdir(parents=True, mode=0o700)
    os.chmod(tmp_path / "a", 0o700)
    open_for_qemu(state)
    assert mode(state) == mode(tmp_path / "a") == 0o711
    assert mode(tmp_path) == 0o755, "stops at the first directory others can search"
