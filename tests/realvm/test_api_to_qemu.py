"""The whole path on a real hypervisor: REST API -> tree -> agent -> libvirtd -> QEMU (TCG) guests.

An image is uploaded through the API (the test guest's bootable qcow2 disk), two VMs are
created from it with user data and an SSH key, and each guest's serial console, read through
the API's WebSocket, shows that it booted from its own overlay and read its hostname, key and
user data from its config drive. The image is fetched once for both. Then both are stopped
(ACPI) and deleted, leaving no domain, no disk and no QEMU process behind. A guest's VNC
address, asked of the API, is where its display answers.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest
from websockets.sync.client import connect

from cloudland_agents.compute.configdrive import _json_bytes
from cloudland_agents.compute.guests import network_data
from cloudland_launcher.harness import start_tree, stop_tree, wait_for
from tests.integration.cloud import Cloud

pytest.register_assert_rewrite("tests.realvm.qemu_host")  # before the import: it is a plugin too
from tests.realvm.qemu_host import READY, QemuSession, qemu_processes  # noqa: E402

pytest_plugins = ["tests.realvm.qemu_host"]
pytestmark = [pytest.mark.slow, pytest.mark.root, pytest.mark.realvm]

USER_DATA = "#cloud-config from the API\nruncmd: [echo hi]\n"
BOOT_TIMEOUT_S = 180.0


@pytest.fixture
def real_cloud(qemu_libvirt: QemuSession, qemu_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Cloud]:
    """One real hypervisor (this machine's qemu:///system) in a tree, and the API on it."""
    qemu_libvirt.conn  # noqa: B018 - libvirtd up (someone may have stopped it since the last test)
    # The agent's files (overlays, drives, console logs) must be reachable by QEMU's user.
    state = qemu_dir
    monkeypatch.setenv("CLOUDLAND_DRIVER", "libvirt")
    monkeypatch.setenv("CLOUDLAND_LIBVIRT_URI", "qemu:///system")
    tree = start_tree(state / "tree", 1, 1, 32, 0.5)
    cloud = Cloud(tree, state / "api", f"sqlite:///{state / 'api' / 'cloudland.db'}")
    try:
        cloud.start_api()
        yield cloud
    finally:
        cloud.stop_api()
        stop_tree(tree)
        # A failed test may leave guests: those whose files are ours go, so no QEMU outlives it.
        for domain in qemu_libvirt.conn.listAllDomains():
            if str(state) in domain.XMLDesc(0):
                try:
                    domain.destroy()
                except libvirt.libvirtError:
                    if domain.isActive():  # not one that was powering off (or off) as we asked
                        raise
                domain.undefine()


def ssh_key(directory: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "e2e@cloudland", "-f",
                    str(directory / "id")], check=True, timeout=30)
    return (directory / "id.pub").read_text().strip()


def console_url(cloud: Cloud, instance_id: int) -> str:
    """The WebSocket of a VM's console on the API ``cloud`` talks to (here, or in a lab host)."""
    assert cloud.http is not None
    return f"{cloud.http.base_url}".rstrip("/").replace("http", "ws", 1) + f"/instances/{instance_id}/console"


def console_until(cloud: Cloud, instance_id: int, text: str, timeout: float) -> str:
    """What the VM's console printed, read through the API's WebSocket, until ``text`` shows."""
    assert cloud.http is not None
    url = console_url(cloud, instance_id)
    seen = b""
    deadline = time.monotonic() + timeout
    with connect(url, additional_headers={"Authorization": cloud.http.headers["Authorization"]}) as ws:
        while text.encode() not in seen:
            left = deadline - time.monotonic()
            assert left > 0, f"no {text!r} on the console of instance {instance_id}:\n{seen.decode(errors='replace')}"
            try:
                seen += ws.recv(timeout=left)  # type: ignore[operator]
            except TimeoutError:
                continue
    return seen.decode(errors="replace")


