"""The ``image.*`` agent operations: the image cache (cache.py) behind the registry."""

from __future__ import annotations

import re

from cloudland.errors import InvalidRequest
from cloudland_agents.compute import guests
from cloudland_agents.compute.ops import _only, _text
from cloudland_agents.ops import Context, Payload, operation

_SHA256 = re.compile(r"[0-9a-f]{64}")


@operation("image.evict")
def image_evict(ctx: Context, args: Payload) -> Payload:
    """Remove the cached base of ``sha256`` (an image the API deleted), unless a guest's disk
    is an overlay on it. Payload: ``in_use`` true when it stays. Idempotent: a base that is not
    cached is success."""
    _only(args, {"sha256"})
    sha256 = _text(args, "sha256")
    if not _SHA256.fullmatch(sha256):
        raise InvalidRequest(f"argument 'sha256' must be 64 lower-case hex digits, got {sha256!r}")
    return {} if guests.evict(ctx.hypervisor, sha256) else {"in_use": True}
