"""``cloudland vm console``: a VM's serial console in the terminal, over the API's WebSocket.

What the guest printed since it started is shown first, then everything it prints. Keys
go to the guest (the terminal is in raw mode); Ctrl-] leaves, as in ``virsh console``.
Exit codes are common.py's: 0 when you leave or the console ends normally, 2 for an
unknown VM or one without a running domain, 3 when the API does not answer, 4 without a
valid login, 1 when the tree or the hypervisor failed.
"""

from __future__ import annotations

import os
import sys
import termios
import threading
import tty
from contextlib import contextmanager
from collections.abc import Iterator

from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from cloudland_cli.common import EXIT_AUTH, EXIT_FAILED, EXIT_UNREACHABLE, EXIT_USAGE, err, fail

ESCAPE = b"\x1d"  # Ctrl-]
_CLOSE_EXIT = {4401: EXIT_AUTH, 4403: EXIT_AUTH, 4404: EXIT_USAGE, 4409: EXIT_USAGE}


def console_url(endpoint: str, instance_id: int) -> str:
    """The WebSocket URL of instance ``instance_id``'s console at ``endpoint`` (http[s]://...)."""
    scheme, rest = endpoint.split("://", 1)
    return f"{'wss' if scheme == 'https' else 'ws'}://{rest}/api/v1/instances/{instance_id}/console"


@contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """Keys reach the guest one by one, unechoed; the terminal is restored however we leave."""
    saved = termios.tcgetattr(fd)
    try:
        tty.setraw(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _type_keys(ws: ClientConnection, fd: int) -> None:
    """Send stdin to the guest until Ctrl-] or end of input, then close the socket."""
    try:
        while chunk := os.read(fd, 1024):
            if ESCAPE in chunk:
                before = chunk.split(ESCAPE, 1)[0]
                if before:
                    ws.send(before)
                break
            ws.send(chunk)
    except (OSError, ConnectionClosed):
        pass
    finally:
        ws.close()


def run_console(endpoint: str, token: str, instance_id: int, label: str, read_only: bool) -> None:
    """Relay the console until either side closes; exits through ``fail`` on a refusal."""
    stdin = sys.stdin.fileno()
    typing = not read_only and os.isatty(stdin)
    err.print(f"console of VM {label}" + ("; Ctrl-] leaves" if typing else "; Ctrl-C leaves"))
    try:
        # The token goes in a header, never in the URL, which servers log (issue 15).
        ws = ws_connect(console_url(endpoint, instance_id), additional_headers={"Authorization": f"Bearer {token}"},
                        open_timeout=10, max_size=2**22)
    except InvalidStatus as exc:
        fail(EXIT_FAILED, f"the API refused the console: HTTP {exc.response.status_code}")
    except (OSError, InvalidHandshake, TimeoutError) as exc:
        fail(EXIT_UNREACHABLE, f"cannot reach the API's console at {endpoint}: {exc}")
    out = sys.stdout.buffer
    with ws, (raw_terminal(stdin) if typing else _nothing()):
        if typing:
            threading.Thread(target=_type_keys, args=(ws, stdin), daemon=True, name="console-keys").start()
        try:
            for message in ws:
                out.write(message if isinstance(message, bytes) else message.encode())
                out.flush()
        except ConnectionClosed:
            pass
        except KeyboardInterrupt:
            ws.close()
    received = ws.close_code, ws.close_reason
    if received[0] in (None, 1000, 1001, 1005):
        return
    code, reason = received
    fail(_CLOSE_EXIT.get(code, EXIT_FAILED), reason or f"the console closed with code {code}")


@contextmanager
def _nothing() -> Iterator[None]:
    yield
