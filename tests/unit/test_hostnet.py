"""``cloudland up``'s choice of data plane for the all-in-one cloud (cli/hostnet.py): real
namespaces where it can, the in-memory plane (said in the banner) where it cannot."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cloudland.config import NETWORK_PREFIX_RE, TreeSettings
from cloudland.errors import ConfigError
from cloudland_cli import hostnet


def unset_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Neither variable set, and neither set after ``monkeypatch`` is undone. (``delenv`` of a
    variable that is not set records nothing to undo, so what choose() set stayed for every later
    test: a tree started after it ran its simulated hypervisors in namespaces no one removed, with
    their dnsmasq. ``setenv`` first records "not set" to go back to.)"""
    for name in ("CLOUDLAND_NETWORK", "CLOUDLAND_NETWORK_PREFIX", hostnet.EXTERNAL_NETWORK, hostnet.EXTERNAL_BRIDGE):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """choose() hands its choice to the root through the environment: keep the test's clean, and
    the session's after it."""
    unset_choice(monkeypatch)


def test_not_root_stays_on_the_fake_plane_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    settings, note = hostnet.choose(TreeSettings(state_dir=tmp_path), cluster=False)
    assert settings.network == "" and "CLOUDLAND_NETWORK" not in os.environ
    assert note.startswith("tenant networks: simulated in memory (not running as root)") and "no packet" in note
    with pytest.raises(ConfigError, match="CLOUDLAND_NETWORK=netns needs namespaces of this machine: not running as root"):
        hostnet.choose(TreeSettings(state_dir=tmp_path, network="netns"), cluster=False)


def test_missing_tools_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    monkeypatch.setattr(hostnet.shutil, "which", lambda tool: None if tool in ("dnsmasq", "busybox") else "/bin/x")
    assert hostnet.why_not() == "dnsmasq, busybox not installed"


def test_a_cluster_or_an_operators_choice_is_left_alone(tmp_path: Path) -> None:
    for settings, cluster in ((TreeSettings(state_dir=tmp_path), True),
                              (TreeSettings(state_dir=tmp_path, network="fake"), False),
                              (TreeSettings(state_dir=tmp_path, driver="libvirt"), False)):
        assert hostnet.choose(settings, cluster) == (settings, "")
    assert not (tmp_path / hostnet.PREFIX_FILE).exists()


@pytest.mark.skipif(bool(hostnet.why_not()), reason="needs root and namespaces")
def test_where_it_can_it_picks_netns_with_a_prefix_kept_in_the_state_directory(tmp_path: Path) -> None:
    settings, note = hostnet.choose(TreeSettings(state_dir=tmp_path), cluster=False)
    prefix = (tmp_path / hostnet.PREFIX_FILE).read_text().strip()
    assert NETWORK_PREFIX_RE.fullmatch(prefix) and (tmp_path / hostnet.PREFIX_FILE).stat().st_mode & 0o777 == 0o600
    assert (settings.network, settings.network_prefix) == ("netns", prefix)
    assert (os.environ["CLOUDLAND_NETWORK"], os.environ["CLOUDLAND_NETWORK_PREFIX"]) == ("netns", prefix)
    assert f"namespace {prefix}hv<id>" in note and "vm exec" in note
    assert hostnet.run_prefix(tmp_path) == prefix  # the next start: the same run's pieces


def test_the_external_network_is_made_only_on_the_namespaces_plane(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without that plane (not root) ``up`` makes nothing, says so, and does not tell the API of it;
    a cluster's, or nothing asked, is left alone; a bad network is a usage error naming the variable."""
    simulated = TreeSettings(state_dir=tmp_path)
    assert hostnet.external_wanted(simulated, cluster=False) is None  # none asked
    monkeypatch.setenv(hostnet.EXTERNAL_NETWORK, "198.51.100.0/24")
    assert hostnet.external_wanted(simulated, cluster=True) is None
    assert hostnet.external_wanted(TreeSettings(state_dir=tmp_path, driver="libvirt"), cluster=False) is None
    wanted = hostnet.external_wanted(simulated, cluster=False)
    assert str(wanted) == "198.51.100.0/24"
    note = hostnet.external(simulated.replace(network="fake"), wanted)
    assert note == ("external network 198.51.100.0/24: not made (it needs the namespaces' data plane); "
                    "floating IPs need it")
    assert hostnet.EXTERNAL_NETWORK not in os.environ and hostnet.EXTERNAL_BRIDGE not in os.environ
    for bad, says in (("198.51.100.1/24", "host bits set"), ("198.51.100.0/30", "too small"), ("x", "IPv4 network")):
        monkeypatch.setenv(hostnet.EXTERNAL_NETWORK, bad)
        with pytest.raises(ConfigError, match=f"{hostnet.EXTERNAL_NETWORK} .*{says}"):
            hostnet.external_wanted(simulated, cluster=False)


@pytest.mark.skipif(bool(hostnet.why_not()), reason="needs root and namespaces")
def test_an_external_network_that_overlaps_the_machines_is_not_made(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """One of the machine's own networks (its loopback's here, which every machine has)."""
    monkeypatch.setenv(hostnet.EXTERNAL_NETWORK, "127.0.0.0/8")
    settings = TreeSettings(state_dir=tmp_path, network="netns", network_prefix="zq9")
    note = hostnet.external(settings, hostnet.external_wanted(settings, cluster=False))
    assert note.startswith("external network 127.0.0.0/8: not made (this machine has 127.0.0.1/8 on lo)"), note
    assert hostnet.EXTERNAL_NETWORK not in os.environ and hostnet.EXTERNAL_BRIDGE not in os.environ
    assert "zq9e" not in hostnet.subprocess.run(["ip", "link"], capture_output=True, text=True).stdout


def test_the_choice_does_not_outlive_its_test(tmp_path: Path) -> None:
    with pytest.MonkeyPatch.context() as patch:
        unset_choice(patch)
        patch.setattr(hostnet, "why_not", lambda: "")  # as where namespaces can be made
        hostnet.choose(TreeSettings(state_dir=tmp_path), cluster=False)
        assert os.environ["CLOUDLAND_NETWORK"] == "netns"
    assert "CLOUDLAND_NETWORK" not in os.environ and "CLOUDLAND_NETWORK_PREFIX" not in os.environ
