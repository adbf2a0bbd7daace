"""``/api/v1/instances/{id}/console``: a VM's serial console over a WebSocket; ``.../vnc``: where
its graphical console listens.

The API polls the agent's ``vm.console`` through the tree (what the guest printed, from an
offset, and what was typed since the last poll) and relays the bytes both ways: binary
messages out, text or binary messages in. Authentication is the usual bearer token in the
``Authorization`` header or, for browsers that cannot set one, a one-time ``ticket`` query
parameter from ``POST .../console/ticket`` (good for one connection within 30 s). A token is
never taken from the URL: URLs are logged (issue 15).

A refusal closes the socket with a code and a one-line reason:

    4401  no or bad token          4404  no such instance in the caller's organisation
    4403  the role may not type    4409  the instance has no running domain to attach to
    4400  a malformed X-CloudLand-Project header
    1011  the tree or the hypervisor failed (the reason names the hypervisor)

``GET .../vnc`` asks the VM's hypervisor for its domain's VNC display (``vm.get``) and
answers its address; errors are the usual HTTP ones (api/services/consoles.py says which).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

from fastapi import APIRouter, Path, Request, WebSocket, WebSocketDisconnect, status
from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from cloudland.addresses import host_port
from cloudland.client import RootClient
from cloudland.errors import CloudLandError, Conflict, InvalidRequest, NotFound, Unauthorized
from cloudland_api.models import Instance
from cloudland_api.services import consoles, identity, projects
from cloudland_api.deps import CurrentUser, SessionDep
from cloudland_api.policy import allow, allows
from cloudland_api.schemas import MAX_ID, ConsoleTicket, ErrorResponse, VncConsole
from cloudland_proto.v1 import compute_pb2 as cpb

log = logging.getLogger(__name__)
router = APIRouter(prefix="/instances", tags=["instances"])

IDLE_POLL_S = 0.2       # how often an idle console is asked for new output
READ_BYTES = 64 * 1024  # per poll
INPUT_BYTES = 4096      # per poll (agents/compute/console_ops.py MAX_INPUT)
InstanceId = Annotated[int, Path(ge=1, le=MAX_ID, description="Instance id")]


def _close_reason(text: str) -> str:
    # A close frame's reason has at most 123 bytes of UTF-8.
    return text.encode()[:123].decode(errors="ignore")


def _ticket(websocket: WebSocket, instance_id: int) -> tuple[int, int]:
    """(user id, organisation id) from a one-time ticket; Unauthorized naming what to send instead."""
    ticket = websocket.query_params.get("ticket")
    if ticket:
        tickets: consoles.ConsoleTickets = websocket.app.state.console_tickets
        return tickets.redeem(ticket, instance_id)
    if "token" in websocket.query_params:
        raise Unauthorized("a token in the URL is refused (URLs are logged): send it in the Authorization header")
    raise Unauthorized("missing credentials: send 'Authorization: Bearer <token>' or a ?ticket= from .../console/ticket")


def _authenticate(websocket: WebSocket, instance_id: int) -> tuple[identity.Caller, int, str]:
    """The caller, and the instance's hypervisor and domain name; raises a CloudLandError."""
    header = websocket.headers.get("authorization", "")
    with websocket.app.state.sessions() as session:
        if header.lower().startswith("bearer "):  # checked as every route checks it: revoked, expired
            caller = identity.authenticate(session, websocket.app.state.signing_key, header[7:],
                                           websocket.app.state.settings.token_max_lifetime_s)
        else:
            caller = identity.caller_for(session, *_ticket(websocket, instance_id))
        # The project: the header's (or the default one) for a token; for a ticket, the instance's
        # own, the role there read again now. No role there: the instance is not the caller's.
        ref = websocket.headers.get(projects.HEADER)
        if ref is None and not header.lower().startswith("bearer "):
            found = session.scalar(select(Instance.project_id).where(Instance.id == instance_id,
                                                                     Instance.org_id == caller.org_id))
            if found is None:
                raise NotFound(f"instance {instance_id} not found")
            ref = str(found)
        caller = projects.act_in(session, caller, projects.check_ref(ref))
        if not allows(caller, "instance", "read"):
            raise NotFound(f"instance {instance_id} not found in project {caller.project!r}")
        where = consoles.target(session, caller, instance_id)
        return caller, where.hypervisor, where.domain


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
    except Conflict as exc:
        await websocket.close(4409, _close_reason(str(exc)))
        return
    except InvalidRequest as exc:  # a malformed X-CloudLand-Project
        await websocket.close(4400, _close_reason(str(exc)))
        return
    client: RootClient | None = websocket.app.state.root_client
    may_type = allows(caller, "instance", "update")
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
            ask = cpb.VmConsoleRequest(name=domain, offset=offset, max_bytes=READ_BYTES)
            if typed:
                ask.input = bytes(typed[:INPUT_BYTES])
                del typed[:INPUT_BYTES]
            try:
                result = await run_in_threadpool(consoles.ask_agent, client, "vm.console", hypervisor, ask)
            except CloudLandError as exc:
                await websocket.close(1011, _close_reason(str(exc)))
                return
            assert isinstance(result, cpb.VmConsoleResult)
            data, offset = result.data, result.offset
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


@router.post("/{instance_id}/console/ticket", status_code=status.HTTP_201_CREATED,
             # Whoever may watch the console may have a ticket for it: it changes nothing.
             **allow("instance", "read", responses={code: {"model": ErrorResponse} for code in (404, 409, 429)}))
def console_ticket(instance_id: InstanceId, request: Request, caller: CurrentUser) -> ConsoleTicket:
    """A one-time ticket that opens this instance's console WebSocket (``.../console?ticket=``) once
    within 30 s, as the caller (any role): for clients, such as browsers, that cannot send an
    ``Authorization`` header there. A token is never taken from the URL, since URLs are logged."""
    # A read session of its own: a ticket writes nothing, so it takes no write turn.
    with request.app.state.sessions() as session:
        consoles.target(session, caller, instance_id)  # 404 or 409 now, not when the socket opens
    tickets: consoles.ConsoleTickets = request.app.state.console_tickets
    ticket, expires_at = tickets.issue(caller, instance_id)
    return ConsoleTicket(ticket=ticket, expires_at=expires_at)


def _vnc_target(session: Session, caller: identity.Caller, instance_id: int) -> consoles.Target:
    where = consoles.target(session, caller, instance_id)
    session.rollback()  # the tree call may take seconds: no transaction stays open meanwhile
    return where


@router.get("/{instance_id}/vnc",
            **allow("instance", "read", responses={c: {"model": ErrorResponse} for c in (404, 409, 502, 503)}))
async def vnc(instance_id: InstanceId, request: Request, session: SessionDep, caller: CurrentUser) -> VncConsole:
    """Where a VNC client reaches the running instance's graphical console, asked of its hypervisor
    now (any role). 409 when it has none: not running, or on a simulated hypervisor."""
    where = await run_in_threadpool(_vnc_target, session, caller, instance_id)
    result = await run_in_threadpool(consoles.ask_agent, request.app.state.root_client, "vm.get", where.hypervisor,
                                     cpb.VmGetRequest(name=where.domain))
    assert isinstance(result, cpb.VmGetResult)
    host, port = consoles.vnc_endpoint(where, result.vm)
    log.info("event=vnc_address instance=%d hypervisor=%d user_id=%d", where.instance, where.hypervisor,
             caller.user_id)
    return VncConsole(instance=where.instance, hypervisor=where.hypervisor, host=host, port=port,
                      address=host_port(host, port))
