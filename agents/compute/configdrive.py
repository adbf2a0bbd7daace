"""Config drives: a VM's cloud-init metadata as an ISO 9660 image in the OpenStack layout.

A config drive is what cloud-init's ConfigDrive datasource (and deploy/guest/init) reads
from a CD-ROM or disk labelled ``config-2``::

    openstack/latest/meta_data.json     uuid, hostname, name, public_keys {name: key}
    openstack/latest/user_data          the user's bytes, verbatim (omitted when None)
    openstack/latest/network_data.json  links/networks/services (omitted when None)

The image has Rock Ridge (Linux reads the real lower-case names) and Joliet (Windows'
cloudbase-init does) over plain ISO 9660 8.3 names, as nova's ``genisoimage -J -r -V config-2``
writes it. It is built with pycdlib, in Python, rather than by running genisoimage/xorriso.
Inputs are validated first; a bad one is an InvalidRequest naming the field.
"""

from __future__ import annotations

import io
import json
import os
import re
import tempfile
import uuid as uuidlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pycdlib
from pycdlib.pycdlibexception import PyCdlibException

from cloudland.errors import CloudLandError, InvalidRequest

LABEL = "config-2"
METADATA_DIR = "openstack/latest"
# Nova's limits: user data of at most 64 KiB; the rest is ours, generous for any real use.
MAX_USER_DATA_BYTES = 65535
MAX_NETWORK_DATA_BYTES = 65536
MAX_SSH_KEYS = 64
MAX_SSH_KEY_CHARS = 16384
MAX_NAME_CHARS = 255

_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")  # RFC 1123 section 2.1 label
# "<type> <base64> [comment]" on one line, as in authorized_keys: ssh-ed25519, ssh-rsa,
# ecdsa-sha2-nistp256, sk-ssh-ed25519@openssh.com...
_SSH_KEY = re.compile(r"(ssh|ecdsa|sk)-[a-z0-9@.-]{1,60} [A-Za-z0-9+/]{16,}={0,3}( [^\r\n\0]*)?")


def build_config_drive(
    path: str | os.PathLike[str],
    *,
    hostname: str,
    uuid: str,
    ssh_keys: Sequence[str] = (),
    user_data: bytes | None = None,
    network_config: dict[str, Any] | None = None,
    name: str | None = None,
) -> Path:
    """Write the config drive of a VM to ``path`` (replaced atomically) and return it.

    ``name`` is the display name in meta_data.json (default: ``hostname``); ssh keys are
    published as ``key-0``, ``key-1``... in list order.
    """
    meta = metadata(hostname=hostname, uuid=uuid, ssh_keys=ssh_keys, name=name)
    files: dict[str, bytes] = {"meta_data.json": _json_bytes(meta)}
    if user_data is not None:
        _check(isinstance(user_data, bytes), "user_data", "bytes or None", type(user_data).__name__)
        _check(len(user_data) <= MAX_USER_DATA_BYTES, "user_data", f"at most {MAX_USER_DATA_BYTES} bytes",
               f"{len(user_data)} bytes")
        files["user_data"] = user_data
    if network_config is not None:
        _check(isinstance(network_config, dict), "network_config", "a JSON object (dict) or None",
               type(network_config).__name__)
        try:
            network_json = _json_bytes(network_config)
        except (TypeError, ValueError) as exc:
            raise InvalidRequest(f"'network_config' must be JSON-serialisable: {exc}") from exc
        _check(len(network_json) <= MAX_NETWORK_DATA_BYTES, "network_config",
               f"at most {MAX_NETWORK_DATA_BYTES} bytes as JSON", f"{len(network_json)} bytes")
        files["network_data.json"] = network_json
    target = Path(path)
    _write_iso(target, files)
    return target


