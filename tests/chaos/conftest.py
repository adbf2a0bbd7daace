"""The chaos suite's table: one row per scenario, printed at the end of the run (also without -s)."""

from __future__ import annotations

from typing import Any

import pytest

ROWS: list[dict[str, Any]] = []


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "chaos" in str(item.fspath):
            item.add_marker(pytest.mark.mpi)
            item.add_marker(pytest.mark.root)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not ROWS:
        return
    write = terminalreporter.write_line
    write("")
    write("chaos: | database | scenario | jobs | not ended at the fault | recovery s | jobs succeeded / failed / lost | duplicates | "
          "in agreement after s | root restarted | load |")
    for row in ROWS:
        write(f"chaos: | {row['database']} | {row['scenario']} | {row['operations']} | {row['in_flight']} | "
              f"{row['recovery_s']:.1f} | "
              f"{row['succeeded']} / {row['failed']} / {row['lost']} | {row['duplicates']} | "
              f"{row['agreed_s']:.1f} | {'yes' if row['root_restarted'] else 'no'} | {row['load']:.1f} |")
