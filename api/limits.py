"""How much the API takes in at once: request bodies and requests in flight (issue 15).

Every HTTP request and WebSocket passes ``Admission`` before the app sees it:

- **Bodies.** A declared ``Content-Length`` over the route's ceiling is a ``413`` at once, before
  the route runs or a byte of the body is read. JSON routes take ``max_body_bytes`` (1 MiB); the
  image uploads stream to disk and are bounded by ``max_image_bytes`` in their service. A chunked
  body, which declares no length, is counted as the route reads it and cut off with a ``413``
  once past the ceiling, so no body is ever held whole past it.
- **Turns.** Requests take a turn in one of two lanes. ``requests`` (everything short):
  ``max_requests`` at once, and up to ``max_queued`` more wait, first come first served, at most
  ``queue_wait_s`` each. ``streams`` (image uploads and downloads, serial consoles and job long
  polls, which may last minutes and would otherwise hold every turn): ``max_streams`` at once,
  none waiting.
  A request that finds its lane full is answered at once, unserved: ``429`` with ``Retry-After``
  (a WebSocket is refused in its handshake the same way). A waiting request costs a coroutine and
  its headers: its body is not read yet, and the server stops reading a connection past 64 KiB.
"""

from __future__ import annotations

import asyncio
import re
from collections import deque

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloudland_api.schemas import ErrorBody, ErrorResponse
from cloudland_api.settings import ApiSettings

# Routes whose exchanges last as long as their bytes take, or their wait (GET /jobs/{id}?wait=):
# they get the ``streams`` lane.
STREAMS = re.compile(r"^/api/v1/(images/[^/]+/(file|upload|download)|instances/[^/]+/console)$")
LONG_POLLS = re.compile(r"^/api/v1/jobs/[^/]+$")
# Routes whose bodies are bytes streamed to disk, bounded by their own limit (max_image_bytes).
UPLOADS = re.compile(r"^/api/v1/images/[^/]+/(file|upload)$")
RETRY_AFTER_S = 1


class Lane:
    """``size`` turns, and a first-come-first-served line of at most ``queue`` requests that each
    wait at most ``wait_s`` for one."""

    def __init__(self, name: str, size: int, queue: int = 0, wait_s: float = 0.0) -> None:
        self.name, self.size, self.queue, self.wait_s = name, size, queue, wait_s
        self.active = 0
        self._line: deque[asyncio.Future[bool]] = deque()

    @property
    def waiting(self) -> int:
        """Requests in line for a turn now."""
        return len(self._line)

    async def enter(self) -> bool:
        """Whether a turn was given (``leave`` must then follow); False: the lane is full."""
        if self.active < self.size and not self._line:
            self.active += 1
            return True
        if len(self._line) >= self.queue:
            return False
        loop = asyncio.get_running_loop()
        turn: asyncio.Future[bool] = loop.create_future()
        self._line.append(turn)
        timer = loop.call_later(self.wait_s, self._expire, turn)
        try:
            return await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled() and turn.result():
                self.leave()  # handed a turn just as we were cancelled: pass it on
            raise
        finally:
            timer.cancel()
            if turn in self._line:
                self._line.remove(turn)

    def _expire(self, turn: asyncio.Future[bool]) -> None:
        if not turn.done():
            turn.set_result(False)

    def leave(self) -> None:
        """End a turn: the first in line that still waits gets it, else it is free."""
        while self._line:
            turn = self._line.popleft()
            if not turn.done():
                turn.set_result(True)  # the turn passes on; ``active`` stays the same
                return
        self.active -= 1


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse(error=ErrorBody(code=code, message=message))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def _declared_length(scope: Scope) -> int | None:
    raw = Headers(scope=scope).get("content-length")
    return int(raw) if raw is not None and raw.isdigit() else None


class Admission:
    """ASGI middleware: the body ceiling, then a turn in a lane for every request, or a 413/429."""

    def __init__(self, app: ASGIApp, settings: ApiSettings) -> None:
        self.app = app
        self.max_body_bytes = settings.max_body_bytes
        self.requests = Lane("requests", settings.max_requests, settings.max_queued, settings.queue_wait_s)
        self.streams = Lane("streams", settings.max_streams)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if scope["type"] == "http" and not UPLOADS.match(path):
            length = _declared_length(scope)
            if length is not None and length > self.max_body_bytes:
                response = _error(413, "payload_too_large", f"request body of {length} bytes is larger than the "
                                  f"{self.max_body_bytes} bytes {scope['method']} {path} takes")
                await response(scope, receive, send)
                return
            receive = self._capped(scope, receive)
        long_poll = b"wait=" in scope["query_string"] and LONG_POLLS.match(path)
        lane = self.streams if long_poll or STREAMS.match(path) else self.requests
        if not await lane.enter():
            await self._refuse(lane, scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            lane.leave()

    def _capped(self, scope: Scope, receive: Receive) -> Receive:
        """``receive`` that counts the body's bytes and raises a 413 once they pass the ceiling (a
        chunked body declares no length). FastAPI lets an HTTPException out of its body reading,
        so our handler answers it (app.py ``_http_error``)."""
        received = 0

        async def receive_capped() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise HTTPException(413, f"request body is larger than the {self.max_body_bytes} bytes "
                                             f"{scope['method']} {scope['path']} takes")
            return message

        return receive_capped

    async def _refuse(self, lane: Lane, scope: Scope, receive: Receive, send: Send) -> None:
        what = "image transfers, consoles and long polls" if lane is self.streams else "requests"
        message = (f"the API is busy: {lane.active} {what} in progress and {lane.waiting} waiting; "
                   f"retry after {RETRY_AFTER_S} s")
        response = _error(429, "too_many_requests", message, {"Retry-After": str(RETRY_AFTER_S)})
        if scope["type"] == "http":
            await response(scope, receive, send)
            return
        await receive()  # websocket.connect
        if "websocket.http.response" in scope.get("extensions", {}):
            await send({"type": "websocket.http.response.start", "status": 429,
                        "headers": [(k.encode(), v.encode()) for k, v in response.headers.items()]})
            await send({"type": "websocket.http.response.body", "body": response.body})
        else:
            await send({"type": "websocket.close", "code": 1013, "reason": message[:123]})
