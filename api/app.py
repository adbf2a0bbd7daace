"""The FastAPI application: ``create_app(settings)`` and the one place errors become HTTP."""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cloudland.client import RootClient
from cloudland.errors import (
    CloudLandError,
    Conflict,
    DirectoryUnavailable,
    Forbidden,
    HypervisorError,
    InvalidRequest,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    QuotaExceeded,
    RootUnreachable,
    TooManyRequests,
    TreeError,
    Unauthorized,
    UnsupportedMediaType,
)
from cloudland_api.jobs.guest import GuestSource
from cloudland_api.db import make_engine, session_factory
from cloudland_api.jobs import Engine, Settings as JobSettings
from cloudland_api.deps import Reads, known_query_parameters
from cloudland_api.tokencache import TokenCache
from cloudland_api.audit import AuditTrail
from cloudland_api.limits import Admission
from cloudland_api.schemas import ErrorResponse
from cloudland_api.routes import (
    audit, auth, console, credentials, directories, directory_groups, external_networks, flavors, floating_ips, groups,
    hypervisors, images, instances, jobs, ports, projects, routers, secgroups, ssh_keys, subnets, tenants, volumes, vpcs
)
from cloudland_api.security import load_signing_key
from cloudland_api.services.consoles import ConsoleTickets
from cloudland_api.services.images import remove_abandoned_uploads
from cloudland_api.settings import ApiSettings
from cloudland_api.reconcile.controller import Converger
from cloudland_api.reconcile.observer import Observer

log = logging.getLogger(__name__)
API_PREFIX = "/api/v1"

# Most specific first: the first class the error is an instance of decides.
_STATUS: list[tuple[type[CloudLandError], int, str]] = [
    (NotFound, 404, "not_found"),
    (QuotaExceeded, 409, "quota_exceeded"),
    (Conflict, 409, "conflict"),
    (PayloadTooLarge, 413, "payload_too_large"),
    (UnsupportedMediaType, 415, "unsupported_media_type"),
    (InvalidRequest, 400, "invalid_request"),
    (Unauthorized, 401, "unauthorized"),
    (Forbidden, 403, "forbidden"),
    (Overloaded, 429, "too_many_requests"),
    (TooManyRequests, 429, "too_many_requests"),
    (RootUnreachable, 503, "unavailable"),
    (DirectoryUnavailable, 503, "directory_unavailable"),
    (TreeError, 503, "unavailable"),
    (HypervisorError, 502, "hypervisor_error"),
]
_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "payload_too_large",
               415: "unsupported_media_type"}


# What Admission (limits.py) may answer on any route, before the route runs.
ADMISSION_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorResponse, "description": "The request body is larger than this route takes"},
    429: {"model": ErrorResponse, "description": "The API is saturated: retry after Retry-After seconds",
          "headers": {"Retry-After": {"description": "Seconds to wait", "schema": {"type": "integer"}}}},
}
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The one error body: ``{"error": {"code": ..., "message": ...}}``."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


async def _cloudland_error(_request: Request, exc: Exception) -> JSONResponse:
    for cls, status, code in _STATUS:
        if isinstance(exc, cls):
            # RFC 9110 §15.5.2: a 401 must say which scheme would work; a 429 says when to come back.
            headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
            if isinstance(exc, Overloaded):
                headers = {"Retry-After": str(exc.retry_after_s)}
            elif isinstance(exc, TooManyRequests):
                headers = {"Retry-After": str(exc.retry_after)}  # RFC 9110 §10.2.3: seconds
            return error_response(status, code, str(exc), headers)
    log.error("event=unmapped_error type=%s message=%s", type(exc).__name__, exc)
    return error_response(500, "internal", "internal error")