def upload_guest(cloud: Cloud, guest: Path, name: str = "guest", disk_format: str = "qcow2") -> dict[str, Any]:
    """The test guest's disk uploaded through the API as image ``name``; the active image."""
    assert cloud.http is not None
    image = cloud.post("/images", {"name": name, "disk_format": disk_format})
    reply = cloud.http.put(f"/images/{image['id']}/file", content=(guest / f"guest.{disk_format}").read_bytes(),
                           headers={"Content-Type": "application/octet-stream"})
    assert reply.status_code == 200, reply.text
    uploaded: dict[str, Any] = reply.json()
    return uploaded


def type_until(cloud: Cloud, instance_id: int, line: str, expect: bytes, timeout: float = 90) -> bytes:
    """Type ``line`` into the VM's shell through the API's WebSocket until ``expect`` shows."""
    assert cloud.http is not None
    url = console_url(cloud, instance_id)
    seen = b""
    with connect(url, additional_headers={"Authorization": cloud.http.headers["Authorization"]}) as ws:
        # The shell's line editor first asks the terminal where its cursor is (ESC [6n) and
        # takes what arrives next as the answer: type Enter until it is past that, then the line.
        deadline = time.monotonic() + timeout
        typed_at = 0.0
        while expect not in seen and time.monotonic() < deadline:
            if time.monotonic() - typed_at > 5:
                ws.send(b"\r")
                ws.send(line.encode() + b"\r")
                typed_at = time.monotonic()
            try:
                seen += ws.recv(timeout=1)  # type: ignore[operator]
            except TimeoutError:
                pass
    assert expect in seen, seen[-800:]
    return seen


