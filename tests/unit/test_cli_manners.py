"""The CLI's manners (issue 16): whole ids in narrow terminals, user data, asking before deleting
many VMs. The API is a stub recording the CLI's calls, so only the CLI's own code runs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cloudland_cli import cloud, common, main, vm

STAMP = "2025-01-01T00:00:00Z"
JOB_IDS = [str(uuid.UUID(int=n)) for n in (1, 2)]
VMS = [{"id": n, "name": f"web-{n}", "status": "running"} for n in (1, 2, 3)]


class StubApi:
    """Answers the calls of `job list`, `vm create` and `vm delete`, and keeps what was posted."""

    def __init__(self) -> None:
        self.posted: list[tuple[str, Any]] = []

    def get(self, path: str, **params: Any) -> Any:
        if path == "/jobs" and params.get("batch"):
            return {"items": [], "counts": {"succeeded": 3}}
        assert path == "/jobs", path
        return {"items": [{"id": i, "batch": "b-" + i, "kind": "vm", "action": "create", "subject_type": "instance",
                           "subject_id": 1, "hypervisor_id": 3, "state": "failed",
                           "reason": "no capacity: every hypervisor is full " * 3, "updated_at": STAMP}
                          for i in JOB_IDS], "counts": None}

    def iter_after(self, path: str, **params: Any) -> Iterator[dict[str, Any]]:
        yield from VMS

    def post(self, path: str, body: Any = None) -> Any:
        self.posted.append((path, body))
        return {"batch": "b-1", "jobs": [{"id": "j"}] * len(body.get("ids") or [1] * body.get("count", 1))}


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> StubApi:
    stub = StubApi()

    @contextmanager
    def connect(require_token: bool = True) -> Iterator[StubApi]:
        with common.api_errors():
            yield stub

    monkeypatch.setattr(cloud, "connect", connect)
    monkeypatch.setattr(vm, "connect", connect)
    return stub


def run(*args: str, columns: int = 80, stdin: str | None = None) -> Any:
    return CliRunner(env={"COLUMNS": str(columns)}).invoke(main.app, list(args), input=stdin)


def test_job_list_prints_whole_ids_at_80_columns(api: StubApi) -> None:
    result = run("job", "list")
    assert result.exit_code == 0, result.output
    for job_id in JOB_IDS:
        assert job_id in result.stdout  # pasteable into `job show`, not 84bdad…


def test_vm_create_sends_the_user_data_file(api: StubApi, tmp_path: Path) -> None:
    user_data = tmp_path / "init.yaml"
    user_data.write_text("#cloud-config\nhostname: web\n")
    result = run("vm", "create", "web", "--flavor", "small", "--image", "tiny", "--user-data", str(user_data),
                 "--no-wait")
    assert result.exit_code == 0, result.output
    assert api.posted[0][1]["user_data"] == "#cloud-config\nhostname: web\n"


def test_vm_create_with_an_unreadable_user_data_file_is_one_line(api: StubApi, tmp_path: Path) -> None:
    result = run("vm", "create", "web", "--flavor", "small", "--image", "tiny", "--user-data", str(tmp_path / "no"))
    assert result.exit_code == 2 and result.stderr.startswith("cloudland: cannot read the user data")
    assert api.posted == []


@pytest.mark.parametrize("selection", [["--all"], ["--name", "web-*"], ["--status", "running"]])
def test_vm_delete_by_filter_without_a_terminal_or_yes_refuses(api: StubApi, selection: list[str]) -> None:
    result = run("vm", "delete", *selection)  # CliRunner's stdin is not a terminal
    assert result.exit_code == 2
    assert result.stderr == "cloudland: stdin is not a terminal to confirm on: pass --yes to delete 3 VMs\n"
    assert api.posted == []


def test_vm_delete_all_with_yes_deletes(api: StubApi) -> None:
    result = run("vm", "delete", "--all", "--yes", "--no-wait")
    assert result.exit_code == 0, result.output
    assert api.posted == [("/instances/actions", {"action": "delete", "ids": [1, 2, 3], "force": False})]


def test_vm_delete_asks_on_a_terminal(api: StubApi, monkeypatch: pytest.MonkeyPatch) -> None:
    answers: list[bool] = [False, True]
    monkeypatch.setattr(vm, "confirmed", lambda question, what, yes: question == "Delete 3 VMs?" and answers.pop(0))
    result = run("vm", "delete", "--all")
    assert result.exit_code == 2 and result.stderr == "cloudland: delete of 3 VMs cancelled\n"
    assert api.posted == []
    assert run("vm", "delete", "--all", "--no-wait").exit_code == 0
    assert [path for path, _ in api.posted] == ["/instances/actions"]


def test_confirmed_asks_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    class Terminal:
        def isatty(self) -> bool:
            return True

    assert common.confirmed("Delete?", "delete", yes=True)
    with pytest.raises(common.InvalidRequest, match="pass --yes to delete 3 VMs"):
        common.confirmed("Delete 3 VMs?", "delete 3 VMs", yes=False)  # pytest's stdin is no terminal
    monkeypatch.setattr(common.sys, "stdin", Terminal())
    monkeypatch.setattr(common.typer, "confirm", lambda question, **kw: question == "Delete 3 VMs?")
    assert common.confirmed("Delete 3 VMs?", "delete 3 VMs", yes=False)


def test_vm_delete_by_id_does_not_ask(api: StubApi, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vm, "resolve_instance", lambda client, ref: {"id": int(ref)})
    assert run("vm", "delete", "2", "--no-wait").exit_code == 0
    assert api.posted[0][1]["ids"] == [2]


def test_api_help_prints_help_instead_of_serving(tmp_path: Path) -> None:
    """`python -m cloudland_api --help` must not start a second API on the same database."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "cloudland_api", "--help"], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert done.returncode == 0 and "CLOUDLAND_API_DATABASE_URL" in done.stdout
    assert not (tmp_path / "var").exists()  # no database made, no admin created
