"""OpenSSH public key lines, parsed and fingerprinted in pure Python (no ``ssh-keygen``).

A line is ``<type> <base64 blob> [comment]`` (sshd(8) "AUTHORIZED_KEYS FILE FORMAT",
without the options prefix). The blob is a sequence of length-prefixed fields (RFC 4251
§5 ``string``/``mpint``) whose first field repeats the type; the remaining fields depend on
the type (RFC 4253 §6.6, RFC 5656 §3.1, RFC 8709 §4, OpenSSH PROTOCOL.u2f). The
fingerprint is what ``ssh-keygen -l`` prints: ``SHA256:`` and the unpadded base64 of
the blob's SHA-256.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from dataclasses import dataclass

from cloudland.errors import InvalidRequest

# Per type: the fields after the type name. "curve:<name>" is a string that must equal
# <name>; "point:<n>" an uncompressed EC point of n bytes; "bytes:<n>" a string of exactly
# n bytes; "string" any string; "mpint" a positive multiple-precision integer.
_LAYOUTS: dict[str, tuple[str, ...]] = {
    "ssh-ed25519": ("bytes:32",),
    "ssh-rsa": ("mpint", "mpint"),
    "ecdsa-sha2-nistp256": ("curve:nistp256", "point:65"),
    "ecdsa-sha2-nistp384": ("curve:nistp384", "point:97"),
    "ecdsa-sha2-nistp521": ("curve:nistp521", "point:133"),
    # Security-key types carry the FIDO application ("ssh:" by default) after the key.
    "sk-ssh-ed25519@openssh.com": ("bytes:32", "string"),
    "sk-ecdsa-sha2-nistp256@openssh.com": ("curve:nistp256", "point:65", "string"),
}
KEY_TYPES = frozenset(_LAYOUTS)
# OpenSSH has refused RSA keys under 1024 bits since 7.x (RSA_MIN_MODULUS_SIZE in ssh.h).
MIN_RSA_BITS = 1024
MAX_RSA_BITS = 16384  # OpenSSH's SSHBUF_MAX_BIGNUM * 8
# A comment is free text, but one line of printable characters: it ends up in a file
# (authorized_keys) inside the VM, where a newline would start another key. Control
# characters are C0, DEL and C1 (U+0080..U+009F, e.g. NEL, CSI); U+2028/U+2029 are line
# breaks too for Python's str.splitlines(), as NEL is.
_COMMENT = re.compile(r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]*$")


@dataclass(frozen=True)
class PublicKey:
    """A validated public key: its type, raw blob and comment."""

    key_type: str
    blob: bytes
    comment: str

    @property
    def fingerprint(self) -> str:
        """``SHA256:<unpadded base64>``, as ``ssh-keygen -l`` prints it."""
        digest = hashlib.sha256(self.blob).digest()
        return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")

    @property
    def line(self) -> str:
        """The normalised line: single spaces, canonical base64, comment kept if any."""
        encoded = base64.b64encode(self.blob).decode()
        return f"{self.key_type} {encoded}" + (f" {self.comment}" if self.comment else "")


def parse_public_key(text: str) -> PublicKey:
    """Parse one OpenSSH public key line; InvalidRequest says what is wrong with it."""
    line = text.strip()
    if "\n" in line or "\r" in line:
        raise InvalidRequest("public_key must be a single line holding one key")
    parts = line.split(None, 2)
    if len(parts) < 2:
        raise InvalidRequest("public_key must be '<type> <base64> [comment]'")
    key_type, encoded = parts[0], parts[1]
    comment = parts[2].strip() if len(parts) == 3 else ""
    if key_type not in _LAYOUTS:
        allowed = ", ".join(sorted(_LAYOUTS))
        raise InvalidRequest(f"public_key type {key_type[:64]!r} is not supported; use one of {allowed}")
    if not _COMMENT.match(comment):
        raise InvalidRequest("public_key comment must not contain control characters or line separators")
    try:
        blob = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidRequest(f"public_key data is not valid base64: {exc}") from exc
    _check_blob(key_type, blob)
    return PublicKey(key_type, blob, comment)


class _Reader:
    """RFC 4251 §5 fields read off the front of a blob."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob
        self.at = 0

    def string(self, what: str) -> bytes:
        if len(self.blob) - self.at < 4:
            raise InvalidRequest(f"public_key data is truncated before its {what}")
        size = int.from_bytes(self.blob[self.at:self.at + 4], "big")
        start = self.at + 4
        if size > len(self.blob) - start:
            raise InvalidRequest(f"public_key data is truncated inside its {what}")
        self.at = start + size
        return self.blob[start:self.at]

    def done(self) -> bool:
        return self.at == len(self.blob)


def _check_blob(key_type: str, blob: bytes) -> None:
    reader = _Reader(blob)
    named = reader.string("type")
    if named != key_type.encode():
        raise InvalidRequest(
            f"public_key data is for type {named[:64].decode(errors='replace')!r}, but the line says {key_type!r}"
        )
    for index, field in enumerate(_LAYOUTS[key_type]):
        kind, _, arg = field.partition(":")
        value = reader.string(f"field {index + 1} ({kind})")
        if kind == "curve" and value != arg.encode():
            raise InvalidRequest(f"public_key curve is {value[:32]!r}, expected {arg!r} for {key_type}")
        if kind == "bytes" and len(value) != int(arg):
            raise InvalidRequest(f"public_key of {key_type} must hold {arg} key bytes, got {len(value)}")
        if kind == "point" and (len(value) != int(arg) or value[0] != 0x04):
            raise InvalidRequest(f"public_key of {key_type} must hold an uncompressed {arg}-byte curve point")
        if kind == "mpint":
            # RFC 4251 §5: positive, and no needless leading zero byte.
            if not value or value[0] & 0x80 or (value[0] == 0 and (len(value) == 1 or not value[1] & 0x80)):
                raise InvalidRequest(f"public_key of {key_type} has a malformed integer")
    if not reader.done():
        raise InvalidRequest(f"public_key data has {len(blob) - reader.at} bytes after the {key_type} key")
    if key_type == "ssh-rsa":
        reader = _Reader(blob)
        reader.string("type")
        reader.string("exponent")
        bits = int.from_bytes(reader.string("modulus"), "big").bit_length()
        if not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
            raise InvalidRequest(f"public_key RSA modulus is {bits} bits; {MIN_RSA_BITS}..{MAX_RSA_BITS} accepted")
