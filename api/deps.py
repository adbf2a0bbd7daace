"""Request dependencies as ``Annotated`` types, so route signatures read like prose."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Header, Query, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.requests import HTTPConnection
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from cloudland.errors import Forbidden, Unauthorized
from cloudland_api import audit, tokencache
from cloudland_api.services import credentials as app_credentials
from cloudland_api.services import federation, identity, projects
from cloudland_api.settings import ApiSettings
from cloudland_api.tokencache import TokenCache

# auto_error=False: a missing header becomes our Unauthorized (401, our error body)
# instead of FastAPI's own 403; the scheme still gives /docs its "Authorize" button.
_bearer = HTTPBearer(auto_error=False, description="Token from POST /api/v1/login")


# Dependencies that do no I/O are ``async def``: FastAPI runs a plain ``def`` dependency in its
# thread pool, and each such hop cost the event loop and a worker thread more than the work
# (issue 15: a request made eight of them).


async def get_settings(request: Request) -> ApiSettings:
    """The settings the app was created with."""
    settings: ApiSettings = request.app.state.settings
    return settings


async def get_signing_key(request: Request) -> bytes:
    """The HS256 key loaded at start-up."""
    key: bytes = request.app.state.signing_key
    return key


async def write_turn(request: Request) -> AsyncIterator[None]:
    """On SQLite, one writing request at a time, queued on the event loop, not in a thread.

    A write session holds SQLite's one write lock from its first statement to its end,
    and FastAPI runs the route and the session's teardown in separate worker-thread
    calls. Were writers to queue for the lock inside worker threads (busy timeout), a
    burst would fill the thread pool with waiters while the lock holder waits for a
    thread to finish in: a deadlock until the timeout. Waiting here costs no thread.
    """
    lock: asyncio.Lock | None = request.app.state.write_lock
    if lock is None or request.method in ("GET", "HEAD"):
        yield
        return
    async with lock:
        yield


async def open_session(request: Request) -> AsyncIterator[Session]:
    """A session without a write turn: for routes that keep each transaction inside one call.

    Made on the event loop (a Session connects only at its first statement, in the route's
    thread). Ended on the loop too where that is a local call (SQLite, or nothing begun);
    a PostgreSQL session still in a transaction ends in a worker thread (a round trip)."""
    reads_only = request.method in ("GET", "HEAD")
    factory = request.app.state.sessions if reads_only else request.app.state.write_sessions
    session: Session = factory()
    audit.watch(session, request)  # the audit row commits with the request's change (api/audit.py)
    try:
        yield session
    except BaseException:
        await _end(request, session, session.rollback)
        raise
    finally:
        await _end(request, session, session.close)


async def _end(request: Request, session: Session, end: Callable[[], None]) -> None:
    if request.app.state.write_lock is not None or not session.in_transaction():
        end()  # SQLite (a local call) or nothing to end
    else:
        await run_in_threadpool(end)


async def get_session(request: Request, _turn: Annotated[None, Depends(write_turn)]) -> AsyncIterator[Session]:
    """One database session per request; a write session (in its turn) for anything but GET and HEAD."""
    async for session in open_session(request):
        yield session


T = TypeVar("T")


class Reads:
    """Runs the read-only work of a GET (``await reads(fn, *args)``: ``fn(session, *args)``) where
    it costs least (issue 15).

    On SQLite a read is a local call of ~0.1 ms, and a worker thread's hop cost more than that
    (FastAPI ran a plain ``def`` route in its thread pool, and validated what it returned in a
    second hop): so it runs on the event loop itself, on a connection of the loop's own, one read at
    a time (the function does not await), its transaction ended at once so the next read sees what
    was committed since. WAL readers never wait for the writer, so the loop never blocks on a lock,
    nor on the pool: the connection is not the pool's. Elsewhere (PostgreSQL: a round trip) ``fn``
    runs in one worker-thread call that opens and ends its session."""

    def __init__(self, engine: Engine, sessions: sessionmaker[Session]) -> None:
        self._sessions = sessions
        self._inline = engine.dialect.name == "sqlite"
        self._engine = engine
        self._session: Session | None = None
        self._busy = threading.Lock()  # another thread's loop (a second TestClient) takes the pool's way

    async def __call__(self, read: Callable[..., T], *args: Any) -> T:
        if self._inline and self._busy.acquire(blocking=False):
            try:
                if self._session is None:
                    self._session = Session(bind=self._engine.connect(), expire_on_commit=False)
                try:
                    return read(self._session, *args)
                finally:
                    self._session.close()  # ends the read transaction; the connection stays the loop's
            finally:
                self._busy.release()
        return await run_in_threadpool(self._in_thread, read, *args)

    def _in_thread(self, read: Callable[..., T], *args: Any) -> T:
        with self._sessions() as session:
            return read(session, *args)

    def close(self) -> None:
        """Give the loop's connection back (the app's end)."""
        if self._session is not None:
            bind = self._session.bind
            self._session.close()
            bind.close()  # type: ignore[union-attr]
            self._session = None


async def read(request: Request, fn: Callable[..., T], *args: Any) -> T:
    """``fn(session, *args)`` run by the app's ``Reads``: a GET's read-only work. (A function, not a
    dependency: each dependency costs every request its solving, issue 15.)"""
    reads: Reads = request.app.state.reads
    return await reads(fn, *args)


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]
SigningKeyDep = Annotated[bytes, Depends(get_signing_key)]
SessionDep = Annotated[Session, Depends(get_session)]
# Image uploads stream for minutes; they must not hold the write turn meanwhile (api/services/images.py
# ends each of their two transactions inside the worker-thread call that began it).
StreamingSessionDep = Annotated[Session, Depends(open_session)]


async def get_caller(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    project: Annotated[str | None, Header(alias=projects.HEADER, pattern=projects.REF_PATTERN, description=(
        "The project to act in (id or name); default: the organisation's default project"))] = None,
) -> identity.Caller:
    """The user a valid bearer token names, with the organisation and role it acts in, and the
    project the request acts in (services/projects.py); the token must not be revoked (logout,
    password change, removed membership) nor outlive the ceiling.

    A token proven in the last moments for the same project is not proven again
    (``api/tokencache.py``, which says how revocation stays immediate); otherwise it is, in a
    worker thread. (The signing key and the settings are read only then, from the app's state:
    as dependencies of their own they cost every request two more to solve.)"""
    if credentials is None:
        await audit.refused(request, 401)
        raise Unauthorized("missing bearer token: send 'Authorization: Bearer <token>' from POST /api/v1/login")
    ref = project  # its form checked by the header's declared pattern (422)
    cache: TokenCache = request.app.state.token_cache
    token = credentials.credentials
    cache_key = cache.key(token if ref is None else f"{token}\0{ref}")
    caller = cache.get(cache_key)
    if caller is None:
        read_in = tokencache.epoch.value
        try:
            caller = await run_in_threadpool(_authenticate, request, request.app.state.signing_key,
                                             request.app.state.settings, token, ref)
        except (Unauthorized, Forbidden) as exc:  # its audit row before its answer (api/audit.py)
            await audit.refused(request, 401 if isinstance(exc, Unauthorized) else 403)
            raise
        cache.put(cache_key, caller, read_in)
    request.state.audit_caller = caller  # who the audit trail records (api/audit.py)
    return caller


def _authenticate(request: Request, key: bytes, settings: ApiSettings, token: str, ref: str | None) -> identity.Caller:
    # A read session of its own, ended here: authenticating must never take the write lock.
    with request.app.state.sessions() as session:
        if app_credentials.is_credential(token):
            caller = app_credentials.authenticate(session, token)
        elif federation.is_provider_token(token):
            caller = federation.authenticate_provider_token(session, key, token)
        else:
            caller = identity.authenticate(session, key, token, settings.token_max_lifetime_s)
        request.state.audit_caller = caller  # who the audit trail records (api/audit.py), even when refused below
        return projects.act_in(session, caller, ref)


CurrentUser = Annotated[identity.Caller, Depends(get_caller)]


async def client_address(request: Request) -> str:
    """The address the request came from, as the failed sign-ins' backoff counts it (a proxy in
    front of the API would make every client its address: not handled yet)."""
    return request.client.host if request.client else "unknown"


ClientAddress = Annotated[str, Depends(client_address)]


Submit = Callable[[Iterable[str]], None]


async def get_submit(request: Request) -> Submit:
    """Hands committed job ids to the job engine; without a tree they stay pending."""
    engine = getattr(request.app.state, "jobs", None)
    if engine is None:
        return lambda _ids: None
    submit: Submit = engine.submit
    return submit


SubmitDep = Annotated[Submit, Depends(get_submit)]


# Every list route pages the same way (api/README.md "Pagination"): ``limit`` rows after the
# opaque cursor ``after`` (a previous page's ``next_after``).
PageLimit = Annotated[int, Query(ge=1, le=500, description="At most this many items")]
PageAfter = Annotated[str | None, Query(min_length=1, max_length=256, pattern=r"^[A-Za-z0-9_-]+$",
                                        description="The previous page's next_after")]


_QUERY_NAMES: dict[int, frozenset[str]] = {}  # by id(route): routes live as long as the app


def _query_names(dependant: Dependant) -> Iterator[str]:
    yield from (param.alias for param in dependant.query_params)
    for sub_dependant in dependant.dependencies:
        yield from _query_names(sub_dependant)


async def known_query_parameters(connection: HTTPConnection) -> None:
    """Refuses a query parameter the route does not take, as an unknown body field is refused
    (422): a typo such as ``?stauts=running`` would otherwise list everything. Every HTTP route
    gets it (``create_app``)."""
    route = connection.scope.get("route")
    if connection.scope["type"] != "http" or not isinstance(route, APIRoute):
        return
    known = _QUERY_NAMES.get(id(route))
    if known is None:
        known = _QUERY_NAMES[id(route)] = frozenset(_query_names(route.dependant))
    unknown = [name for name in connection.query_params if name not in known]
    if unknown:
        takes = ", ".join(sorted(known)) or "none"
        raise RequestValidationError([{"type": "extra_forbidden", "loc": ("query", name),
                                       "msg": f"not a parameter of this route (it takes: {takes})"} for name in unknown])
