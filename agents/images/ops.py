"""The ``image.*`` agent operations: the image cache (cache.py) behind the registry.
Contracts: proto/v1/image.proto."""

from __future__ import annotations

import re

from cloudland.errors import InvalidRequest
from cloudland_agents.compute import guests
from cloudland_agents.ops import Context, operation
from cloudland_proto.v1 import image_pb2 as ipb

_SHA256 = re.compile(r"[0-9a-f]{64}")


@operation("image.evict")
def image_evict(ctx: Context, request: ipb.ImageEvictRequest) -> ipb.ImageEvictResult:
    """Remove the cached base of ``sha256`` (an image the API deleted), unless a guest's disk
    is an overlay on it (``in_use``). Idempotent: a base that is not cached is success."""
    if not _SHA256.fullmatch(request.sha256):
        raise InvalidRequest(f"sha256 must be 64 lower-case hex digits, got {request.sha256!r}")
    return ipb.ImageEvictResult(in_use=not guests.evict(ctx.hypervisor, request.sha256))