def ready(cloud: Cloud, guest: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The hypervisor up, flavor ``tiny`` made and the test guest uploaded as image ``guest``:
    (that hypervisor, that image)."""
    [host] = cloud.wait_hypervisors(1)
    cloud.post("/flavors", {"name": "tiny", "vcpus": 1, "memory_mib": 128, "disk_gib": 1})
    return host, upload_guest(cloud, guest)


def running_vm(cloud: Cloud, name: str, image: str = "guest") -> dict[str, Any]:
    """A new VM ``name`` of flavor ``tiny`` from ``image``, once the API says it runs."""
    [vm] = cloud.post("/instances", {"name": name, "flavor": "tiny", "image": image})["instances"]
    wait_for(lambda: cloud.get(f"/instances/{vm['id']}")["status"] == "running", 120, f"{name} running")
    vm_now: dict[str, Any] = cloud.get(f"/instances/{vm['id']}")
    return vm_now


def job_ended(cloud: Cloud, job: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    """Job ``job`` once it has ended (or as it is after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        done: dict[str, Any] = cloud.get(f"/jobs/{job['id']}", wait=30)
        if done["state"] not in ("pending", "dispatched") or time.monotonic() > deadline:
            return done


def facts(console: str) -> dict[str, str]:
    """The guest's ``cloudland-guest: key=value`` lines."""
    return dict(re.findall(r"cloudland-guest: ([\w-]+)=([^\r\n]*)", console))


def test_vms_from_an_uploaded_image_boot_read_their_drive_and_leave_nothing(
        real_cloud: Cloud, qemu_libvirt: QemuSession, tmp_path: Path) -> None:
    cloud = real_cloud
    host, image = ready(cloud, qemu_libvirt.guest)
    cloud.post("/ssh-keys", {"name": "e2e", "public_key": ssh_key(tmp_path)})
    assert cloud.http is not None

    accepted = cloud.post("/instances", {"name": "e2e", "flavor": "tiny", "image": "guest", "ssh_key": "e2e",
                                         "count": 2, "user_data": USER_DATA})
    assert cloud.wait_batch(accepted["batch"], 2, timeout=120)["succeeded"] == 2, cloud.jobs(accepted["batch"], "failed")
    vms = sorted(cloud.instances(name="e2e-*"), key=lambda v: v["name"])
    assert [(v["name"], v["status"], v["hypervisor_id"]) for v in vms] == [("e2e-1", "running", host["id"]),
                                                                           ("e2e-2", "running", host["id"])]
    domains = {f"cl-{v['uuid']}" for v in vms}
    assert len(qemu_processes(domains)) == 2

    for vm in vms:
        seen = facts(console_until(cloud, vm["id"], READY, BOOT_TIMEOUT_S))
        assert seen["hostname"] == vm["name"] and seen["uuid"] == vm["uuid"], seen
        assert seen["public-keys"] == "1" and seen["user-data"] == USER_DATA.splitlines()[0], seen
        # Network data too: these VMs have no NIC yet, so its lists are empty.
        assert seen["network-data-sha256"] == hashlib.sha256(_json_bytes(network_data(()))).hexdigest(), seen
    # One image, two guests: fetched once into the hypervisor's cache, one overlay each.
    assert cloud.log().count(f"GET /api/v1/images/{image['id']}/download") == 1
    state = cloud.tree.state_dir
    assert [p.name for p in (state / "image-cache").iterdir()] == [f"{image['sha256']}.qcow2"]
    assert sorted(p.name for p in (state / "guests").iterdir()) == sorted(v["uuid"] for v in vms)
    deleting_image = cloud.http.delete(f"/images/{image['id']}")
    assert deleting_image.status_code == 409 and "used by 2 instance(s)" in deleting_image.text

    stop = cloud.post("/instances/actions", {"action": "stop", "ids": [v["id"] for v in vms]})  # ACPI
    assert cloud.wait_batch(stop["batch"], 2, timeout=120)["succeeded"] == 2, cloud.jobs(stop["batch"], "failed")
    assert {v["status"] for v in cloud.instances(name="e2e-*")} == {"stopped"}
    states = {d.name(): d.state()[0] for d in qemu_libvirt.conn.listAllDomains() if d.name() in domains}
    assert set(states) == domains and set(states.values()) == {5}  # VIR_DOMAIN_SHUTOFF

    delete = cloud.post("/instances/actions", {"action": "delete", "ids": [v["id"] for v in vms]})
    assert cloud.wait_batch(delete["batch"], 2, timeout=120)["succeeded"] == 2, cloud.jobs(delete["batch"], "failed")
    assert not domains & {d.name() for d in qemu_libvirt.conn.listAllDomains()}
    assert list((state / "guests").iterdir()) == []
    wait_for(lambda: qemu_processes(domains) == {}, 30, "no QEMU left")
    # The image stays cached for the next guest; with no instance left it may be deleted, and
    # then the hypervisor drops its copy too.
    base = state / "image-cache" / f"{image['sha256']}.qcow2"
    assert base.exists()
    assert cloud.http.delete(f"/images/{image['id']}").status_code == 204
    wait_for(lambda: not base.exists(), 30, "the hypervisor to evict the deleted image")


def test_console_shows_and_types(real_cloud: Cloud, qemu_libvirt: QemuSession) -> None:
    """Typing through the WebSocket reaches the guest's shell, and its answer comes back."""
    cloud = real_cloud
    ready(cloud, qemu_libvirt.guest)
    vm = running_vm(cloud, "shell")
    console_until(cloud, vm["id"], "/ # ", BOOT_TIMEOUT_S)  # the guest's shell prompt
    type_until(cloud, vm["id"], "echo typed-$((6*7))", b"typed-42")
    job: dict[str, Any] = cloud.request("DELETE", f"/instances/{vm['id']}")
    assert cloud.get(f"/jobs/{job['id']}", wait=60)["state"] == "succeeded"


def test_cloudland_vm_console_in_a_terminal(real_cloud: Cloud, qemu_libvirt: QemuSession, tmp_path: Path) -> None:
    """What a person sees: ``cloudland vm console NAME`` in tmux shows the guest and types into it."""
    from tests.integration.test_cli_tree import BIN, TmuxPane

    cloud = real_cloud
    ready(cloud, qemu_libvirt.guest)
    vm = running_vm(cloud, "tty")
    assert cloud.http is not None
    env = {"CLOUDLAND_ENDPOINT": f"http://127.0.0.1:{cloud.port}", "CLOUDLAND_CONFIG": str(tmp_path / "cli.json"),
           "CLOUDLAND_TOKEN": cloud.http.headers["Authorization"].split()[1]}
    pane = TmuxPane(socket=f"cloudland-console-{uuid.uuid4().hex[:8]}", session="console")
    try:
        pane.start(["env", *(f"{k}={v}" for k, v in env.items()), str(BIN / "cloudland"), "vm", "console", "tty"],
                   tmp_path, tmp_path / "tmux.conf")
        screen = pane.wait_for_text(READY, BOOT_TIMEOUT_S)
        assert "console of VM tty" in screen and "Ctrl-] leaves" in screen
        assert "cloudland-guest: hostname=tty" in screen
        pane.wait_for_text("/ #", 60)  # tmux trims the prompt's trailing space
        deadline = time.monotonic() + 90
        while "answer-42" not in pane.screen():  # the shell's first line may be eaten (ESC [6n)
            assert time.monotonic() < deadline, pane.screen()[-2000:]
            pane.tmux("send-keys", "-t", pane.session, "echo answer-$((6*7))", "Enter")
            time.sleep(3)
        pane.tmux("send-keys", "-t", pane.session, "C-]")
        wait_for(lambda: pane.exit_status() is not None, 30, "the console to end after Ctrl-]")
        assert pane.exit_status() == 0, pane.screen()[-2000:]
    finally:
        pane.kill_server()
    job: dict[str, Any] = cloud.request("DELETE", f"/instances/{vm['id']}")
    assert cloud.get(f"/jobs/{job['id']}", wait=60)["state"] == "succeeded"


def test_rebuild_boots_a_fresh_disk_from_another_image(real_cloud: Cloud, qemu_libvirt: QemuSession) -> None:
    cloud = real_cloud
    images = {"guest": ready(cloud, qemu_libvirt.guest)[1],
              "guest-raw": upload_guest(cloud, qemu_libvirt.guest, "guest-raw", "raw")}
    vm = running_vm(cloud, "rebuilt")
    console_until(cloud, vm["id"], READY, BOOT_TIMEOUT_S)

    job = cloud.post(f"/instances/{vm['id']}/rebuild", {"image": "guest-raw"})
    assert cloud.get(f"/jobs/{job['id']}", wait=60)["state"] == "succeeded"
    shown = cloud.get(f"/instances/{vm['id']}")
    assert (shown["image_id"], shown["status"]) == (images["guest-raw"]["id"], "running")
    assert cloud.get(f"/instances/{vm['id']}/vnc")["port"] >= 5900  # the new definition keeps its display
    # The console log is appended to: a second "ready" is the second boot, on the new disk.
    console = console_until(cloud, vm["id"], "SYSLINUX", BOOT_TIMEOUT_S)
    wait_for(lambda: console_until(cloud, vm["id"], READY, 5).count(READY) >= 2, BOOT_TIMEOUT_S, "a second boot")
    assert "hostname=rebuilt" in console
    guest_dir = cloud.tree.state_dir / "guests" / vm["uuid"]
    [disk] = list(guest_dir.glob("disk*.qcow2"))
    info = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(disk)], capture_output=True, text=True,
                          check=True).stdout
    assert f"{images['guest-raw']['sha256']}.raw" in info, info
    deleted: dict[str, Any] = cloud.request("DELETE", f"/instances/{vm['id']}")
    assert cloud.get(f"/jobs/{deleted['id']}", wait=60)["state"] == "succeeded"
    assert not guest_dir.exists()


