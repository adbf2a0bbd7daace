"""``GET /api/v1/instances/{id}/vnc``: a running guest's VNC address, asked of its hypervisor.

The tree here is a real gRPC server on a loopback port standing in for the root: it answers
``vm.get`` with the record a test gives it (as the agent of a real guest would), so the API
runs its real client and every answer the tree can give is tried. A simulated hypervisor's
answer through the real tree is proven in tests/integration, a real QEMU display in tests/realvm.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest

from cloudland import operations, pki
from cloudland.client import RootClient
from cloudland_api.models import Role
from cloudland_launcher.harness import free_port
from cloudland_proto.v1 import compute_pb2 as cpb
from cloudland_proto.v1 import envelope_pb2 as pb
from cloudland_proto.v1 import root_pb2, root_pb2_grpc
from tests.api.conftest import Api, Launcher, running

LIVE = {"state": "running", "domain_type": "qemu", "vnc_listen": "127.0.0.1", "vnc_port": 5901}


class Agents(root_pb2_grpc.RootServicer):
    """A root whose agents answer every command with ``reply``; records the commands."""

    def __init__(self) -> None:
        self.commands: list[pb.Command] = []
        self.status, self.error, self.payload = pb.OK, "", dict(LIVE)

    def answer(self, status: int = pb.OK, error: str = "", **record: Any) -> None:
        self.status, self.error, self.payload = status, error, LIVE | record

    def Dispatch(self, request: root_pb2.DispatchRequest, context: Any) -> Iterator[pb.ReplyBatch]:
        command = request.command
        self.commands.append(command)
        batch = pb.ReplyBatch()
        reply = batch.replies.add(job_id=command.job_id, hypervisor=command.targets.hypervisor, status=self.status,
                                  error=self.error)
        if self.status == pb.OK:
            reply.result.CopyFrom(operations.pack_result("vm.get", cpb.VmGetResult(vm=cpb.VmRecord(**self.payload))))
        yield batch


@pytest.fixture
def agents(api: Api) -> Iterator[Agents]:
    """The app asks this root (as its lifespan would set up with CLOUDLAND_API_ROOT_ENDPOINT)."""
    servicer = Agents()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    root_pb2_grpc.add_RootServicer_to_server(servicer, server)
    port = server.add_secure_port("127.0.0.1:0", pki.grpc_server_credentials(pki.default_dir()))
    server.start()
    api.app.state.root_client = RootClient(f"127.0.0.1:{port}")
    yield servicer
    api.app.state.root_client.close()
    api.app.state.root_client = None
    server.stop(grace=None)


def vnc(api: Api, instance: dict, headers: dict[str, str]) -> tuple[int, dict]:
    reply = api.client.get(f"/api/v1/instances/{instance['id']}/vnc", headers=headers)
    return reply.status_code, reply.json()


def test_the_address_of_a_running_guest(api: Api, admin_headers: dict[str, str], launch: Launcher,
                                        agents: Agents) -> None:
    instance = running(api, launch)
    assert vnc(api, instance, admin_headers) == (200, {
        "instance": instance["id"], "hypervisor": 7, "host": "127.0.0.1", "port": 5901, "address": "127.0.0.1:5901"})
    [command] = agents.commands  # asked live, of the instance's own hypervisor
    assert (command.operation, command.targets.hypervisor) == ("vm.get", 7)
    assert operations.request_of(command) == cpb.VmGetRequest(name=f"cl-{instance['uuid']}")


@pytest.mark.parametrize(
    ("listen", "host", "address"),
    [
        ("0.0.0.0", "hv7", "hv7:5901"),  # every interface: the hypervisor's hostname reaches it
        ("::", "hv7", "hv7:5901"),
        ("::1", "::1", "[::1]:5901"),
        ("2001:db8::5", "2001:db8::5", "[2001:db8::5]:5901"),
        ("192.0.2.7", "192.0.2.7", "192.0.2.7:5901"),
    ],
)
def test_host_and_address_by_listen_address(api: Api, admin_headers: dict[str, str], launch: Launcher,
                                             agents: Agents, listen: str, host: str, address: str) -> None:
    agents.answer(vnc_listen=listen)
    status, body = vnc(api, running(api, launch), admin_headers)
    assert status == 200 and (body["host"], body["address"]) == (host, address)


def test_any_role_may_read(api: Api, launch: Launcher, agents: Agents) -> None:
    instance = running(api, launch)
    reader = api.add_user("rita", "admin", Role.reader)
    assert vnc(api, instance, reader)[1]["address"] == "127.0.0.1:5901"


@pytest.mark.parametrize(
    ("record", "words"),
    [
        ({"domain_type": "test", "vnc_listen": "", "vnc_port": 0},
         ["has no graphical console: hypervisor 7 is simulated (libvirt test:///)"]),
        ({"vnc_listen": "", "vnc_port": 0}, ["has no graphical console: its domain has no VNC display"]),
        ({"state": "shutoff", "vnc_port": 0}, ["is shutoff: its VNC display listens only while it runs"]),
        ({"vnc_port": 0}, ["is running but its VNC display has no port yet"]),
    ],
)
def test_no_display_now_is_a_conflict_that_says_why(api: Api, admin_headers: dict[str, str], launch: Launcher,
                                                    agents: Agents, record: dict, words: list[str]) -> None:
    instance = running(api, launch)
    agents.answer(**record)
    status, body = vnc(api, instance, admin_headers)
    assert (status, body["error"]["code"]) == (409, "conflict")
    for word in [f"instance {instance['id']} (con) on hypervisor 7", *words]:
        assert word in body["error"]["message"]


def test_a_failed_agent_is_a_502_naming_the_hypervisor(api: Api, admin_headers: dict[str, str], launch: Launcher,
                                                       agents: Agents) -> None:
    instance = running(api, launch)
    error = f"vm.get: VM 'cl-{instance['uuid']}' not found (hypervisor 7)"
    agents.answer(pb.FAILED, error)
    assert vnc(api, instance, admin_headers) == (502, {"error": {"code": "hypervisor_error", "message": error}})


@pytest.mark.parametrize("status", [pb.TIMEOUT, pb.UNAVAILABLE, pb.UNKNOWN_HYPERVISOR])
def test_an_unreachable_hypervisor_is_a_503(api: Api, admin_headers: dict[str, str], launch: Launcher,
                                            agents: Agents, status: int) -> None:
    instance = running(api, launch)
    agents.answer(status, "subtree lost")
    code, body = vnc(api, instance, admin_headers)
    assert (code, body["error"]["code"]) == (503, "unavailable")
    assert body["error"]["message"] == f"vm.get: hypervisor 7 did not answer ({pb.Status.Name(status)}): subtree lost"


def test_an_unreachable_root_is_a_503(api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    instance = running(api, launch)
    endpoint = f"127.0.0.1:{free_port()}"  # nothing listens there
    api.app.state.root_client = RootClient(endpoint)
    try:
        code, body = vnc(api, instance, admin_headers)
    finally:
        api.app.state.root_client.close()
        api.app.state.root_client = None
    assert (code, body["error"]["code"]) == (503, "unavailable")
    assert f"cannot reach the root at {endpoint}" in body["error"]["message"]


def test_no_tree_is_a_503(api: Api, admin_headers: dict[str, str], launch: Launcher) -> None:
    instance = running(api, launch)
    assert vnc(api, instance, admin_headers) == (503, {"error": {
        "code": "unavailable", "message": "no tree is configured (CLOUDLAND_API_ROOT_ENDPOINT is empty)"}})


def test_refusals_before_asking_the_tree(api: Api, admin_headers: dict[str, str], launch: Launcher,
                                         agents: Agents) -> None:
    building = launch("busy")["instances"][0]
    status, body = vnc(api, building, admin_headers)
    assert status == 409 and body["error"]["message"] == (f"instance {building['id']} (busy) is building: "
                                                          "it has no domain to attach to")
    assert vnc(api, {"id": 999999}, admin_headers) == (404, {"error": {
        "code": "not_found", "message": "instance 999999 not found"}})
    other = api.add_user("olga", "other-org", Role.admin)
    assert vnc(api, building, other)[0] == 404  # another organisation's instance
    assert vnc(api, building, {})[0] == 401
    assert vnc(api, building, {"Authorization": "Bearer garbage"})[0] == 401
    assert agents.commands == []
