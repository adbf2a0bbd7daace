"""Benchmark how fast the ``cloudland`` command starts, beside a bare ``python -c pass`` in the same run.

A batch CLI is run in loops, so it must start in ≤ 0.3 s for ``--help`` and simple calls (issue 16).
Each figure is the median wall time of ``--runs`` runs of the console script as a user runs it (a
new process each time), the commands taking turns so that a busy moment of the machine falls on
all of them alike:

    python -c pass           the interpreter alone: what no Python CLI can go below
    cloudland --help         the command tree, no command module imported
    cloudland vm list --json a real call: ``GET /api/v1/instances`` from a running API
    cloudland vm list        the same, as a table

The API runs as its own process (``python -m cloudland_api``, SQLite, no tree), as ``cloudland up``
runs it; the CLI reaches it through ``CLOUDLAND_ENDPOINT`` and ``CLOUDLAND_TOKEN``. Prints a
Markdown table for the README.

    .venv/bin/python bench/cli_bench.py [--runs 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from api_bench import Api  # noqa: E402 (the API as its own process, logged in)

CLOUDLAND = str(Path(sys.executable).with_name("cloudland"))
GOAL_S = 0.3


def wall_time(argv: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.decode()[-500:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cli-bench-") as tmp:
        work = Path(tmp)
        api = Api(work / "api", f"sqlite:///{work / 'api' / 'cloudland.db'}", root_endpoint="")
        try:
            assert api.token is not None
            env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDLAND_")}
            env.update(CLOUDLAND_CONFIG=str(work / "cli.json"), CLOUDLAND_ENDPOINT=api.base,
                       CLOUDLAND_TOKEN=api.token, COLUMNS="120")
            commands = {
                "python -c pass": [sys.executable, "-c", "pass"],
                "cloudland --help": [CLOUDLAND, "--help"],
                "cloudland vm list --json": [CLOUDLAND, "vm", "list", "--json"],
                "cloudland vm list": [CLOUDLAND, "vm", "list"],
            }
            for argv in commands.values():  # warm the page cache and the .pyc files first
                wall_time(argv, env)
            times: dict[str, list[float]] = {name: [] for name in commands}
            for _ in range(args.runs):
                for name, argv in commands.items():
                    times[name].append(wall_time(argv, env))
        finally:
            api.stop()
    load = os.getloadavg()[0]
    print(f"| command ({args.runs} runs, load {load:.1f}, {os.cpu_count()} cores) | median | min | max |")
    print("|---|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        mark = "" if name.startswith("python") or median <= GOAL_S else " (over 0.3 s)"
        print(f"| `{name}` | {median:.3f} s{mark} | {min(values):.3f} s | {max(values):.3f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
