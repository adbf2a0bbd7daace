"""Every ``--json`` list command prints the API's one list shape, ``{"items", "limit", "next_after"}``,
and the commands that list everything follow ``next_after`` page by page (issue 16).

The API is a stub that pages each collection two items at a time by an opaque cursor, as the
real one does, so nothing runs but the CLI's own code.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from typer.testing import CliRunner

from cloudland_cli import cloud, hyper, main, network, tenants, vm
from cloudland_cli.restclient import ApiClient
from tests.unit.cli_stub import stub_connect

STUB_PAGE = 2
COLLECTIONS = {path: [{"id": n, "name": f"{path.strip('/')}-{n}"} for n in range(1, 6)]
               for path in ("/flavors", "/images", "/ssh-keys", "/instances", "/hypervisors", "/jobs", "/vpcs",
                            "/subnets", "/ports", "/organisations", "/users")}
LISTS = [(("flavor", "list"), "/flavors"), (("image", "list"), "/images"), (("key", "list"), "/ssh-keys"),
         (("vm", "list"), "/instances"), (("hyper", "list"), "/hypervisors"), (("vpc", "list"), "/vpcs"),
         (("subnet", "list"), "/subnets"), (("port", "list"), "/ports"), (("org", "list"), "/organisations"),
         (("user", "list"), "/users")]


class PagingApi:
    """GETs of a collection answer at most STUB_PAGE items after the cursor ``after``."""

    iter_after = ApiClient.iter_after  # the CLI's own page-following, against this stub

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        self.calls.append((path, params))
        items = COLLECTIONS[path]
        start = int(params["after"].removeprefix("c")) if params.get("after") else 0
        size = min(params["limit"], STUB_PAGE)
        page = items[start:start + size]
        more = start + size < len(items)
        return {"items": page, "limit": params.get("limit"), "next_after": f"c{start + size}" if more else None}


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> PagingApi:
    stub = PagingApi()
    stub_connect(monkeypatch, stub, cloud, vm, hyper, network, tenants)
    return stub


def run_json(*args: str) -> dict[str, Any]:
    result = CliRunner().invoke(main.app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    shown: dict[str, Any] = json.loads(result.stdout)
    return shown


@pytest.mark.parametrize(("command", "path"), LISTS)
def test_json_list_commands_print_one_shape_of_every_page(api: PagingApi, command: tuple[str, ...],
                                                          path: str) -> None:
    shown = run_json(*command)
    assert set(shown) == {"items", "limit", "next_after"} and shown["next_after"] is None
    assert shown["items"] == COLLECTIONS[path]  # all five, from three pages, none twice
    assert [p.get("after") for _, p in api.calls] == [None, "c2", "c4"]


def test_job_list_json_is_one_page_and_its_cursor_gives_the_next(api: PagingApi) -> None:
    first = run_json("job", "list", "--limit", "2")
    assert set(first) == {"items", "limit", "next_after"} and first["items"] == COLLECTIONS["/jobs"][:2]
    rest = run_json("job", "list", "--limit", "2", "--after", first["next_after"])
    assert rest["items"] == COLLECTIONS["/jobs"][2:4] and rest["next_after"] == "c4"
