"""The audit trail (issue 14): every request that may change something (anything but GET, HEAD
and OPTIONS under ``/api/v1``), sign-ins and failed sign-ins among them, becomes one row of
``audit_events``: who (the token's user, or the username a sign-in gave), in which organisation
and project, the method and path, the resource (its policy entry's type, and the id the path
gives), the answer's status, the client's address, when.

``AuditTrail`` is an ASGI middleware inside Admission (a request turned away unserved with 429
is not recorded: it did nothing). It learns who called from ``request.state``: ``deps.get_caller``
puts the authenticated Caller there, the sign-in routes the username and organisation they were
given. Nothing is kept of a request's body, so no password or token reaches the trail. The API
has no route that changes or deletes a row.

A request that changes something writes its row **in the same transaction as the change**:
``watch`` hooks the request's write session, whose first commit adds the row, so a change is
never committed without its row. The row carries the status the route answers when it succeeds
(its declared ``status_code``: 201, 202, ...), so a request answered so writes its row once
(issue 15: the second write, a transaction of its own after every answer, cost a thread hop and
a turn of SQLite's write lock per change). After the answer the middleware writes only when
the answer differs: it sets the row's status then (in a transaction of its own, in SQLite's
write turn, like a route), and a request that committed nothing (failed before any change) gets
its row then; one refused for its token or its role (401, 403) gets it before its answer
(``refused``). A process that dies between the commit and the answer keeps the row
with the route's success status (its change did commit); one that dies before committing changed
nothing. ``UNANSWERED`` (0) is left for a commit outside a route.

A create's path holds no id: its row takes the id of the row of its resource's table that the
request inserted (``created``: the session's flushes are watched, and the commit flushes before the
row is added, so the id is known in the same transaction). A create of several (a batch of
instances) writes one row per created resource, each with its id, so ``GET /audit?resource=
instance:<id>`` shows each one's whole life; they differ only in ``resource_id``.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import anyio.to_thread
from sqlalchemy import event, inspect, select, update
from sqlalchemy.orm import Session
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloudland_api.models import AuditEvent, Organisation

log = logging.getLogger(__name__)

READS = ("GET", "HEAD", "OPTIONS")
CALLER = "audit_caller"         # request.state: the authenticated Caller (deps.get_caller)
SIGN_IN = "audit_sign_in"       # request.state: (username, organisation name or None) a sign-in gave
ROW = "audit_row"               # request.state: the row a commit of the request added (``watch``)
DONE = "audit_done"             # request.state: the row is written with its answer's status (``refused``)
UNANSWERED = 0                  # the status of a row whose answer is not recorded (yet)


def _event(scope: Scope, status: int) -> dict[str, Any]:
    client = scope.get("client")
    return {"method": scope["method"], "path": _printable(scope.get("raw_path") or scope["path"])[:512],
            "status": status, "address": (client[0] if client else "unknown")[:64], **_resource(scope)}


def _success_status(scope: Scope) -> int:
    """The status the request's route answers when it succeeds (FastAPI's default 200 for a route
    that declares none); UNANSWERED outside a route."""
    route = scope.get("route")
    if route is None:
        return UNANSWERED
    return int(getattr(route, "status_code", None) or 200)


def _resource(scope: Scope) -> dict[str, Any]:
    """The resource a routed request names: its route's policy entry's type (api/policy.py) and
    the first id its path gives (``/instances/{instance_id}/start``: the instance's)."""
    route = scope.get("route")
    entry = (getattr(route, "openapi_extra", None) or {}).get("x-policy") or {}
    names = re.findall(r"{(\w+)", getattr(route, "path", ""))
    given = (scope.get("path_params") or {}).get(names[0]) if names else None
    return {"resource_type": entry.get("resource"),
            "resource_id": _printable(str(given))[:64] if given is not None else None}


def _who(session: Session, event: dict[str, Any], state: dict[str, Any]) -> bool:
    """Fill in the caller (or the sign-in's username and organisation); False when unknown yet."""
    caller = state.get(CALLER)
    if caller is not None:
        event.update(org_id=caller.org_id, user_id=caller.user_id, username=caller.username,
                     project_id=caller.project_id)
    elif SIGN_IN in state:
        username, organisation = state[SIGN_IN]
        event["username"] = username[:64]
        if organisation:
            event["org_id"] = session.scalar(select(Organisation.id).where(Organisation.name == organisation))
    else:
        return False
    return True


# A resource type's table, where it is not the type's name and an ``s`` (api/policy.py's names).
TABLES = {"floating_ip": "external_ips"}


def _table_of(resource_type: str | None) -> str | None:
    return TABLES.get(resource_type, f"{resource_type}s") if resource_type else None


def created(inserted: list[Any], resource_type: str | None) -> list[str]:
    """The ids (their primary key's first column: a membership's user) of the rows of
    ``resource_type``'s table among ``inserted``, in insertion order."""
    table = _table_of(resource_type)
    ids = []
    for row in inserted:
        mapper = inspect(row).mapper
        if mapper.local_table.name == table:
            ids.append(str(mapper.primary_key_from_instance(row)[0]))
    return ids


def watch(session: Session, request: Request) -> None:
    """Make the first commit of ``session`` (a changing request's) carry the request's audit row
    (a create's: one per resource it made, each with that resource's id)."""
    if request.method in READS or not request.url.path.startswith("/api/v1/"):
        return
    inserted: list[Any] = []  # what the request's flushes inserted, until its first commit

    def add_row(committing: Session) -> None:
        state: dict[str, Any] = request.scope.setdefault("state", {})
        if ROW in state:
            return
        row_event = _event(request.scope, _success_status(request.scope))
        if not _who(committing, row_event, state):
            return
        ids: list[str | None] = [row_event["resource_id"]]
        if ids == [None] and row_event["resource_type"] is not None:
            committing.flush()  # the created rows' ids, in this transaction
            ids = [*created(inserted, row_event["resource_type"])] or ids
        rows = [AuditEvent(**row_event | {"resource_id": made}) for made in ids]
        state[ROW] = rows[0]
        committing.add_all(rows)

    event.listen(session, "after_flush", lambda flushing, _context: inserted.extend(flushing.new))
    event.listen(session, "after_rollback", lambda _session: inserted.clear())
    event.listen(session, "before_commit", add_row)


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
            if not scope.get("state", {}).get(DONE):
                await self._record(scope, status)

    async def _record(self, scope: Scope, status: int) -> None:
        """The row's status, after the answer, unless the change committed it with this very status
        (a crash before this keeps the route's success status: its change did commit)."""
        row = scope.get("state", {}).get(ROW)
        if row is not None and row.id is not None and row.status == status:
            return
        await _record(scope, status)


async def _record(scope: Scope, status: int) -> None:
    app = scope["app"]
    state: dict[str, Any] = scope.setdefault("state", {})
    event = _event(scope, status)
    lock = app.state.write_lock
    try:
        if lock is None:
            await anyio.to_thread.run_sync(_write, app.state.write_sessions, event, state)
        else:
            async with lock:
                await anyio.to_thread.run_sync(_write, app.state.write_sessions, event, state)
        state[DONE] = True
    except Exception as exc:  # a lost row is logged, never the request's failure
        log.error("event=audit_write_failed method=%s path=%s status=%d error=%s", event["method"],
                  event["path"], status, type(exc).__name__)


async def refused(request: Request, status: int) -> None:
    """Write a refused request's row (401, 403: before any write turn is taken) before its answer
    is sent, so a crash between the two loses nothing (``deps.get_caller``, api/policy.py)."""
    if request.method not in READS and request.url.path.startswith("/api/v1/"):
        await _record(request.scope, status)


def _printable(text: str | bytes) -> str:
    """The path as the client sent it, percent-encoded: a ``%00`` stays three characters, since
    PostgreSQL refuses NUL in text (the row of every such request was lost)."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "backslashreplace")
    return text.replace("\x00", "\\x00")


def _write(sessions: Any, event: dict[str, Any], state: dict[str, Any]) -> None:
    """The answer's status on the row the request's commit added; else a new row."""
    with sessions() as session:
        row = state.get(ROW)
        if row is not None and row.id is not None:
            done = session.execute(update(AuditEvent).where(AuditEvent.id == row.id, AuditEvent.status == row.status)
                                   .values(status=event["status"]))
            if done.rowcount == 1:  # type: ignore[attr-defined]
                session.commit()
                return
        _who(session, event, state)
        session.add(AuditEvent(**event))
        session.commit()