def metadata(*, hostname: str, uuid: str, ssh_keys: Sequence[str] = (), name: str | None = None) -> dict[str, Any]:
    """The validated contents of meta_data.json."""
    _check(isinstance(hostname, str) and len(hostname) <= 253
           and all(_LABEL.fullmatch(label) for label in hostname.split(".")), "hostname",
           "an RFC 1123 host name (dot-separated labels of 1-63 letters, digits or inner hyphens, "
           "253 characters at most)", hostname)
    try:
        canonical = str(uuidlib.UUID(uuid)) if isinstance(uuid, str) else ""
    except ValueError:
        canonical = ""
    _check(canonical != "" and canonical == uuid.lower(), "uuid", "a uuid like 8-4-4-4-12 hex digits", uuid)
    display = hostname if name is None else name
    _check(isinstance(display, str) and 0 < len(display) <= MAX_NAME_CHARS and "\0" not in display,
           "name", f"a string of 1-{MAX_NAME_CHARS} characters", display)
    _check(not isinstance(ssh_keys, (str, bytes)) and isinstance(ssh_keys, Sequence), "ssh_keys",
           "a list of public keys", ssh_keys)
    _check(len(ssh_keys) <= MAX_SSH_KEYS, "ssh_keys", f"at most {MAX_SSH_KEYS} keys", f"{len(ssh_keys)} keys")
    for i, key in enumerate(ssh_keys):
        _check(isinstance(key, str) and len(key) <= MAX_SSH_KEY_CHARS and _SSH_KEY.fullmatch(key) is not None,
               f"ssh_keys[{i}]", "one OpenSSH public key line ('<type> <base64> [comment]')",
               key if not isinstance(key, str) or len(key) <= 80 else key[:80] + "...")
    return {
        "uuid": canonical,
        "hostname": hostname,
        "name": display,
        "launch_index": 0,
        "public_keys": {f"key-{i}": key for i, key in enumerate(ssh_keys)},
    }


def _check(ok: bool, field_name: str, expected: str, got: object) -> None:
    if not ok:
        raise InvalidRequest(f"{field_name!r} must be {expected}, got {got!r}")


def _json_bytes(value: Any) -> bytes:
    # One line, no NaN: what OpenStack writes, and what the test guest's sed can read.
    return json.dumps(value, sort_keys=True, allow_nan=False).encode()


def _iso_names(names: Sequence[str]) -> dict[str, str]:
    """Distinct ISO 9660 level-1 (8.3, upper-case) names for ``names``; RR/Joliet keep the real ones."""
    taken: set[str] = set()
    result: dict[str, str] = {}
    for real in names:
        stem, _, ext = real.upper().partition(".")
        stem = re.sub(r"[^A-Z0-9_]", "_", stem)[:8] or "_"
        ext = re.sub(r"[^A-Z0-9_]", "_", ext.replace(".", "_"))[:3]
        candidate, n = stem, 0
        while f"{candidate}.{ext}" in taken:  # meta_data.json and meta_data.jsonx would collide
            n += 1
            candidate = f"{stem[:8 - len(str(n)) - 1]}~{n}"
        taken.add(f"{candidate}.{ext}")
        result[real] = f"{candidate}.{ext};1"
    return result


def _write_iso(target: Path, files: dict[str, bytes]) -> None:
    iso = pycdlib.PyCdlib()
    try:
        iso.new(interchange_level=1, vol_ident=LABEL, joliet=3, rock_ridge="1.09")
        iso_dir = ""
        real_dir = ""
        for part in METADATA_DIR.split("/"):
            iso_dir += "/" + re.sub(r"[^A-Z0-9_]", "_", part.upper())[:8]
            real_dir += "/" + part
            iso.add_directory(iso_dir, rr_name=part, joliet_path=real_dir)
        for real, iso_name in _iso_names(sorted(files)).items():
            data = files[real]
            iso.add_fp(io.BytesIO(data), len(data), f"{iso_dir}/{iso_name}", rr_name=real,
                       joliet_path=f"{real_dir}/{real}")
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write beside the target and rename: a reader (or a retried job) never sees half an image.
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                iso.write_fp(out)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise
    except PyCdlibException as exc:
        raise CloudLandError(f"building config drive {target} failed: {exc}") from exc
    finally:
        iso.close()
