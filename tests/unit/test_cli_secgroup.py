"""``cloudland secgroup`` and ``port set`` against a stub API (issue 12): README's lines, what each
sends and prints, names resolved to ids, bad ports refused before any request."""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cloudland_cli import main, network, secgroup
from cloudland_cli.common import api_errors
from cloudland_cli.restclient import ApiClient

README = Path(__file__).resolve().parents[2] / "README.md"
DEFAULT = {"id": 1, "name": "default", "description": "", "is_default": True, "created_at": "2026-12-07T08:00:00Z",
           "rules": [{"id": 1, "direction": "egress", "protocol": "any", "port_min": None, "port_max": None,
                      "remote_cidr": None, "remote_group_id": None}]}
WEB = {"id": 2, "name": "web", "description": "", "is_default": False, "created_at": "2026-12-07T08:00:00Z",
       "rules": []}
SPARE = {"id": 10, "name": "spare", "subnet_id": 5, "vpc_id": 3, "mac": "02:c1:00:00:00:0a", "fixed_ips": ["10.0.0.50"],
         "instance_id": None, "device_index": None, "hypervisor_id": None, "security_groups": [1],
         "allowed_addresses": [], "created_at": "2026-12-07T08:00:00Z"}


class StubApi:
    """Serves two groups and one port; records every POST, PATCH and DELETE."""

    iter_after = ApiClient.iter_after

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, Any]] = []

    def get(self, path: str, **params: Any) -> Any:
        collections = {"/security-groups": [DEFAULT, WEB], "/ports": [SPARE]}
        if path in collections:
            return {"items": collections[path], "limit": params.get("limit"), "next_after": None}
        return {"/security-groups/1": DEFAULT, "/security-groups/2": WEB, "/ports/10": SPARE}[path]

    def post(self, path: str, body: dict[str, Any]) -> Any:
        self.sent.append(("POST", path, body))
        if path == "/security-groups":
            return WEB
        return {"id": 3, "port_min": None, "port_max": None, "remote_cidr": None, "remote_group_id": None,
                "direction": "ingress", "protocol": "any"} | body | (
                    {"remote_group_id": body["remote_group"]} if "remote_group" in body else {})

    def patch(self, path: str, body: dict[str, Any]) -> Any:
        self.sent.append(("PATCH", path, body))
        return SPARE | body

    def delete(self, path: str) -> None:
        self.sent.append(("DELETE", path, None))


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> StubApi:
    stub = StubApi()

    @contextmanager
    def connect(require_token: bool = True) -> Iterator[StubApi]:
        with api_errors():
            yield stub

    for module in (network, secgroup):
        monkeypatch.setattr(module, "connect", connect)
    return stub


def run(*argv: str) -> Any:
    return CliRunner().invoke(main.app, list(argv))


def readme_lines() -> list[list[str]]:
    """README's ``secgroup`` and ``port set`` lines, as argv (comments dropped)."""
    lines = re.findall(r"^\.venv/bin/cloudland ((?:secgroup|port set) .*?)(?:\s+#.*)?$", README.read_text(), re.M)
    return [shlex.split(line) for line in lines]


def test_the_readme_lines_send_what_they_say(api: StubApi) -> None:
    lines = readme_lines()
    assert len(lines) == 10, lines  # the quick start's ICMP rule, then the security groups' section
    for argv in lines:
        result = run(*argv)
        assert result.exit_code == 0, (argv, result.output)
    assert api.sent == [
        ("POST", "/security-groups/1/rules", {"direction": "ingress", "protocol": "icmp",
                                              "remote_cidr": "0.0.0.0/0"}),
        ("POST", "/security-groups", {"name": "web", "description": ""}),
        ("POST", "/security-groups/2/rules", {"direction": "ingress", "protocol": "tcp", "port_min": 22,
                                              "port_max": 22, "remote_cidr": "0.0.0.0/0"}),
        ("POST", "/security-groups/2/rules", {"direction": "ingress", "protocol": "icmp", "remote_group": 1}),
        ("PATCH", "/ports/10", {"security_groups": [2, 1], "allowed_addresses": ["10.0.0.200"]}),
        ("DELETE", "/security-groups/2/rules/3", None),
        ("PATCH", "/ports/10", {"security_groups": []}),
        ("DELETE", "/security-groups/2", None),
    ]


def test_what_they_print(api: StubApi) -> None:
    listed = run("secgroup", "list").stdout
    assert "default" in listed and "yes" in listed and "web" in listed
    added = run("secgroup", "rule", "add", "web", "--protocol", "udp", "--port", "8000-8080")
    assert added.stdout.strip() == "rule 3 added to web: ingress udp 8000-8080 from anywhere"
    assert "egress any to anywhere" in run("secgroup", "show", "default").stdout
    assert run("port", "set", "spare", "--secgroup", "web").stdout.strip() == (
        "port 10: security groups 2; allowed addresses none")


def test_bad_input_is_refused_before_any_request(api: StubApi) -> None:
    bad = run("secgroup", "rule", "add", "web", "--port", "22-x")
    assert bad.exit_code == 2 and "a port (22) or a range (8000-8080)" in bad.output
    nothing = run("port", "set", "spare")
    assert nothing.exit_code == 2 and "nothing to set" in nothing.output
    missing = run("secgroup", "show", "nope")
    assert missing.exit_code == 2 and "no security group named 'nope'" in missing.stderr
    assert api.sent == []
