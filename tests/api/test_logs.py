"""No secret in a log line: api/logs.py blanks them in uvicorn's lines and our own (issue 15).
The whole path (uvicorn writing api.out under a real session) is tests/integration/test_no_secrets.py."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import pytest
from uvicorn.logging import AccessFormatter

from cloudland_api.logs import REDACTED, RedactSecrets, install, redact
from cloudland_api.security import issue_token

JWT = issue_token(b"k" * 32, 1, 1, 60)[0]


@pytest.mark.parametrize(("line", "expected"), [
    ("/api/v1/instances/3/console?ticket=AbC-12_x", f"/api/v1/instances/3/console?ticket={REDACTED}"),
    ("/x?a=1&token=t0k&b=2", f"/x?a=1&token={REDACTED}&b=2"),
    ("/x?Access_Token=t&ticket=u", f"/x?Access_Token={REDACTED}&ticket={REDACTED}"),
    ("/login?password=hunter2", f"/login?password={REDACTED}"),
    (f"Authorization: Bearer {JWT}", f"Authorization: Bearer {REDACTED}"),
    (f"saw {JWT} here", f"saw {REDACTED} here"),
    ("/api/v1/flavors?limit=5&after=abc", "/api/v1/flavors?limit=5&after=abc"),  # nothing secret: untouched
    ("tokens=3 ticketing", "tokens=3 ticketing"),
])
def test_redact(line: str, expected: str) -> None:
    assert redact(line) == expected


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO]]:
    """A logger writing through a handler with uvicorn's access formatter, filtered by ``install``."""
    logger = logging.getLogger("test.uvicorn.access")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s', use_colors=False))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    install([logger.name])
    install([logger.name])  # idempotent
    assert sum(isinstance(f, RedactSecrets) for f in handler.filters) == 1
    yield logger, stream
    logger.removeHandler(handler)


def test_uvicorn_access_lines_keep_their_shape(captured: tuple[logging.Logger, io.StringIO]) -> None:
    logger, stream = captured
    # As uvicorn's HTTP protocols log a request (the formatter unpacks these five arguments).
    logger.info('%s - "%s %s HTTP/%s" %d', "127.0.0.1:5000", "GET",
                "/api/v1/images?ticket=s3cr3t&x=1", "1.1", 200)
    assert stream.getvalue() == f'127.0.0.1:5000 - "GET /api/v1/images?ticket={REDACTED}&x=1 HTTP/1.1" 200 OK\n'