def test_a_domain_undefined_behind_the_apis_back_comes_back_on_its_own_disk(
        real_cloud: Cloud, qemu_libvirt: QemuSession) -> None:
    """Someone destroys and undefines a running guest's domain with libvirt, not through the API:
    the reconciler sees it missing on its live hypervisor, defines and starts it again with no
    job by hand, and the guest boots again from the same disk file (its overlay, not a fresh
    copy of the image) with its config drive. The guest was rebuilt first, so its disk is the
    one its rebuild made (named by that job), not the ``disk.qcow2`` a new guest gets."""
    cloud = real_cloud
    ready(cloud, qemu_libvirt.guest)
    vm = running_vm(cloud, "healed")
    console_until(cloud, vm["id"], READY, BOOT_TIMEOUT_S)
    rebuilt = cloud.post(f"/instances/{vm['id']}/rebuild", {"image": "guest"})
    assert cloud.get(f"/jobs/{rebuilt['id']}", wait=60)["state"] == "succeeded"
    boots = 2  # the first, and the rebuilt disk's
    wait_for(lambda: console_until(cloud, vm["id"], READY, 5).count(READY) >= boots, BOOT_TIMEOUT_S, "the rebuilt boot")
    name = f"cl-{vm['uuid']}"
    guest_dir = cloud.tree.state_dir / "guests" / vm["uuid"]
    [disk] = list(guest_dir.glob("disk*.qcow2"))
    assert disk.name == f"disk-{rebuilt['id']}.qcow2"
    disk_before = disk.stat().st_ino
    jobs_before = {job["id"] for job in cloud.get("/jobs", instance=vm["id"], limit=100)["items"]}

    domain = qemu_libvirt.conn.lookupByName(name)
    domain.destroy()
    domain.undefine()
    wait_for(lambda: qemu_processes({name}) == {}, 30, "the guest's QEMU to end")

    def back() -> bool:
        try:
            return bool(qemu_libvirt.conn.lookupByName(name).isActive())
        except libvirt.libvirtError:
            return False

    wait_for(back, 60, f"domain {name} defined and running again")
    wait_for(lambda: console_until(cloud, vm["id"], READY, 5).count(READY) > boots, BOOT_TIMEOUT_S, "another boot")
    assert disk.exists() and disk.stat().st_ino == disk_before, "the guest must boot from its own disk"
    assert [p.name for p in guest_dir.glob("disk*.qcow2")] == [disk.name]
    new = [job for job in cloud.get("/jobs", instance=vm["id"], limit=100)["items"]
           if job["id"] not in jobs_before]
    assert [(job["action"], job["state"]) for job in new] == [("recover", "succeeded")], new
    assert new[0]["batch"].startswith("reconcile-"), new
    assert cloud.get(f"/instances/{vm['id']}")["status"] == "running"
    deleted: dict[str, Any] = cloud.request("DELETE", f"/instances/{vm['id']}")
    assert cloud.get(f"/jobs/{deleted['id']}", wait=60)["state"] == "succeeded"


