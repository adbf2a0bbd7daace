"""No secret in a log line (issue 15): a filter on the API's log handlers that blanks them.

uvicorn logs every request's path with its query string (the access log, and each WebSocket
handshake on ``uvicorn.error``), so a console's one-time ``?ticket=``, or a token some client put
in a URL, would land in ``<state_dir>/api.out``. Whatever logger a record comes from, the handlers
``install`` covers blank in it the values of secret query parameters (``token``, ``access_token``,
``ticket``, ``password``), bearer credentials and anything shaped like a JWT, before it is written.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

REDACTED = "[redacted]"
_SECRETS = [
    (re.compile(r"([?&;](?:token|access_token|ticket|password)=)[^&;#\s\"']*", re.IGNORECASE), rf"\g<1>{REDACTED}"),
    (re.compile(r"(\bBearer\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE), rf"\g<1>{REDACTED}"),
    # A JWT: base64url of '{"' twice (header, claims), then the signature.
    (re.compile(r"eyJ[A-Za-z0-9_-]*\.eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]*"), REDACTED),
]
# The loggers whose handlers write the API's output: the root (our own modules) and uvicorn's.
API_LOGGERS = ("", "uvicorn", "uvicorn.access", "uvicorn.error")


def redact(text: str) -> str:
    """``text`` with every secret it holds blanked."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class RedactSecrets(logging.Filter):
    """Blanks secrets in a record's message and in each of its string arguments.

    The arguments are redacted one by one, not the formatted message: uvicorn's access
    formatter unpacks them (client, method, path, version, status) to colour them.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact(v) if isinstance(v, str) else v for k, v in record.args.items()}
        return True


def install(loggers: Iterable[str] = API_LOGGERS) -> None:
    """Put the filter on every handler of ``loggers``: a handler's filters see every record it
    writes, those propagated from other loggers included. Call it once logging is configured."""
    for name in loggers:
        for handler in logging.getLogger(name).handlers:
            if not any(isinstance(f, RedactSecrets) for f in handler.filters):
                handler.addFilter(RedactSecrets())
