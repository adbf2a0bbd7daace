"""The underlay: hosts reach each other by name and address; cuts, crashes, hosts added and
removed while the others keep talking."""

from __future__ import annotations

import subprocess

from cloudland_lab.lab import installation_in_tmp
from tests.lab.probes import PORT, PYTHON, TALK, ask, serve, wait_answer


def test_hosts_reach_each_other_by_name_and_address(lab_factory):
    lab = lab_factory(["ctl", "h1", "h2"])
    for host in lab.hosts:
        serve(lab, host)
    for source in lab.hosts:
        for target in lab.hosts:
            assert ask(lab, source, target) == target
            assert ask(lab, source, lab.address(target)) == target


def test_cut_blocks_traffic_and_restore_brings_it_back_while_processes_live(lab_factory):
    lab = lab_factory(["h1", "h2", "h3"])
    server, _ = serve(lab, "h2"), serve(lab, "h3")
    assert ask(lab, "h1", "h2") == "h2"
    lab.cut("h2")
    assert lab.is_cut("h2")
    assert ask(lab, "h1", "h2", timeout=1).startswith("unreachable")
    assert ask(lab, "h2", "h3", timeout=1).startswith("unreachable")  # both ways
    assert ask(lab, "h1", "h3") == "h3"  # the rest of the lab is untouched
    assert server.poll() is None and server.pid in lab.pids("h2")
    lab.restore("h2")
    wait_answer(lab, "h1", "h2", "h2")
    assert server.poll() is None


def test_crash_kills_only_that_hosts_processes_and_it_can_reboot(lab_factory):
    lab = lab_factory(["h1", "h2"])
    victims = [lab.popen("h1", ["sleep", "300"]) for _ in range(2)]
    # A process started from a shell in the host counts too (not a child of ours).
    lab.run("h1", "sleep 300 >/dev/null 2>&1 &", check=True)
    bystander = lab.popen("h2", ["sleep", "300"])
    lab.run("h1", "echo kept > /tmp/disk; echo lost > /run/volatile", check=True)
    assert len(lab.pids("h1")) == 3 and lab.pids("h2") == {bystander.pid}
    lab.crash("h1")
    assert [v.wait(timeout=5) for v in victims] == [-9, -9]
    assert lab.pids("h1") == set()
    assert bystander.poll() is None and lab.pids("h2") == {bystander.pid}
    # "Reboot": the namespaces stayed; new processes start, with the same hostname and files.
    assert lab.run("h1", "hostname; cat /tmp/disk", capture_output=True, text=True).stdout.split() == ["h1", "kept"]
    serve(lab, "h1")
    assert ask(lab, "h2", "h1") == "h1"
    # A crash with wipe empties tmpfs as a reboot does.
    lab.crash("h1", wipe=True)
    # What stays: the installation bound in when it lives under the machine's /tmp (a CI clone).
    kept = sorted({path.relative_to("/tmp").parts[0] for path in installation_in_tmp()})
    assert lab.run("h1", "ls -A /tmp /dev/shm; ls /run", capture_output=True, text=True).stdout.split() == [
        "/dev/shm:", "/tmp:", *kept, "cloudland-lab", "lock"]
    assert (lab.lab_dir / "state.json").exists()  # the lab directory bound into /run survives


def test_add_and_remove_hosts_live_while_others_keep_talking(lab_factory):
    lab = lab_factory(["h1", "h2"])
    serve(lab, "h2")
    talker = lab.popen("h1", [PYTHON, "-c", TALK, "h2", str(PORT)], stdin=subprocess.PIPE,
                       stdout=subprocess.PIPE, text=True)
    assert lab.add_host("h5") == "10.77.0.3"
    serve(lab, "h5")
    assert ask(lab, "h1", "h5") == "h5" and ask(lab, "h5", "h2") == "h2"
    lab.remove_host("h5")
    assert "h5" not in lab.hosts
    assert "h5" not in subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout.split()
    assert ask(lab, "h1", "10.77.0.3", timeout=1).startswith("unreachable")
    assert lab.add_host("h6") == "10.77.0.3"  # the freed address is used again ...
    serve(lab, "h6")
    assert ask(lab, "h1", "10.77.0.3") == "h6"  # ... and reached at once (its MAC follows the address)
    out, _ = talker.communicate("", timeout=30)
    answers, failures = map(int, out.split())
    assert answers > 10 and failures == 0


def test_the_machine_itself_can_be_cabled_to_reach_services_in_hosts(lab_factory):
    import socket

    from cloudland_lab import leftovers

    lab = lab_factory(["h1", "h2"])
    address = lab.attach_machine()
    assert address.endswith(".254") and lab.attach_machine() == address, "attaching twice is one cable"
    assert lab.add_host("h3") != address, "hosts added later never take the machine's address"
    serve(lab, "h1")
    with socket.create_connection((lab.address("h1"), PORT), timeout=5) as conn:
        conn.sendall(b"?")
        assert conn.recv(64).decode().strip() == "h1"
    lab.down()
    assert leftovers(lab.prefix) == [], "the machine's cable goes with the lab"
