"""Each lab host is its own machine: hostname, /tmp, /dev/shm, /run, /etc/hosts, interfaces."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from cloudland_lab.lab import installation_in_tmp


def test_hosts_have_their_own_hostname_address_and_interfaces(lab_factory):
    lab = lab_factory(["ctl", "h1", "h2", "h3"])
    assert lab.hosts == ["ctl", "h1", "h2", "h3"]
    assert [lab.address(h) for h in lab.hosts] == ["10.77.0.1", "10.77.0.2", "10.77.0.3", "10.77.0.4"]
    for host in lab.hosts:
        # Separate commands: the hostname lives in a persistent UTS namespace, not in one process.
        assert lab.run(host, ["hostname"], capture_output=True, text=True).stdout == f"{host}\n"
        # sysfs shows this host's own interfaces, at the underlay's MTU.
        seen = lab.run(host, "ls /sys/class/net; cat /sys/class/net/eth0/mtu; "
                       "ip -o -4 address show eth0", capture_output=True, text=True).stdout.split()
        assert seen[:3] == ["eth0", "lo", "1500"]
        assert f"{lab.address(host)}/24" in seen
        # A host holds no copy of other namespaces' bind mounts (/run/netns/*, the lab's ns
        # files): those copies would keep other hosts' namespaces alive after they are removed.
        mounts = lab.run(host, ["cat", "/proc/self/mountinfo"], capture_output=True, text=True).stdout
        assert " - nsfs " not in mounts


@pytest.mark.parametrize("directory", ["/tmp", "/dev/shm", "/run"])
def test_private_directories(lab_factory, directory):
    lab = lab_factory(["h1", "h2"])
    name = f"{directory}/lab-marker-{uuid.uuid4().hex}"
    lab.run("h1", ["sh", "-c", f"echo from-h1 > {name}"], check=True)
    # Another command in h1 sees it (one mount namespace per host, kept alive between commands) ...
    assert lab.run("h1", ["cat", name], capture_output=True, text=True).stdout == "from-h1\n"
    # ... h2 and the machine itself do not.
    assert lab.run("h2", ["test", "-e", name]).returncode == 1
    assert not Path(name).exists()
    # Nor does a host see the machine's files there.
    Path(name).write_text("machine")
    try:
        assert lab.run("h1", ["cat", name], capture_output=True, text=True).stdout == "from-h1\n"
        assert lab.run("h2", ["test", "-e", name]).returncode == 1
    finally:
        Path(name).unlink()


def test_etc_hosts_names_every_host_and_follows_changes(lab_factory):
    lab = lab_factory(["ctl", "h1"])
    resolve = "getent hosts ctl h1 h9 | sort"
    assert lab.run("h1", resolve, capture_output=True, text=True).stdout.split() == ["10.77.0.1", "ctl",
                                                                                      "10.77.0.2", "h1"]
    lab.add_host("h9")
    # The file is bind-mounted into every host and rewritten in place: old hosts see the new one.
    assert "10.77.0.3" in lab.run("ctl", resolve, capture_output=True, text=True).stdout.split()
    lab.remove_host("h9")
    assert lab.run("ctl", ["getent", "hosts", "h9"]).returncode == 2


def test_commands_run_in_the_callers_directory_or_cwd(lab_factory, monkeypatch, tmp_path):
    lab = lab_factory(["h1"])
    assert lab.run("h1", ["pwd"], capture_output=True, text=True).stdout.strip() == str(Path.cwd())
    assert lab.run("h1", ["pwd"], capture_output=True, text=True, cwd="/etc").stdout == "/etc\n"
    # cwd is the host's directory: /tmp is h1's own, not the machine's.
    lab.run("h1", "touch /tmp/in-h1", check=True)
    (tmp_path / "on-the-machine").touch()
    # (plus the installation, bound in when it lives under the machine's /tmp: a CI clone)
    kept = sorted({path.relative_to("/tmp").parts[0] for path in installation_in_tmp()})
    assert lab.run("h1", ["ls"], capture_output=True, text=True, cwd="/tmp").stdout.split() == sorted(["in-h1", *kept])
    # A caller in its own /tmp (which h1 cannot see) runs commands in / of the host.
    monkeypatch.chdir(tmp_path)
    assert lab.run("h1", ["pwd"], capture_output=True, text=True).stdout == "/\n"
