"""``cloudland router``, ``external-network`` and ``floating-ip`` against a stub API (issue 12): what
each command sends, what it prints, and names resolved to ids."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cloudland.errors import InvalidRequest
from cloudland_cli import network, routers
from cloudland_cli.restclient import ApiClient
from tests.unit.test_cli_network import run, serve

VPC = {"id": 3, "name": "prod"}
SUBNET = {"id": 5, "name": "web", "vpc_id": 3}
PORT = {"id": 9, "name": "app-nic", "fixed_ips": ["10.0.0.2"]}
EXTERNAL = {"id": 1, "name": "public", "cidr": "203.0.113.0/24", "gateway": "203.0.113.1", "bridge": "ext0",
            "allocation_pools": [{"start": "203.0.113.10", "end": "203.0.113.99"}]}
ROUTER = {"id": 7, "name": "r1", "vpc_id": 3, "subnet_ids": [5], "external_network_id": 1,
          "snat_addresses": [{"hypervisor_id": 2, "address": "203.0.113.10"}], "created_at": "2026-12-07T08:00:00Z"}
FIP = {"id": 4, "address": "203.0.113.11", "external_network_id": 1, "port_id": None, "fixed_ip": None,
       "created_at": "2026-12-07T08:00:00Z"}


class StubApi:
    """Serves one of each; records every call that changes something."""

    iter_after = ApiClient.iter_after

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []

    def get(self, path: str, **params: Any) -> Any:
        collections = {"/vpcs": [VPC], "/subnets": [SUBNET], "/ports": [PORT], "/routers": [ROUTER],
                       "/external-networks": [EXTERNAL], "/floating-ips": [FIP]}
        if path in collections:
            return {"items": collections[path], "limit": params.get("limit"), "next_after": None}
        return {"/routers/7": ROUTER, "/floating-ips/4": FIP}[path]

    def post(self, path: str, body: Any) -> Any:
        self.calls.append(("POST", path, body))
        if path == "/routers" and body["vpc"] != 3:
            raise InvalidRequest("unexpected")
        return {"/routers": ROUTER, "/routers/7/subnets": ROUTER, "/floating-ips": FIP,
                "/external-networks": EXTERNAL}[path]

    def put(self, path: str, body: Any) -> Any:
        self.calls.append(("PUT", path, body))
        return {"/routers/7/gateway": ROUTER, "/floating-ips/4/port": FIP | {"port_id": 9, "fixed_ip": "10.0.0.2"}}[path]

    def delete(self, path: str) -> Any:
        self.calls.append(("DELETE", path, None))
        return {"/routers/7/subnets/5": ROUTER | {"subnet_ids": []}, "/floating-ips/4/port": FIP}.get(path)


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> StubApi:
    return serve(monkeypatch, StubApi(), (routers, network))  # type: ignore[no-any-return]


def test_router_commands(api: StubApi) -> None:
    result = run("router", "create", "r1", "--vpc", "prod")
    assert result.exit_code == 0, result.output
    assert "router 7 r1 created: subnets [5], gateway 1, SNAT 203.0.113.10 (hv 2)" in result.stdout
    run("router", "add-subnet", "r1", "web")
    run("router", "remove-subnet", "7", "web")
    run("router", "set-gateway", "r1", "--external", "public")
    run("router", "set-gateway", "r1")
    assert api.calls == [("POST", "/routers", {"name": "r1", "vpc": 3}), ("POST", "/routers/7/subnets", {"subnet": 5}),
                         ("DELETE", "/routers/7/subnets/5", None),
                         ("PUT", "/routers/7/gateway", {"external_network": "public"}),
                         ("PUT", "/routers/7/gateway", {"external_network": None})]
    assert json.loads(run("router", "show", "r1", "--json").stdout) == ROUTER
    assert "203.0.113.10" in run("router", "list").stdout
    assert run("router", "delete", "r1").stdout.strip() == "router 7 r1 deleted"
    missing = run("router", "show", "nope")
    assert missing.exit_code == 2 and missing.stderr == "cloudland: no router named 'nope'\n"


def test_external_network_and_floating_ip_commands(api: StubApi) -> None:
    result = run("external-network", "create", "public", "--cidr", "203.0.113.0/24", "--bridge", "ext0",
                 "--pool", "203.0.113.10-203.0.113.99")
    assert result.exit_code == 0, result.output
    assert api.calls[-1] == ("POST", "/external-networks", {
        "name": "public", "cidr": "203.0.113.0/24", "bridge": "ext0",
        "allocation_pools": [{"start": "203.0.113.10", "end": "203.0.113.99"}]})
    assert "floating IP 4 203.0.113.11 allocated: no port" in run("floating-ip", "create", "--external", "1").stdout
    assert api.calls[-1] == ("POST", "/floating-ips", {"external_network": 1})
    associated = run("floating-ip", "associate", "203.0.113.11", "--port", "app-nic")
    assert "associated: port 9 (10.0.0.2)" in associated.stdout
    assert api.calls[-1] == ("PUT", "/floating-ips/4/port", {"port": 9})
    run("floating-ip", "disassociate", "4")
    assert api.calls[-1] == ("DELETE", "/floating-ips/4/port", None)
    assert run("floating-ip", "delete", "203.0.113.11").stdout.strip() == "floating IP 4 203.0.113.11 released"
    unknown = run("floating-ip", "delete", "198.51.100.1")
    assert unknown.exit_code == 2 and "no floating IP '198.51.100.1'" in unknown.stderr


class VmStub(StubApi):
    """Also a VM ``web-1`` (id 12) with two NICs: port 8 (eth1) and port 9 (eth0, its primary)."""

    def get(self, path: str, **params: Any) -> Any:
        if path == "/instances":
            return {"items": [{"id": 12, "name": "web-1"}], "limit": params.get("limit"), "next_after": None}
        if path == "/ports" and params.get("instance") == 12:
            nics = [PORT | {"id": 8, "device_index": 1}, PORT | {"device_index": 0}]
            return {"items": nics, "limit": params.get("limit"), "next_after": None}
        return super().get(path, **params)


def test_a_floating_ip_goes_to_a_vms_primary_nic(monkeypatch: pytest.MonkeyPatch) -> None:
    api = serve(monkeypatch, VmStub(), (routers, network))
    made = run("floating-ip", "create", "--external", "public", "--vm", "web-1")
    assert made.exit_code == 0, made.output
    assert "floating IP 4 203.0.113.11 allocated and associated: port 9 (10.0.0.2)" in made.stdout
    assert api.calls == [("POST", "/floating-ips", {"external_network": "public"}),
                         ("PUT", "/floating-ips/4/port", {"port": 9})]
    assert run("floating-ip", "associate", "4", "--vm", "web-1").exit_code == 0
    assert api.calls[-1] == ("PUT", "/floating-ips/4/port", {"port": 9})
    for wrong in (("--vm", "web-1", "--port", "app-nic"), ()):
        refused = run("floating-ip", "associate", "4", *wrong)
        assert refused.exit_code == 2 and "exactly one of --port and --vm" in refused.stderr, refused.output
    missing = run("floating-ip", "create", "--external", "public", "--vm", "web-9")
    assert missing.exit_code == 2 and "no VM named 'web-9'" in missing.stderr
    assert len(api.calls) == 3  # nothing allocated for a VM that is not there
