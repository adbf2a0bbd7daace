"""Stubbing the API under the CLI's commands: ``connect()`` yields a stub instead of an ApiClient."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType
from typing import Any

import pytest

from cloudland_cli import common


def stub_connect(monkeypatch: pytest.MonkeyPatch, stub: Any, *modules: ModuleType) -> None:
    """Make every command of ``modules`` talk to ``stub``; errors.py exceptions become one line
    and an exit code, as under the real ``connect``."""
    @contextmanager
    def connect(require_token: bool = True) -> Iterator[Any]:
        with common.api_errors():
            yield stub

    for module in modules:
        monkeypatch.setattr(module, "connect", connect)
