"""``cloudland vpc``, ``subnet``, ``port`` and ``vm create --network`` against a stub API (issue 11):
what each command sends, what it prints, and names resolved to ids."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from typer.testing import CliRunner

from cloudland.errors import Conflict
from cloudland_cli import main, network, vm
from cloudland_cli.common import api_errors
from cloudland_cli.restclient import ApiClient

VPC = {"id": 3, "name": "prod", "domain": "vpc-3.cloudland.internal", "mtu": 1450, "generation": 0,
       "created_at": "2026-12-07T08:00:00Z"}
SUBNET = {"id": 5, "name": "web", "vpc_id": 3, "cidr": "10.0.0.0/24", "gateway": "10.0.0.1", "vni": 4096,
          "allocation_pools": [{"start": "10.0.0.1", "end": "10.0.0.254"}], "dns_servers": [], "dhcp": True,
          "created_at": "2026-12-07T08:00:00Z"}
PORT = {"id": 9, "name": "", "subnet_id": 5, "vpc_id": 3, "mac": "02:c1:00:00:00:09", "fixed_ips": ["10.0.0.2"],
        "instance_id": None, "device_index": None, "hypervisor_id": None, "created_at": "2026-12-07T08:00:00Z"}
# Port names need not be unique: two are named "dup".
SPARE, DUP1, DUP2 = (PORT | {"id": i, "name": name, "mac": f"02:c1:00:00:00:{i:02x}"}
                     for i, name in ((10, "spare"), (11, "dup"), (12, "dup")))
APP = {"id": 4, "name": "app-1", "status": "running"}


class StubApi:
    """Serves one VPC, subnet and port; records every POST and DELETE."""

    iter_after = ApiClient.iter_after

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, Any]]] = []
        self.deletes: list[str] = []
        self.gets: list[tuple[str, dict[str, Any]]] = []

    def get(self, path: str, **params: Any) -> Any:
        self.gets.append((path, {k: v for k, v in params.items() if v is not None}))
        collections = {"/vpcs": [VPC], "/subnets": [SUBNET], "/ports": [PORT, SPARE, DUP1, DUP2],
                       "/instances": [APP]}
        if path in collections:
            return {"items": collections[path], "limit": params.get("limit"), "next_after": None}
        return {"/vpcs/3": VPC, "/subnets/5": SUBNET, "/ports/9": PORT, "/instances/4": APP}[path]

    def post(self, path: str, body: dict[str, Any]) -> Any:
        self.posts.append((path, body))
        if path == "/ports" and body.get("fixed_ips") == ["10.0.0.99"]:
            raise Conflict("address 10.0.0.99 of subnet 5 (web) is already taken")
        if path == "/instances":
            return {"batch": "b1", "instances": [], "jobs": []}
        return {"/vpcs": VPC, "/subnets": SUBNET, "/ports": PORT}[path] | {k: v for k, v in body.items()
                                                                           if k in ("name",)}

    def delete(self, path: str) -> None:
        self.deletes.append(path)


def serve(monkeypatch: pytest.MonkeyPatch, stub: Any, modules: tuple[Any, ...]) -> Any:
    """``stub`` behind the ``connect`` of ``modules``, inside the real ``api_errors`` (exit codes and
    one-line errors); returns it."""
    @contextmanager
    def connect(require_token: bool = True) -> Iterator[Any]:
        with api_errors():
            yield stub

    for module in modules:
        monkeypatch.setattr(module, "connect", connect)
    return stub


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> StubApi:
    """The stub behind ``connect``."""
    return serve(monkeypatch, StubApi(), (network, vm))  # type: ignore[no-any-return]


def run(*argv: str) -> Any:
    return CliRunner().invoke(main.app, list(argv))


def test_vpc_commands(api: StubApi) -> None:
    assert "vpc 3 prod created: domain vpc-3.cloudland.internal, MTU 1450" in run("vpc", "create", "prod").stdout
    assert api.posts == [("/vpcs", {"name": "prod"})]
    run("vpc", "create", "prod", "--domain", "prod.example")
    assert api.posts[-1] == ("/vpcs", {"name": "prod", "domain": "prod.example"})
    listed = json.loads(run("vpc", "list", "--json").stdout)
    assert listed == {"items": [VPC], "limit": 500, "next_after": None}
    assert json.loads(run("vpc", "show", "prod", "--json").stdout) == VPC
    assert run("vpc", "delete", "prod").stdout.strip() == "vpc 3 prod deleted" and api.deletes == ["/vpcs/3"]
    result = run("vpc", "show", "nope")
    assert result.exit_code == 2 and result.stderr == "cloudland: no vpc named 'nope'\n"


def test_subnet_create_names_its_vpc_by_id_and_parses_pools(api: StubApi) -> None:
    result = run("subnet", "create", "web", "--vpc", "prod", "--cidr", "10.0.0.0/24", "--gateway", "none",
                 "--pool", "10.0.0.10-10.0.0.99", "--dns", "1.1.1.1", "--no-dhcp")
    assert result.exit_code == 0, result.output
    assert api.posts == [("/subnets", {"name": "web", "vpc": 3, "cidr": "10.0.0.0/24", "dns_servers": ["1.1.1.1"],
                                       "dhcp": False, "gateway": None,
                                       "allocation_pools": [{"start": "10.0.0.10", "end": "10.0.0.99"}]})]
    assert "VNI 4096" in result.stdout
    bad = run("subnet", "create", "x", "--vpc", "3", "--cidr", "10.0.0.0/24", "--pool", "10.0.0.10")
    assert bad.exit_code == 2 and "write it as START-END" in bad.stderr
    assert "10.0.0.1-10.0.0.254" in run("subnet", "show", "web").stdout
    run("subnet", "list", "--vpc", "prod")
    assert api.gets[-1] == ("/subnets", {"limit": 500, "vpc": 3})


def test_port_commands(api: StubApi) -> None:
    result = run("port", "create", "--subnet", "web", "--ip", "10.0.0.2")
    assert result.stdout.strip() == "port 9 created: 02:c1:00:00:00:09 10.0.0.2"
    assert api.posts == [("/ports", {"subnet": 5, "name": "", "fixed_ips": ["10.0.0.2"]})]
    taken = run("port", "create", "--subnet", "5", "--ip", "10.0.0.99")
    assert taken.exit_code == 2 and taken.stderr.startswith("cloudland: address 10.0.0.99")
    assert json.loads(run("port", "list", "--json", "--instance", "4").stdout)["items"] == [PORT, SPARE, DUP1, DUP2]
    assert api.gets[-1] == ("/ports", {"limit": 500, "instance": 4})
    assert "10.0.0.2" in run("port", "show", "9").stdout
    deleted = run("port", "delete", "9")
    assert deleted.stdout.strip() == "port 9 deleted" and api.deletes == ["/ports/9"]  # no name, no gap


def test_ports_and_their_vm_are_named_by_name(api: StubApi) -> None:
    """README: ``port list --instance app-1``, ``port delete spare``."""
    assert run("port", "list", "--instance", "app-1").exit_code == 0
    assert api.gets[-1] == ("/ports", {"limit": 500, "instance": 4})
    assert ("/instances", {"limit": 500, "name": "app-1"}) in api.gets
    missing = run("port", "list", "--instance", "app-9")
    assert (missing.exit_code, missing.stderr.strip()) == (2, "cloudland: no VM named 'app-9'")
    assert '"id": 10' in run("port", "show", "spare", "--json").stdout
    deleted = run("port", "delete", "spare")
    assert deleted.stdout.strip() == "port 10 spare deleted" and api.deletes == ["/ports/10"]
    # A name two ports have is refused, naming both, and nothing is deleted.
    ambiguous = run("port", "delete", "dup")
    assert ambiguous.exit_code == 2, ambiguous.output
    assert ambiguous.stderr.strip() == "cloudland: 2 ports are named 'dup'; use an id: 11, 12"
    assert api.deletes == ["/ports/10"]


def test_vm_create_sends_its_networks_in_order(api: StubApi) -> None:
    result = run("vm", "create", "web", "--flavor", "small", "--image", "img", "--network", "web", "--network", "7",
                 "--no-wait")
    assert result.exit_code == 0, result.output
    assert api.posts == [("/instances", {"name": "web", "flavor": "small", "image": "img", "count": 1,
                                         "networks": ["web", 7]})]


def test_vm_nic_attach_and_detach(api: StubApi, monkeypatch: pytest.MonkeyPatch) -> None:
    job = {"id": "j1", "state": "pending"}
    monkeypatch.setattr(vm, "resolve_instance", lambda client, ref: {"id": 4, "name": "web"})
    monkeypatch.setattr(api, "post", lambda path, body: api.posts.append((path, body)) or job)
    monkeypatch.setattr(api, "delete", lambda path: api.deletes.append(path) or job)
    assert run("vm", "nic", "attach", "web", "--network", "lan", "--no-wait").exit_code == 0
    assert run("vm", "nic", "attach", "web", "--network", "5", "--no-wait").exit_code == 0
    assert run("vm", "nic", "attach", "web", "--port", "9", "--no-wait").exit_code == 0
    assert api.posts == [("/instances/4/nics", {"network": "lan"}), ("/instances/4/nics", {"network": 5}),
                         ("/instances/4/nics", {"port": 9})]
    detached = run("vm", "nic", "detach", "web", "9", "--no-wait")
    assert detached.exit_code == 0 and api.deletes == ["/instances/4/nics/9"]
    assert "job j1 NIC detach (port 9) of VM 4 accepted" in detached.stdout
    # Ports by name, as `port show` takes them.
    assert run("vm", "nic", "attach", "web", "--port", "spare", "--no-wait").exit_code == 0
    assert api.posts[-1] == ("/instances/4/nics", {"port": 10})
    assert run("vm", "nic", "detach", "web", "spare", "--no-wait").exit_code == 0
    assert api.deletes[-1] == "/instances/4/nics/10"
    both = run("vm", "nic", "attach", "web", "--network", "lan", "--port", "9")
    assert both.exit_code == 2 and both.stderr == "cloudland: give exactly one of --network and --port\n"
