"""The ``vm.console`` agent operation: a VM's serial console, read at an offset and typed into.

The API polls it through the tree and streams the bytes over a WebSocket
(``/api/v1/instances/{id}/console``); see agents/compute/console.py for why the console is
read from its log file rather than from a held-open stream.
"""

from __future__ import annotations

import base64
import binascii

from cloudland.errors import InvalidRequest
from cloudland_agents.compute.console import Console
from cloudland_agents.hypervisor import PerHypervisor
from cloudland_agents.ops import Context, Payload, number, operation

DEFAULT_READ = 64 * 1024
MAX_INPUT = 4096  # bytes per call: typing, not uploading

# The Console of each hypervisor (its per-VM input streams), made on first use.
console_for: PerHypervisor[Console] = PerHypervisor(lambda hv: Console(hv.conn, hv.id))


@operation("vm.console")
def vm_console(ctx: Context, args: Payload) -> Payload:
    """Read VM ``name``'s console log from ``offset`` (at most ``max_bytes``) after typing
    ``input`` (base64, optional). Payload: ``data`` (base64), ``offset`` (the next one),
    ``size``. Reading is idempotent; typing is not, so a caller sends each input once."""
    unknown = sorted(set(args) - {"name", "offset", "max_bytes", "input"})
    if unknown:
        raise InvalidRequest(f"unknown argument {unknown[0]!r}; expected some of input, max_bytes, name, offset")
    name = args.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"argument 'name' must be a VM name, got {name!r}")
    offset = int(number(args, "offset", 0, 0, 2**53))
    max_bytes = int(number(args, "max_bytes", DEFAULT_READ, 1, 1 << 20))
    console = console_for(ctx.hypervisor)
    typed = args.get("input")
    if typed is not None:
        try:
            data = base64.b64decode(typed, validate=True) if isinstance(typed, str) else None
        except (binascii.Error, ValueError):
            data = None
        if data is None or len(data) > MAX_INPUT:
            raise InvalidRequest(f"argument 'input' must be base64 of at most {MAX_INPUT} bytes")
        console.write(name, data)
    chunk, next_offset, size = console.read(name, offset, max_bytes)
    return {"data": base64.b64encode(chunk).decode(), "offset": next_offset, "size": size}
