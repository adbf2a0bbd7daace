"""A client of the REST control plane (``/api/v1``) for the CLI: errors, pagination.

Its endpoint and token come from the profile in use (settings.py: config file, profiles and
``CLOUDLAND_ENDPOINT`` / ``CLOUDLAND_TOKEN``).

Every failure is one of cloudland/errors.py, carrying the server's own message:
401 Unauthorized, 403 Forbidden, 404 NotFound, 409 Conflict, 429 Overloaded, other 4xx
InvalidRequest, 5xx CloudLandError, and a refused or dropped connection ApiUnreachable.

A 429 means the API was too busy to take the request and did nothing with it, so a request
without a streamed body is sent again after the ``Retry-After`` it names, a few times.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx2 as httpx

from cloudland.errors import (
    ApiUnreachable,
    CloudLandError,
    Conflict,
    Forbidden,
    InvalidRequest,
    NotFound,
    Overloaded,
    Unauthorized,
)
from cloudland_cli.settings import API_PREFIX, DEFAULT_ENDPOINT, CliConfig, normalise_endpoint

PAGE_SIZE = 500          # the largest page the API serves (limit 1..500)
UPLOAD_CHUNK = 1 << 20   # bytes per chunk of an image upload
BUSY_RETRIES = 5         # times a request turned away with 429 is sent again
MAX_RETRY_AFTER_S = 10.0
_STATUS_ERRORS: dict[int, type[CloudLandError]] = {
    401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 429: Overloaded,
}

ProgressCallback = Callable[[int], None]


def _message(reply: httpx.Response) -> str:
    try:
        body = reply.json()
        error = body["error"]
        return f"{error['message']}"
    except (ValueError, KeyError, TypeError):
        return reply.text.strip()[:300] or reply.reason_phrase


def retry_after(reply: httpx.Response) -> float:
    """Seconds a 429 asks to wait (RFC 9110 §10.2.3, delay-seconds form), 1 if it names none."""
    raw = reply.headers.get("retry-after", "")
    return min(float(raw), MAX_RETRY_AFTER_S) if raw.isdigit() else 1.0


def translate(reply: httpx.Response) -> CloudLandError:
    """The errors.py exception for an error response, with the server's message."""
    message = _message(reply)
    cls = _STATUS_ERRORS.get(reply.status_code)
    if cls is not None:
        return cls(message)
    if 400 <= reply.status_code < 500:
        return InvalidRequest(message)
    return CloudLandError(f"the API failed ({reply.status_code}): {message}")


PROJECT_HEADER = "X-CloudLand-Project"

