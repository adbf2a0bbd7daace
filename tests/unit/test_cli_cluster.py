"""`cloudland cluster`'s pieces that need no cluster: the hostfile and the launcher's command."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloudland.errors import ConfigError
from cloudland_cli.cluster import agent_command, read_hostfile
from cloudland_cli.start import cluster_settings


def test_a_hostfile_lists_hosts_and_skips_comments_blank_lines_and_slot_counts(tmp_path: Path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# rack 1\nhv-01\n\n  hv-02:4   # four slots in MPI terms\nhv.03\n")
    assert read_hostfile(hostfile) == ["hv-01", "hv-02", "hv.03"]


@pytest.mark.parametrize("text, error", [
    ("", "lists no host"),
    ("# only a comment\n", "lists no host"),
    ("hv-01\nhv-01\n", "hosts:2: host hv-01 is listed twice"),
    ("hv-01 hv-02\n", "hosts:1: expected one host name per line"),
    ("hv/01\n", "hosts:1: expected one host name per line"),
])
def test_a_bad_hostfile_names_the_line(tmp_path: Path, text: str, error: str):
    hostfile = tmp_path / "hosts"
    hostfile.write_text(text)
    with pytest.raises(ConfigError, match=error):
        read_hostfile(hostfile)


def test_a_missing_hostfile_says_so(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read the hostfile"):
        read_hostfile(tmp_path / "nowhere")


def test_the_launcher_starts_one_detached_agent_per_host_and_survives_each():
    argv = agent_command(["a", "b"], "10.0.0.1:50552", Path("/s/{host}"), 1, "/x/lab-ssh")
    assert argv[argv.index("-launcher-exec") + 1] == "/x/lab-ssh"
    assert argv[argv.index("-hosts") + 1] == "a,b" and argv[argv.index("-n") + 1] == "2"
    assert "-disable-auto-cleanup" in argv and argv[argv.index("-ppn") + 1] == "1"
    tail = argv[argv.index("cloudland_launcher.hostd") + 1:]
    assert tail == ["--daemon", "--root", "10.0.0.1:50552", "--leaves", "1", "--state-dir", "/s/{host}"]
    with_pki = agent_command(["a"], "10.0.0.1:50552", Path("/s/{host}"), 1, pki_dir=Path("/s/pki"))
    assert with_pki[-2:] == ["--pki", "/s/pki"], "each host finds the node certificate at the controller's path"


@pytest.mark.parametrize("listen", [None, "10.0.0.1:0"])
def test_a_hostfile_needs_a_fixed_rendezvous_address(tmp_path: Path, listen: str | None):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("hv-01\n")
    with pytest.raises(ConfigError, match="--hostfile needs --listen IP:PORT"):
        cluster_settings(hostfile, listen)
    settings, hosts = cluster_settings(hostfile, "10.0.0.1:50552")
    assert settings.cluster and settings.listen == "10.0.0.1:50552" and hosts == ["hv-01"]


@pytest.mark.parametrize("listen, error", [
    ("0.0.0.0:50552", "not 0.0.0.0"),
    ("somewhere:1", "must be IP:PORT"),
    ("10.0.0.1", "must be IP:PORT"),
])
def test_the_rendezvous_address_must_be_one_others_can_reach(listen: str, error: str):
    from cloudland.config import TreeSettings

    with pytest.raises(ConfigError, match=error):
        TreeSettings(listen=listen)