def _field(loc: tuple[Any, ...]) -> str:
    """``("body", "vcpus")`` -> ``"vcpus"``; ``("query", "limit")`` -> ``"limit (query)"``."""
    where, rest = (loc[0], loc[1:]) if loc else ("body", ())
    name = ".".join(str(part) for part in rest) or str(where)
    return name if where == "body" else f"{name} ({where})"


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    # Malformed JSON is not a validation problem of any field: say so, with the position.
    for error in errors:
        if error.get("type") == "json_invalid":
            ctx = error.get("ctx") or {}
            detail = ctx.get("error", "could not be parsed")
            return error_response(400, "malformed_json", f"request body is not valid JSON: {detail}")
    problems = []
    for error in errors:
        field = _field(tuple(error.get("loc", ())))
        message = str(error.get("msg", "invalid"))
        if error.get("type") == "missing":
            message = "field required"
        problems.append(f"{field}: {message}")
    return error_response(422, "validation_error", "; ".join(problems))


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    # Starlette's own errors (unknown path, wrong method, a body cut off at its ceiling while
    # read: limits.py) get the same body shape as ours.
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "error" if exc.status_code >= 500 else "bad_request")
    message, headers = str(exc.detail), dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request.app, request.url.path) or headers.get("Allow", "")
    return error_response(exc.status_code, code, message, headers or None)


def _with_bad_requests(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """``app.openapi`` that also declares the 400s every route of a kind may answer, whoever wrote
    the route: a JSON body that does not parse (``malformed_json``), a page cursor (``after``)
    that this list did not give (``invalid_request``)."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        document = build()
        for operations in document["paths"].values():
            for operation in operations.values():
                json_body = "application/json" in operation.get("requestBody", {}).get("content", {})
                paged = any(p.get("name") == "after" and p.get("in") == "query" for p in operation.get("parameters", []))
                if json_body or paged:
                    operation["responses"].setdefault("400", {
                        "description": "The body is not valid JSON, or the cursor is not one this list gave",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}})
        return document

    return openapi


def _allowed_methods(app: FastAPI, path: str) -> str:
    """Every method the API serves at ``path``, from the OpenAPI document's paths. Starlette's 405
    names only the methods of the one route it tried, but RFC 9110 §10.2.1 wants them all (GET
    and POST of /flavors are two routes). A literal path (``/instances/actions``) wins over a
    template that would also match it (``/instances/{instance_id}``)."""
    literal: set[str] = set()
    templated: set[str] = set()
    for template, operations in app.openapi()["paths"].items():
        methods = {method.upper() for method in operations if method.upper() in _METHODS}
        if template == path:
            literal |= methods
        elif "{" in template and re.fullmatch(re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(template)), path):
            templated |= methods
    return ", ".join(sorted(literal or templated))


async def _unexpected_error(_request: Request, exc: Exception) -> JSONResponse:
    # Last resort: log the type for operators, tell the caller nothing about internals.
    log.exception("event=unexpected_error type=%s", type(exc).__name__)
    return error_response(500, "internal", "internal error")


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The tree's parts run as long as the app serves; at its end the loop's read connection
    (deps.Reads) is given back."""
    try:
        async with _tree_parts(app):
            yield
    finally:
        app.state.reads.close()


@asynccontextmanager
async def _tree_parts(app: FastAPI) -> AsyncIterator[None]:
    """With a tree configured: the observer, the converger and the job engine run as long as the app
    serves. The observer feeds the database and tells the converger which hypervisors changed; the
    converger submits the jobs it makes to the engine (docs/architecture.md "Reconciler")."""
    settings: ApiSettings = app.state.settings
    if not settings.root_endpoint:
        yield  # no tree: jobs are written and stay pending (root_client stays create_app's None, or a test's)
        return
    observer = Observer(app.state.write_sessions, settings.root_endpoint, cpu_ratio=settings.cpu_ratio,
                        memory_ratio=settings.memory_ratio)
    job_settings = JobSettings(weigher=settings.scheduler_weigher, job_timeout_s=settings.job_timeout_s,
                               capture_timeout_s=settings.capture_timeout_s,
                               guest_source=GuestSource(settings.image_url_base, app.state.signing_key,
                                                        settings.image_token_lifetime_s))
    engine = Engine(app.state.write_sessions, RootClient(settings.root_endpoint), job_settings,
                    workers=settings.dispatch_workers, ready=observer.ready)
    converger = Converger(app.state.write_sessions, observer.observed, engine.submit, up=observer.up)
    observer.on_change = converger.changed
    observer.start()
    engine.start()  # plans again every job that was not terminal: nothing is lost on a restart
    converger.start()
    app.state.observer, app.state.converger, app.state.jobs = observer, converger, engine
    app.state.root_client = RootClient(settings.root_endpoint)  # consoles (routes/console.py)
    try:
        yield
    finally:
        app.state.root_client.close()
        app.state.jobs = None
        observer.stop()     # no more changes for the converger
        converger.stop()    # no more jobs for the engine
        engine.stop()


# FastAPI's own OpenTelemetry (in the FastAPI releases that have it), off: CloudLand configures
# no provider, and asking on every request whether one is configured cost ~4 % of a read's CPU
# (issue 15).
_NO_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False, "operation_spans": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters else {})