class ApiClient:
    """Calls to one CloudLand API endpoint with an optional bearer token.

    Methods return the decoded JSON body (None for 204) and raise errors.py exceptions.
    """

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, token: str | None = None, timeout: float = 30.0,
                 project: str | None = None) -> None:
        self.endpoint = normalise_endpoint(endpoint)
        self.token = token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        if project:
            headers[PROJECT_HEADER] = project  # the project every call acts in (api/services/projects.py)
        self._http = httpx.Client(base_url=self.endpoint + API_PREFIX, headers=headers, timeout=timeout)

    @classmethod
    def from_config(cls, config: CliConfig | None = None, *, require_token: bool = True) -> ApiClient:
        """A client from the stored config and environment; Unauthorized if a token is needed but absent."""
        config = (config or CliConfig.load()).effective()
        if require_token and not config.token:
            raise Unauthorized("not logged in: run `cloudland login` first")
        if require_token and config.expires_at:
            try:
                expires = datetime.fromisoformat(config.expires_at)
                if expires.tzinfo is None:
                    expires = expires.replace(tzinfo=timezone.utc)
            except ValueError:
                expires = None
            if expires is not None and expires <= datetime.now(timezone.utc):
                raise Unauthorized(f"the token expired at {config.expires_at}: run `cloudland login` again")
        return cls(config.endpoint, config.token, project=config.project)

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- raw calls ------------------------------------------------------------------------

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One call; the JSON body on 2xx, an errors.py exception otherwise."""
        reply = self._send(method, path, **kwargs)
        # A streamed body (an upload) is spent: its 429 goes to the caller.
        retries = BUSY_RETRIES if "content" not in kwargs else 0
        while reply.status_code == 429 and retries > 0:
            retries -= 1
            time.sleep(retry_after(reply))
            reply = self._send(method, path, **kwargs)
        if reply.status_code >= 400:
            error = translate(reply)
            # The hint helps a refused token; a refused password at /login is its own answer.
            if isinstance(error, Unauthorized) and not path.startswith("/login"):
                error = Unauthorized(f"{error}: run `cloudland login`")
            raise error
        if reply.status_code == 204 or not reply.content:
            return None
        try:
            return reply.json()
        except ValueError as exc:
            raise CloudLandError(f"the API at {self.endpoint} answered {method} {path} with non-JSON") from exc

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise ApiUnreachable(f"the API at {self.endpoint} did not answer in time ({type(exc).__name__})") from exc
        except httpx.TransportError as exc:
            reason = str(exc) or type(exc).__name__
            raise ApiUnreachable(f"cannot reach the API at {self.endpoint}: {reason}") from exc

    def get(self, path: str, **params: Any) -> Any:
        """GET with query parameters (None values left out)."""
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: Any = None) -> Any:
        """POST a JSON body."""
        return self.request("POST", path, json=body if body is not None else {})

    def put(self, path: str, body: Any) -> Any:
        """PUT ``body`` as JSON (null is a body too: ``router set-gateway`` without a network)."""
        return self.request("PUT", path, json=body)

    def patch(self, path: str, body: Any) -> Any:
        """PATCH a JSON body."""
        return self.request("PATCH", path, json=body)

    def delete(self, path: str) -> Any:
        """DELETE a resource."""
        return self.request("DELETE", path)

    # -- higher level ---------------------------------------------------------------------

    def login(self, username: str, password: str, organisation: str | None = None,
              lifetime_s: int | None = None) -> dict[str, Any]:
        """``POST /login``: ``{token, expires_at}``; the client uses the token from now on."""
        body: dict[str, Any] = {"username": username, "password": password}
        if organisation:
            body["organisation"] = organisation
        if lifetime_s is not None:
            body["lifetime_s"] = lifetime_s
        reply: dict[str, Any] = self.request("POST", "/login", json=body)
        self.token = reply["token"]
        self._http.headers["Authorization"] = f"Bearer {self.token}"
        return reply

    def iter_after(self, path: str, page_size: int = PAGE_SIZE, **params: Any) -> Iterator[dict[str, Any]]:
        """Every item of a list: every list route pages ``{items, limit, next_after}`` by an
        opaque cursor (api/README.md "Pagination")."""
        after: str | None = None
        while True:
            page = self.get(path, limit=page_size, after=after, **params)
            yield from page["items"]
            after = page.get("next_after")
            if after is None:
                return

    def upload(
        self, path: str, file: Path, headers: Mapping[str, str] | None = None,
        progress: ProgressCallback | None = None,
    ) -> Any:
        """PUT ``file`` as a raw octet-stream body in chunks, calling ``progress(bytes_sent)``."""
        size = file.stat().st_size

        def chunks() -> Iterable[bytes]:
            sent = 0
            with file.open("rb") as fh:
                while chunk := fh.read(UPLOAD_CHUNK):
                    sent += len(chunk)
                    yield chunk
                    if progress is not None:
                        progress(sent)

        all_headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size), **(headers or {})}
        # No read timeout: the server may hash a large image before it answers.
        return self.request("PUT", path, content=chunks(), headers=all_headers,
                            timeout=httpx.Timeout(30.0, read=None))


def find_by_ref(client: ApiClient, path: str, ref: str, kind: str) -> dict[str, Any]:
    """The one resource of a collection with that id or name; a name that several have (ports' names
    need not be unique) is refused, naming their ids."""
    if ref.isdigit():
        found: dict[str, Any] = client.get(f"{path}/{ref}")
        return found
    matches = [item for item in client.iter_after(path) if item["name"] == ref]
    if not matches:
        raise InvalidRequest(f"no {kind} named {ref!r}")
    if len(matches) > 1:
        raise InvalidRequest(f"{len(matches)} {kind}s are named {ref!r}; use an id: "
                             + ", ".join(str(item["id"]) for item in matches))
    return matches[0]
