"""``/api/v1/instances/{id}/console``: a VM's serial console over a WebSocket.

The API polls the agent's ``vm.console`` through the tree (what the guest printed, from an
offset, and what was typed since the last poll) and relays the bytes both ways: binary
messages out, text or binary messages in. Authentication is the usual bearer token, in the
``Authorization`` header or, for browsers that cannot set one, a ``token`` query parameter.

A refusal closes the socket with a code and a one-line reason:

    4401  no or bad token          4404  no such instance in the caller's organisation
    4403  the role may not type    4409  the instance has no running domain to attach to
    1011  the tree or the hypervisor failed (the reason names the hypervisor)
"""

from __future__ import annotations

import asyncio
import base64
import logging
from typing import Any

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from starlette.concurrency import run_in_threadpool

from cloudland.client import RootClient, struct_to_dict
from cloudland.errors import CloudLandError, NotFound, Unauthorized
from cloudland_api import compute, services
from cloudland_api.models import Role
from cloudland_api.schemas import MAX_ID
from cloudland_api.security import decode_token
from cloudland_proto.v1 import envelope_pb2 as pb

log = logging.getLogger(__name__)
router = APIRouter(prefix="/instances", tags=["instances"])

IDLE_POLL_S = 0.2       # how often an idle console is asked for new output
READ_BYTES = 64 * 1024  # per poll
INPUT_BYTES = 4096      # per poll (agents/console_ops.py MAX_INPUT)
CALL_TIMEOUT_S = 10.0


def _close_reason(text: str) -> str:
    # A close frame's reason has at most 123 bytes of UTF-8.
    return text.encode()[:123].decode(errors="ignore")


def _authenticate(websocket: WebSocket, instance_id: int) -> tuple[services.Caller, int, str]:
    """The caller, and the instance's hypervisor and domain name; raises a CloudLandError."""
    header = websocket.headers.get("authorization", "")
    token = header[7:] if header.lower().startswith("bearer ") else websocket.query_params.get("token")
    if not token:
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>' or ?token=")
    claims = decode_token(websocket.app.state.signing_key, token)
    with websocket.app.state.sessions() as session:
        caller = services.caller_for(session, claims.user_id, claims.org_id)
        instance = compute.get_instance(session, caller, instance_id)
        if instance.hypervisor_id is None or instance.status in ("deleted", "deleting", "building"):
            raise _NotAttachable(f"instance {instance_id} ({instance.name}) is {instance.status}: "
                                 "it has no domain to attach to")
        return caller, instance.hypervisor_id, instance.domain_name


class _NotAttachable(CloudLandError):
    """The instance exists but has no domain a console could attach to."""


def _call(client: RootClient, hypervisor: int, args: dict[str, Any]) -> dict[str, Any]:
    [reply] = client.run("vm.console", hypervisor, args=args, timeout=CALL_TIMEOUT_S)
    if reply.status != pb.OK:
        raise CloudLandError(reply.error or pb.Status.Name(reply.status))
    return struct_to_dict(reply.payload)


@router.websocket("/{instance_id}/console")
async def console(websocket: WebSocket, instance_id: int) -> None:
    """Relay the instance's serial console until either side closes."""
    await websocket.accept()
    if not 1 <= instance_id <= MAX_ID:
        await websocket.close(4404, f"instance {instance_id} not found")
        return
    try:
        caller, hypervisor, domain = await run_in_threadpool(_authenticate, websocket, instance_id)
    except Unauthorized as exc:
        await websocket.close(4401, _close_reason(str(exc)))
        return
    except NotFound as exc:
        await websocket.close(4404, _close_reason(str(exc)))
        return
    except _NotAttachable as exc:
        await websocket.close(4409, _close_reason(str(exc)))
        return
    client: RootClient | None = websocket.app.state.root_client
    if client is None:
        await websocket.close(1011, "no tree is configured (CLOUDLAND_API_ROOT_ENDPOINT is empty)")
        return
    may_type = caller.role in (Role.admin, Role.member)
    typed = bytearray()
    wake = asyncio.Event()
    closed = asyncio.Event()

    async def receive() -> None:
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    break
                data = message.get("bytes") or (message.get("text") or "").encode()
                if data and may_type:
                    typed.extend(data)
                    wake.set()
        except (WebSocketDisconnect, RuntimeError):
            pass
        finally:
            closed.set()
            wake.set()

    receiver = asyncio.create_task(receive())
    offset = 0
    log.info("event=console_opened instance=%d hypervisor=%d user_id=%d", instance_id, hypervisor, caller.user_id)
    try:
        while not closed.is_set():
            args: dict[str, Any] = {"name": domain, "offset": offset, "max_bytes": READ_BYTES}
            if typed:
                chunk = bytes(typed[:INPUT_BYTES])
                del typed[:INPUT_BYTES]
                args["input"] = base64.b64encode(chunk).decode()
            try:
                payload = await run_in_threadpool(_call, client, hypervisor, args)
            except CloudLandError as exc:
                await websocket.close(1011, _close_reason(str(exc)))
                return
            data = base64.b64decode(payload.get("data", ""))
            offset = int(payload.get("offset", offset))
            if data:
                await websocket.send_bytes(data)
                continue  # more may be waiting: ask again at once
            wake.clear()
            try:
                await asyncio.wait_for(wake.wait(), IDLE_POLL_S)
            except TimeoutError:
                pass
    except (WebSocketDisconnect, RuntimeError):
        pass  # the client went away mid-send
    finally:
        receiver.cancel()
        log.info("event=console_closed instance=%d hypervisor=%d", instance_id, hypervisor)
