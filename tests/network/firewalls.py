"""Helpers of the security-group tests: groups and rules as the control plane sends them, a tiny
TCP echo server and client in a guest's namespace, and our nftables read with ``nft`` itself."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import Any

from cloudland_lab import Lab
from cloudland_proto.v1 import network_pb2 as npb
from tests.network.dataplane import in_guest

# An echo server: every connection gets back what it sends, line by line, until it closes.
SERVER = r"""
import socket, sys, threading
def serve(conn):
    with conn:
        for line in conn.makefile("rb"):
            conn.sendall(line)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(64)
print("listening", flush=True)
while True:
    conn, _ = s.accept()
    threading.Thread(target=serve, args=(conn,), daemon=True).start()
"""

# A client: connect (exit 3 if it cannot within the timeout), then for each line of stdin send it and
# print the answer ("-" when none came within the timeout).
CLIENT = r"""
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
except OSError:
    sys.exit(3)
print("connected", flush=True)
reader = s.makefile("rb")
for line in sys.stdin:
    try:
        s.sendall(line.encode()); answer = reader.readline().decode().strip() or "-"
    except OSError:
        answer = "-"
    print(answer, flush=True)
"""

# Opens new TCP connections, one after another (``gap`` s apart, each given ``wait`` s), until
# SIGINT, which lets the connection under way finish; then prints how many succeeded and were tried.
PROBER = r"""
import signal, socket, sys, time
host, port, gap, wait = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
ok = tried = 0
stop = []
signal.signal(signal.SIGINT, lambda *_: stop.append(1))
print("started", flush=True)
while not stop:
    tried += 1
    try:
        with socket.create_connection((host, port), timeout=wait) as s:
            s.sendall(b"x\n"); ok += s.recv(8) == b"x\n"
    except OSError:
        pass
    time.sleep(gap)
print(ok, tried, flush=True)
"""


def rule(rule_id: int, *, egress: bool = False, protocol: str = "any", ports: tuple[int, int] = (0, 0),
         cidr: str = "", group: int = 0) -> npb.NetSecurityRule:
    return npb.NetSecurityRule(id=rule_id, egress=egress, protocol=protocol, port_min=ports[0], port_max=ports[1],
                               remote_cidr=cidr, remote_group=group)


def default_rules(group_id: int, first_id: int) -> list[npb.NetSecurityRule]:
    """A tenant's default group: egress open, ingress only from the group's own members."""
    return [rule(first_id, egress=True), rule(first_id + 1, group=group_id)]


def listen(lab: Lab, host: str, guest: str, port: int) -> subprocess.Popen[str]:
    proc = lab.popen(host, in_guest(guest, sys.executable, "-c", SERVER, str(port)), stdout=subprocess.PIPE,
                     text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"
    return proc


def connects(lab: Lab, host: str, guest: str, ip: str, port: int, timeout: float = 2.0) -> bool:
    """Whether ``guest`` opens a new TCP connection to ``ip:port`` and gets its line echoed."""
    done = lab.run(host, in_guest(guest, sys.executable, "-c", CLIENT, ip, str(port), str(timeout)),
                   input="hello\n", capture_output=True, text=True, timeout=30)
    return done.returncode == 0 and done.stdout.split() == ["connected", "hello"]


def client(lab: Lab, host: str, guest: str, ip: str, port: int) -> subprocess.Popen[str]:
    """A connection held open: write a line to its stdin, read the echo (or "-") from its stdout."""
    proc = lab.popen(host, in_guest(guest, sys.executable, "-c", CLIENT, ip, str(port), "2"), stdin=subprocess.PIPE,
                     stdout=subprocess.PIPE, text=True, bufsize=1)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "connected"
    return proc


def say(proc: subprocess.Popen[str], line: str) -> str:
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
    return proc.stdout.readline().strip()


def prober(lab: Lab, host: str, guest: str, ip: str, port: int, gap: float, wait: float = 2.0) -> subprocess.Popen[str]:
    """``PROBER`` running in ``guest``; ``probed`` stops it."""
    proc = lab.popen(host, in_guest(guest, sys.executable, "-c", PROBER, ip, str(port), str(gap), str(wait)),
                     stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "started"
    return proc


def probed(proc: subprocess.Popen[str]) -> tuple[int, int]:
    """(succeeded, tried) of a prober, stopped now."""
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=30)
    ok, tried = out.split()
    return int(ok), int(tried)


def ruleset(lab: Lab, host: str, prefix: str) -> dict[str, Any]:
    """Our two tables on ``host`` as nft lists them: each chain's rules as (handle, comment), and
    each set's elements."""
    found: dict[str, Any] = {"rules": {}, "sets": {}}
    for family in ("bridge", "inet"):
        done = lab.run(host, ["nft", "-j", "list", "table", family, f"{prefix}fw"], capture_output=True, text=True,
                       timeout=30)
        if done.returncode != 0:
            continue
        for item in json.loads(done.stdout)["nftables"]:
            kind, body = next(iter(item.items()))
            if kind == "rule":
                found["rules"].setdefault(f"{family}:{body['chain']}", []).append((body["handle"], body.get("comment")))
            elif kind in ("set", "map"):
                found["sets"][f"{family}:{body['name']}"] = json.dumps(body.get("elem", []), sort_keys=True)
    return found


def conntrack_zones(lab: Lab, host: str, ip: str) -> set[int]:
    """The conntrack zones of the flows from or to ``ip`` on ``host``."""
    done = lab.run(host, ["conntrack", "-L", "-s", ip], capture_output=True, text=True, timeout=30)
    return {int(word.split("=")[1]) for word in done.stdout.split() if word.startswith("zone=")}
