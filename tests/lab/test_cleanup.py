"""Nothing of a lab is left after down(), a failed up(), a failing test, or a crashed run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterable
from pathlib import Path

import cloudland_lab.lab
import pytest
from cloudland_lab import Lab, LabError, leftovers, sweep

from tests.labfixtures import lab_missing, new_prefix

REPO = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.lab, pytest.mark.root,
              pytest.mark.skipif(lab_missing() is not None, reason=str(lab_missing()))]


def alive(pid: int) -> bool:
    """Running (a zombie has released its namespaces and is as good as gone)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def assert_nothing_left(prefix: str, pids: Iterable[int] = ()) -> None:
    """Checked with the system's own tools, not only with the lab's leftovers()."""
    assert not [n for n in subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout.split()
                if n.startswith(f"{prefix}-")]
    assert f"{prefix}-" not in subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    assert f"/cloudland-lab/{prefix}" not in Path("/proc/mounts").read_text()
    assert not (cloudland_lab.STATE_ROOT / prefix).exists()
    assert not [pid for pid in pids if alive(pid)]
    assert leftovers(prefix) == []


def test_down_leaves_nothing(lab_factory):
    lab = lab_factory(["ctl", "h1", "h2"])
    procs = [lab.popen(host, ["sleep", "300"]) for host in lab.hosts]
    lab.run("h1", "sleep 300 >/dev/null 2>&1 &", check=True)  # an orphan, not our child
    lab.cut("h2")
    pids = set().union(*(lab.pids(h) for h in lab.hosts))
    assert len(pids) == 4 and leftovers(lab.prefix)
    lab.down()
    assert [p.wait(timeout=5) for p in procs] == [-9] * 3
    assert_nothing_left(lab.prefix, pids)
    lab.down()  # twice is harmless


def test_context_manager_cleans_after_an_exception():
    prefix = new_prefix()
    with pytest.raises(RuntimeError, match="inside the lab"), Lab(prefix) as lab:
        lab.up(["h1", "h2"])
        proc = lab.popen("h1", ["sleep", "300"])
        raise RuntimeError("inside the lab")
    assert proc.wait(timeout=5) == -9
    assert_nothing_left(prefix, {proc.pid})


def test_failed_boots_leave_nothing(monkeypatch, lab_factory):
    # A host named "bad*" fails at the end of its boot, when its namespaces, cable and mounts
    # exist, as a real failure would.
    monkeypatch.setattr(cloudland_lab.lab, "BOOT", cloudland_lab.lab.BOOT
                        + 'case "$host" in bad*) echo "injected failure" >&2; exit 3;; esac\n')
    prefix = new_prefix()
    with pytest.raises(LabError, match="boot of host 'bad2'.*injected failure"):
        Lab(prefix).up(["ctl", "h1", "bad2", "h3"])
    assert_nothing_left(prefix)
    # A failed add_host leaves no trace of that host, and the others untouched.
    lab = lab_factory(["h1", "h2"])
    with pytest.raises(LabError, match="boot of host 'bad3'"):
        lab.add_host("bad3")
    assert lab.hosts == ["h1", "h2"]
    assert not [n for n in leftovers(lab.prefix) if "bad3" in n]
    resolved = lab.run("h1", ["getent", "hosts", "h2"], capture_output=True, text=True).stdout
    assert resolved.split() == ["10.77.0.2", "h2"]
    assert lab.add_host("h3") == "10.77.0.3"


def test_up_refuses_a_lab_that_exists(lab_factory):
    lab = lab_factory(["h1"])
    with pytest.raises(LabError, match=f"lab '{lab.prefix}' exists already"):
        Lab(lab.prefix).up(["h2"])
    assert lab.run("h1", ["true"]).returncode == 0  # and did not touch it
    with pytest.raises(LabError, match="too long"):
        lab.add_host("a-very-long-name")
    with pytest.raises(LabError, match="bad host name"):
        lab.add_host("sw")
    assert lab.hosts == ["h1"]


INNER_TEST = '''
import json, os

def test_fails_with_a_lab_up(lab_factory):
    lab = lab_factory(["h1", "h2"])
    proc = lab.popen("h1", ["sleep", "300"])
    lab.run("h2", "sleep 300 >/dev/null 2>&1 &", check=True)
    with open(os.environ["LAB_REPORT"], "w") as report:
        json.dump({"prefix": lab.prefix, "pids": sorted(lab.pids("h1") | lab.pids("h2"))}, report)
    raise RuntimeError("the test fails")
'''


def test_a_failing_test_leaves_nothing(tmp_path):
    (tmp_path / "test_inner.py").write_text(INNER_TEST)
    report = tmp_path / "report.json"
    env = {**os.environ, "LAB_REPORT": str(report), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "tests.labfixtures",
                           "-q", str(tmp_path / "test_inner.py")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "the test fails" in done.stdout, done.stdout + done.stderr
    seen = json.loads(report.read_text())
    assert len(seen["pids"]) == 2
    assert_nothing_left(seen["prefix"], set(seen["pids"]))


CRASHED_RUN = '''
import json, os, subprocess, sys
from cloudland_lab import Lab
lab = Lab(sys.argv[1]).up(["h1", "h2"])
lab.cut("h2")
proc = lab.popen("h1", ["sleep", "300"], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
import time
deadline = time.monotonic() + 10  # the process enters h1's namespaces a moment after popen returns
while not lab.pids("h1") and time.monotonic() < deadline:
    time.sleep(0.05)
print(json.dumps(sorted(lab.pids("h1"))), flush=True)
os._exit(0)  # no down(): everything stays behind
'''


def test_sweep_removes_what_a_crashed_run_left():
    prefix = new_prefix()
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(CRASHED_RUN), prefix],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    pids = set(json.loads(done.stdout))
    assert pids and all(alive(pid) for pid in pids)
    found = sweep(prefix)
    assert {f"netns {prefix}-sw", f"netns {prefix}-h1", f"netns {prefix}-h2"} <= set(found)
    assert_nothing_left(prefix, pids)
    assert sweep(prefix) == []
