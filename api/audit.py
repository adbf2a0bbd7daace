"""The audit trail (issue 14): every request that may change something (anything but GET, HEAD
and OPTIONS under ``/api/v1``), sign-ins and failed sign-ins among them, becomes one row of
``audit_events``: who (the token's user, or the username a sign-in gave), in which organisation,
the method and path, the answer's status, the client's address, when.

``AuditTrail`` is an ASGI middleware inside Admission (a request turned away unserved with 429
is not recorded: it did nothing). It learns who called from ``request.state``: ``deps.get_caller``
puts the authenticated Caller there, the sign-in routes the username and organisation they were
given. It writes the row after the answer, in a transaction of its own (in SQLite's write turn,
like a route), so a failed request is recorded as well as a successful one. Nothing is kept of a
request's body, so no password or token reaches the trail. The API has no route that changes or
deletes a row. A process that dies between answering and writing loses that one row (the
answer's own transaction is already committed): recording inside the request's transaction is
future work.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio.to_thread
from sqlalchemy import select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloudland_api.models import AuditEvent, Organisation

log = logging.getLogger(__name__)

READS = ("GET", "HEAD", "OPTIONS")
CALLER = "audit_caller"         # request.state: the authenticated Caller (deps.get_caller)
SIGN_IN = "audit_sign_in"       # request.state: (username, organisation name or None) a sign-in gave


class AuditTrail:
    """Records every changing request under ``/api/v1`` (the module's docstring)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in READS or not scope["path"].startswith("/api/v1/"):
            await self.app(scope, receive, send)
            return
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            await self._record(scope, status)

    async def _record(self, scope: Scope, status: int) -> None:
        app = scope["app"]
        state: dict[str, Any] = scope.get("state", {})
        client = scope.get("client")
        event = {"method": scope["method"], "path": _printable(scope.get("raw_path") or scope["path"])[:512],
                 "status": status,
                 "address": (client[0] if client else "unknown")[:64]}
        lock = app.state.write_lock
        try:
            if lock is None:
                await anyio.to_thread.run_sync(_write, app.state.write_sessions, event, state)
            else:
                async with lock:
                    await anyio.to_thread.run_sync(_write, app.state.write_sessions, event, state)
        except Exception as exc:  # the answer is sent: a lost row is logged, never the request's failure
            log.error("event=audit_write_failed method=%s path=%s status=%d error=%s", event["method"],
                      event["path"], status, type(exc).__name__)


def _printable(text: str | bytes) -> str:
    """The path as the client sent it, percent-encoded: a ``%00`` stays three characters, since
    PostgreSQL refuses NUL in text (the row of every such request was lost)."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "backslashreplace")
    return text.replace("\x00", "\\x00")


def _write(sessions: Any, event: dict[str, Any], state: dict[str, Any]) -> None:
    caller = state.get(CALLER)
    with sessions() as session:
        if caller is not None:
            event.update(org_id=caller.org_id, user_id=caller.user_id, username=caller.username)
        elif SIGN_IN in state:
            username, organisation = state[SIGN_IN]
            event["username"] = username[:64]
            if organisation:
                event["org_id"] = session.scalar(select(Organisation.id).where(Organisation.name == organisation))
        session.add(AuditEvent(**event))
        session.commit()
