"""What an image is to an agent: where it is fetched from (``ImageSource``), where a capture
goes (``ImageTarget``), each validated on construction (InvalidRequest names the field).

Built from the operations' messages (proto/v1/image.proto); the cache (cache.py) uses them.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass

from cloudland.errors import InvalidRequest

DISK_FORMATS = ("qcow2", "raw")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class ImageSource:
    """Where a hypervisor fetches image ``image_id`` and what its bytes must be.

    ``url`` is http(s):// (the API's ``/images/{id}/file``, with ``token`` sent as a bearer
    token) or file:// naming the file itself or a directory holding ``<image_id>.<format>``
    (the API's image directory, when it shares a filesystem with the agent).
    """

    image_id: int
    sha256: str
    size_bytes: int
    disk_format: str
    url: str
    token: str | None = None

    def __post_init__(self) -> None:
        where = f"image {self.image_id}"
        if not _SHA256.fullmatch(self.sha256):
            raise InvalidRequest(f"{where}: sha256 must be 64 lower-case hex digits, got {self.sha256!r}")
        if self.size_bytes < 0:
            raise InvalidRequest(f"{where}: size_bytes must be >= 0, got {self.size_bytes}")
        if self.disk_format not in DISK_FORMATS:
            raise InvalidRequest(f"{where}: disk_format must be one of {DISK_FORMATS}, got {self.disk_format!r}")
        if urllib.parse.urlsplit(self.url).scheme not in ("http", "https", "file"):
            raise InvalidRequest(f"{where}: url must be http(s):// or file://, got {public_url(self.url)!r}")

    def __repr__(self) -> str:  # keeps the token out of logs and tracebacks
        return (f"ImageSource(image_id={self.image_id}, sha256={self.sha256!r}, size_bytes={self.size_bytes}, "
                f"disk_format={self.disk_format!r}, url={public_url(self.url)!r})")


@dataclass(frozen=True)
class ImageTarget:
    """Where a hypervisor uploads the capture that becomes image ``image_id``: ``url`` is the
    API's ``/images/{id}/upload``, ``token`` the job's upload token for that one image."""

    image_id: int
    disk_format: str
    url: str
    token: str

    def __post_init__(self) -> None:
        where = f"image {self.image_id}"
        if self.disk_format not in DISK_FORMATS:
            raise InvalidRequest(f"{where}: disk_format must be one of {DISK_FORMATS}, got {self.disk_format!r}")
        if urllib.parse.urlsplit(self.url).scheme not in ("http", "https"):
            raise InvalidRequest(f"{where}: url must be http(s)://, got {public_url(self.url)!r}")
        if not self.token:  # the API refuses an upload without the job's token
            raise InvalidRequest(f"{where}: token is required")

    def __repr__(self) -> str:  # keeps the token out of logs and tracebacks
        return f"ImageTarget(image_id={self.image_id}, disk_format={self.disk_format!r}, url={public_url(self.url)!r})"


def public_url(url: str) -> str:
    """``url`` without credentials (user:password@) or query string, fit for messages and logs."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # IPv6
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))
