"""The tree's priority (cloudland/priority.py): a process lowers its nice value and its session's
autogroup's, never raises them, and a rank started through launcher/boot.py does it before its
own module runs. Each case runs in a child process that is a session of its own, so the test's
process and session keep theirs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="lowering a nice value needs root (CAP_SYS_NICE)")

SHOW = "import os; print(os.getpriority(os.PRIO_PROCESS, 0), open('/proc/self/autogroup').read().split()[-1])"


def run(*argv: str, nice: int = 0) -> list[str]:
    done = subprocess.run(["nice", "-n", str(nice), sys.executable, *argv], capture_output=True, text=True,
                          timeout=60, start_new_session=True, check=True)
    return done.stdout.split()


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="no autogroup in this kernel")
def test_it_lowers_the_nice_value_and_the_sessions_autogroup_never_raises_them() -> None:
    call = "from cloudland.priority import raise_priority; print(raise_priority({}, 'test'));" + SHOW
    assert run("-c", call.format(-7)) == ["-7", "-7", "-7"]
    # Already ahead: kept. The process's value was -4 (nice), its new session's autogroup 0: lowered.
    assert run("-c", call.format(-2), nice=-4) == ["-4", "-4", "-2"]
    assert run("-c", call.format(5)) == ["0", "0", "0"]


@pytest.mark.skipif(not Path("/proc/self/autogroup").exists(), reason="no autogroup in this kernel")
def test_a_rank_started_through_boot_runs_its_module_at_its_inherited_value(tmp_path: Path) -> None:
    module = tmp_path / "showme.py"
    module.write_text("import sys\n" + SHOW + "\nprint(sys.argv[1:])\n")
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    done = subprocess.run(["nice", "-n", "-6", sys.executable, "-m", "cloudland_launcher.boot", "showme", "--node", "0:1"],
                          capture_output=True, text=True, timeout=60, start_new_session=True, check=True, env=env)
    assert done.stdout.split("\n")[:2] == ["-6 -6", "['--node', '0:1']"], done.stdout + done.stderr
