"""The CLI starts fast (issue 16): a command's modules are imported only when it runs, and
usage errors are one line. Timing is bench/cli_bench.py's; these check the behaviour behind it."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from cloudland_cli import main

HEAVY = ("grpc", "httpx2", "google.protobuf", "rich.progress", "rich.table", "cloudland_proto.v1.root_pb2", "pydantic",
         "cloudland_cli.vm", "cloudland_cli.cloud", "cloudland_cli.tree")
PROBE = """
import json, sys
from cloudland_cli import main
sys.argv = ["cloudland", *{argv!r}]
try:
    main.main()
except SystemExit:
    pass
print(json.dumps(sorted(m for m in {heavy!r} if m in sys.modules)))
"""


def imported_after(*argv: str, **env: str) -> list[str]:
    """Which heavy modules a fresh interpreter has imported after running ``cloudland ARGV``."""
    done = subprocess.run([sys.executable, "-c", PROBE.format(argv=list(argv), heavy=HEAVY)],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "CLOUDLAND_CONFIG": "/nonexistent/cli.json", **env})
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout.splitlines()[-1]))


def test_help_imports_neither_grpc_nor_httpx() -> None:
    assert imported_after("--help") == []


def test_an_api_command_imports_only_what_it_uses() -> None:
    """`vm list`: httpx and Rich's tables, not gRPC, protobuf, progress bars or other commands' modules,
    nor pydantic (typer 0.29 coerces every option through it: ~85 ms a start, setup.cfg)."""
    imported = imported_after("vm", "list", "--json", CLOUDLAND_ENDPOINT="http://127.0.0.1:1", CLOUDLAND_TOKEN="x")
    assert imported == ["cloudland_cli.vm", "httpx2", "rich.table"]


@pytest.mark.parametrize("name", list(main.COMMANDS))
def test_each_commands_help_line_is_its_own(name: str) -> None:
    """COMMANDS' help lines stand in for the modules' in `cloudland --help`: they must agree."""
    entry = main.COMMANDS[name]
    module, _, attribute = entry.target.partition(":")
    target = getattr(__import__(module, fromlist=[attribute]), attribute)
    own = target.info.help if hasattr(target, "info") else inspect.getdoc(target)
    if isinstance(own, str):  # a Typer app may leave its help to COMMANDS
        assert own.split("\n\n")[0].replace("\n", " ") == entry.help


@pytest.mark.parametrize("argv", [["vm", "list", "--bogus"], ["nope"], ["vm", "create"], ["tree", "ping", "x"]])
def test_usage_errors_are_one_line(argv: list[str]) -> None:
    result = CliRunner().invoke(main.app, argv)
    assert result.exit_code == 2
    assert result.stderr.startswith("cloudland: ") and result.stderr.count("\n") == 1, result.stderr
    assert "╭" not in result.output


def test_help_texts_have_no_stray_spaces() -> None:
    """Plain help (no Rich markup): "[default: admin, ...]" is shown, not eaten into "User name ."."""
    text = CliRunner(env={"COLUMNS": "200"}).invoke(main.app, ["login", "--help"]).stdout
    assert " ." not in text and "[default: admin" in text
