"""The ``vm.console`` agent operation: a VM's serial console, read at an offset and typed into.

The API polls it through the tree and streams the bytes over a WebSocket
(``/api/v1/instances/{id}/console``); see agents/compute/console.py for why the console is
read from its log file rather than from a held-open stream.
"""

from __future__ import annotations

from cloudland.errors import InvalidRequest
from cloudland_agents.compute.console import Console
from cloudland_agents.hypervisor import PerHypervisor
from cloudland_agents.ops import Context, in_range, operation
from cloudland_proto.v1 import compute_pb2 as cpb

DEFAULT_READ = 64 * 1024
MAX_INPUT = 4096  # bytes per call: typing, not uploading

# The Console of each hypervisor (its per-VM input streams), made on first use.
console_for: PerHypervisor[Console] = PerHypervisor(lambda hv: Console(hv.conn, hv.id))


@operation("vm.console")
def vm_console(ctx: Context, request: cpb.VmConsoleRequest) -> cpb.VmConsoleResult:
    """Read VM ``name``'s console log from ``offset`` (at most ``max_bytes``) after typing
    ``input`` (optional). Reading is idempotent; typing is not, so a caller sends each input once."""
    if not request.name:
        raise InvalidRequest("name must be a VM name, got ''")
    max_bytes = int(in_range(request.max_bytes or DEFAULT_READ, "max_bytes", 1, 1 << 20))
    console = console_for(ctx.hypervisor)
    if request.input:
        if len(request.input) > MAX_INPUT:
            raise InvalidRequest(f"input must be at most {MAX_INPUT} bytes, got {len(request.input)}")
        console.write(request.name, request.input)
    chunk, next_offset, size = console.read(request.name, request.offset, max_bytes)
    return cpb.VmConsoleResult(data=chunk, offset=next_offset, size=size)
