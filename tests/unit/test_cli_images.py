"""``cloudland image upload``: the format defaults to what the file's bytes are (issue 16).

The API is a stub that records the image the CLI creates, so nothing runs but the CLI's own code.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cloudland_cli import cloud, main
from tests.unit.cli_stub import stub_connect

QCOW2_MAGIC = b"QFI\xfb"  # as api/services/images.py checks it


class RecordingApi:
    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        self.created.append(body)
        return {"id": 1, **body}

    def upload(self, path: str, file: Path, headers: dict[str, str], progress: Any = None) -> dict[str, Any]:
        return {"id": 1, "name": self.created[-1]["name"], "status": "active", "sha256": headers["X-Image-Sha256"]}


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> RecordingApi:
    stub = RecordingApi()
    stub_connect(monkeypatch, stub, cloud)
    return stub


@pytest.mark.parametrize(("head", "flags", "expected"), [
    (QCOW2_MAGIC, [], "qcow2"),            # x.qcow2 without --format is qcow2, not raw
    (b"\0\0\0\0", [], "raw"),
    (b"\0\0\0\0", ["--format", "qcow2"], "qcow2"),  # given: sent as given; the API refuses a mismatch
])
def test_upload_defaults_the_format_from_the_files_magic(api: RecordingApi, tmp_path: Path, head: bytes,
                                                        flags: list[str], expected: str) -> None:
    file = tmp_path / "x.qcow2"
    file.write_bytes(head + b"\1" * 1020)
    result = CliRunner().invoke(main.app, ["image", "upload", str(file), "--name", "x", *flags])
    assert result.exit_code == 0, result.output
    assert api.created == [{"name": "x", "arch": "x86_64", "disk_format": expected}]
