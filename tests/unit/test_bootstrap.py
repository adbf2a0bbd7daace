"""Setup recovers from a .venv that an interrupted first `make run` left behind (issue 16):
deploy/venv.sh, which deploy/bootstrap.sh runs first, makes any such VENV whole again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

VENV_SH = Path(__file__).resolve().parents[2] / "deploy" / "venv.sh"


def setup_venv(venv: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["bash", str(VENV_SH), str(venv), sys.executable], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return done


def pip_runs(venv: Path) -> bool:
    try:
        return subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "--version"], capture_output=True,
                              timeout=60).returncode == 0
    except OSError:  # no interpreter there to run
        return False


def cut_short_before_pip(venv: Path) -> None:
    """What Ctrl-C during `python -m venv` leaves: the interpreter, no pip (bin/pip: No such file)."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)


def cut_short_at_the_start(venv: Path) -> None:
    """A directory with a bin/python that is not one yet."""
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")


@pytest.mark.parametrize("break_venv", [cut_short_before_pip, cut_short_at_the_start])
def test_a_half_made_venv_is_made_whole(tmp_path: Path, break_venv) -> None:  # type: ignore[no-untyped-def]
    venv = tmp_path / ".venv"
    break_venv(venv)
    assert not (venv / "bin" / "pip").exists() and not pip_runs(venv)
    setup_venv(venv)
    assert pip_runs(venv)
    # Whole now: the next setup leaves it be, and says nothing.
    assert setup_venv(venv).stdout == ""
