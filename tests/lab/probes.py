"""Small TCP programs run inside lab hosts (the lab may have no ping): a server that answers
every connection with its hostname, a client that asks once, and one that keeps asking."""

from __future__ import annotations

import subprocess
import sys
import time

from cloudland_lab import Lab

# The venv's interpreter: it lives outside /tmp, so every lab host sees it.
PYTHON = sys.executable
PORT = 7000

SERVER = """
import socket, sys
server = socket.create_server(("0.0.0.0", int(sys.argv[1])))
print("ready", flush=True)
while True:
    conn, _ = server.accept()
    with conn:
        conn.sendall(socket.gethostname().encode())
"""

ASK = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3])) as conn:
        print(conn.recv(100).decode())
except OSError as error:
    print(f"unreachable: {error}")
"""

# Asks `target` over and over until its stdin closes, then prints "<answers> <failures>".
TALK = """
import select, socket, sys, time
answers = failures = 0
while not select.select([sys.stdin], [], [], 0)[0]:
    try:
        with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1) as conn:
            answers += conn.recv(100).decode() == sys.argv[1]
    except OSError:
        failures += 1
    time.sleep(0.01)
print(answers, failures)
"""


def serve(lab: Lab, host: str, port: int = PORT) -> subprocess.Popen[str]:
    """Start the hostname server inside ``host``; returns once it listens."""
    proc = lab.popen(host, [PYTHON, "-c", SERVER, str(port)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "ready\n", f"server in {host} did not start"
    return proc


def ask(lab: Lab, host: str, target: str, port: int = PORT, timeout: float = 2.0) -> str:
    """From inside ``host``, connect to ``target`` (name or address): its hostname, or 'unreachable: ...'."""
    done = lab.run(host, [PYTHON, "-c", ASK, target, str(port), str(timeout)],
                   capture_output=True, text=True, timeout=timeout + 30)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def wait_answer(lab: Lab, host: str, target: str, expected: str, within: float = 10.0) -> float:
    """Ask until ``expected`` answers; the seconds it took (fails the test after ``within``)."""
    start = time.monotonic()
    while (answer := ask(lab, host, target, timeout=0.5)) != expected:
        assert time.monotonic() - start < within, f"{host} -> {target}: {answer} after {within} s"
    return time.monotonic() - start