def read_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            break
        data += chunk
    return data


def test_vnc_address_is_where_the_guests_display_answers(real_cloud: Cloud, qemu_libvirt: QemuSession,
                                                          tmp_path: Path) -> None:
    """The API's VNC address of a running guest (CLOUDLAND_VNC_LISTEN's default, 127.0.0.1) is
    where its QEMU's VNC server greets a client (RFB 3.8); the CLI prints the same; a stopped
    guest has no display (409)."""
    cloud = real_cloud
    host, _image = ready(cloud, qemu_libvirt.guest)
    vm = running_vm(cloud, "screen")
    assert cloud.http is not None
    vnc = cloud.get(f"/instances/{vm['id']}/vnc")
    assert (vnc["instance"], vnc["hypervisor"], vnc["host"]) == (vm["id"], host["id"], "127.0.0.1"), vnc
    assert vnc["port"] >= 5900 and vnc["address"] == f"127.0.0.1:{vnc['port']}", vnc
    with socket.create_connection(("127.0.0.1", vnc["port"]), timeout=10) as sock:
        sock.settimeout(10)
        assert read_exactly(sock, 12) == b"RFB 003.008\n"

    env = dict(os.environ, CLOUDLAND_ENDPOINT=f"http://127.0.0.1:{cloud.port}",
               CLOUDLAND_TOKEN=cloud.http.headers["Authorization"].split()[1],
               CLOUDLAND_CONFIG=str(tmp_path / "cli.json"))
    done = subprocess.run([str(Path(sys.executable).parent / "cloudland"), "vm", "vnc", "screen"], env=env,
                          capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert (done.returncode, done.stdout.strip()) == (0, vnc["address"]), done

    job = cloud.post(f"/instances/{vm['id']}/stop", {"force": True})
    assert cloud.get(f"/jobs/{job['id']}", wait=60)["state"] == "succeeded"
    reply = cloud.http.get(f"/instances/{vm['id']}/vnc")
    assert reply.status_code == 409 and "is shutoff" in reply.json()["error"]["message"], reply.text
    deleted: dict[str, Any] = cloud.request("DELETE", f"/instances/{vm['id']}")
    assert cloud.get(f"/jobs/{deleted['id']}", wait=60)["state"] == "succeeded"