def create_app(settings: ApiSettings) -> FastAPI:
    """The control-plane app for ``settings``; migrations must have run (``db.upgrade``)."""
    app = FastAPI(
        **_NO_TELEMETRY,
        lifespan=_lifespan,
        title="CloudLand",
        version="1",
        summary="Virtual machines, networks and volumes for many tenants.",
        docs_url="/docs",
        openapi_url="/openapi.json",
        responses=ADMISSION_RESPONSES,
        dependencies=[Depends(known_query_parameters)],  # an unknown query parameter is a 422, as a body field
    )
    app.state.settings = settings
    app.state.signing_key = load_signing_key(settings.state_dir)
    remove_abandoned_uploads(settings.state_dir)
    app.state.engine = make_engine(settings.database_url)
    app.state.sessions = session_factory(app.state.engine)
    app.state.write_sessions = session_factory(app.state.engine, write=True)
    app.state.reads = Reads(app.state.engine, app.state.sessions)  # a GET's reads (deps.Reads)
    app.state.root_client = None  # set by the lifespan when a tree is configured
    app.state.console_tickets = ConsoleTickets()
    app.state.token_cache = TokenCache()  # tokens proven a moment ago (api/tokencache.py)
    # deps.write_turn: SQLite has one writer; PostgreSQL locks rows, so writers run in parallel.
    app.state.write_lock = asyncio.Lock() if settings.database_url.startswith("sqlite") else None
    app.add_exception_handler(CloudLandError, _cloudland_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    app.add_middleware(AuditTrail)  # inside Admission: what it turns away did nothing (audit.py)
    app.add_middleware(Admission, settings=settings)  # body ceilings and turns: 413, 429 (limits.py)
    app.openapi = _with_bad_requests(app)  # type: ignore[method-assign]
    # Starlette matches a request against the routers in this order, so the hottest come first
    # (issue 15: matching was a seventh of a read's CPU with /instances fifth). No two routers
    # answer the same path (tests/api/test_routing.py), so the order decides nothing else.
    app.include_router(instances.router, prefix=API_PREFIX)
    app.include_router(jobs.router, prefix=API_PREFIX)
    app.include_router(flavors.router, prefix=API_PREFIX)
    app.include_router(ssh_keys.router, prefix=API_PREFIX)
    app.include_router(images.router, prefix=API_PREFIX)
    app.include_router(auth.router, prefix=API_PREFIX)
    app.include_router(console.router, prefix=API_PREFIX)
    app.include_router(hypervisors.router, prefix=API_PREFIX)
    app.include_router(tenants.router, prefix=API_PREFIX)
    app.include_router(projects.router, prefix=API_PREFIX)
    app.include_router(groups.router, prefix=API_PREFIX)
    app.include_router(directory_groups.router, prefix=API_PREFIX)
    app.include_router(directories.router, prefix=API_PREFIX)
    app.include_router(audit.router, prefix=API_PREFIX)
    app.include_router(credentials.router, prefix=API_PREFIX)
    for network_router in (vpcs.router, subnets.router, ports.router, external_networks.router, routers.router,
                           floating_ips.router, secgroups.router):
        app.include_router(network_router, prefix=API_PREFIX)
    app.include_router(volumes.router, prefix=API_PREFIX)
    return app
