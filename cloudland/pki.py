"""The tree's private CA and the certificates every channel into it presents (issue 15).

Nothing drives the tree without a certificate of this CA: the root's gRPC service (mutual TLS,
control certificates only) and the rendezvous of ranks and host agents (mutual TLS, root and
node certificates only; proto/README.md §8, §10). The CA is made on first start in
``<state_dir>/pki`` (``CLOUDLAND_PKI`` puts it elsewhere), every file 0600 in a 0700 directory:

    ca.pem ca.key            the CA (its key never leaves the controller)
    root.pem root.key        the root: gRPC server and rendezvous (name ``cloudland-root``)
    control.pem control.key  the control plane: the API and the CLI's tree commands
    node.pem node.key        host agents and ranks: what an operator copies to every host

A certificate's role is its common name; each side checks the other's after the handshake.
"""

from __future__ import annotations

import datetime
import os
import shutil
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloudland.errors import ConfigError

ROOT, CONTROL, NODE = "root", "control", "node"
ROLES = (ROOT, CONTROL, NODE)
PREFIX = "cloudland-"               # a role's common name: cloudland-root, cloudland-control, ...
ROOT_NAME = PREFIX + ROOT           # the root's DNS name in its certificate: clients check it, not an address
TREE_ROLES = (ROOT, NODE)           # who may speak on the rendezvous
VALID_DAYS = 3650


def default_dir(environ: dict[str, str] | None = None) -> Path:
    """``$CLOUDLAND_PKI``, else ``<$CLOUDLAND_STATE_DIR or var>/pki``."""
    environ = os.environ if environ is None else environ  # type: ignore[assignment]
    explicit = environ.get("CLOUDLAND_PKI")
    if explicit:
        return Path(explicit)
    return Path(environ.get("CLOUDLAND_STATE_DIR") or "var") / "pki"


def ensure(directory: Path) -> Path:
    """The CA and the three role certificates in ``directory``, made if missing; returns it.

    Safe when several processes start at once (the root, ``cloudland up``, a test): each one
    makes its own set in a temporary directory beside it and renames it into place; the
    first rename wins and the others drop theirs.
    """
    if (directory / "ca.pem").exists():
        return directory
    directory.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    scratch = Path(tempfile.mkdtemp(prefix=".pki-", dir=directory.parent))  # 0700
    try:
        _make(scratch)
        try:
            os.rename(scratch, directory)
        except OSError:
            if not (directory / "ca.pem").exists():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return directory


def _make(directory: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    until = now + datetime.timedelta(days=VALID_DAYS)

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CloudLand"),
                          x509.NameAttribute(NameOID.COMMON_NAME, common)])

    def write(stem: str, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        _write_private(directory / f"{stem}.key", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        _write_private(directory / f"{stem}.pem", cert.public_bytes(serialization.Encoding.PEM))

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name(f"{PREFIX}ca {os.urandom(4).hex()}")  # one CA per cloud: two clouds never trust each other
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(until)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                       crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    write("ca", ca_key, ca)
    for role in ROLES:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (x509.CertificateBuilder().subject_name(name(PREFIX + role)).issuer_name(ca_name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(until)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                               critical=False)
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(PREFIX + role)]), critical=False)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                      ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        write(role, key, cert)


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


@dataclass(frozen=True)
class Credentials:
    """One role's certificate and key, and the CA that every peer's certificate must chain to."""

    role: str
    ca: bytes
    cert: bytes
    key: bytes
    directory: Path

    @classmethod
    def load(cls, directory: Path, role: str) -> Credentials:
        """Raises ConfigError naming the missing file (the root makes them at its first start)."""
        try:
            return cls(role, (directory / "ca.pem").read_bytes(), (directory / f"{role}.pem").read_bytes(),
                       (directory / f"{role}.key").read_bytes(), directory)
        except OSError as exc:
            raise ConfigError(f"no {role} credentials in {directory} (CLOUDLAND_PKI): {exc.strerror}: "
                              f"{exc.filename}; the root makes them at its first start, and an operator "
                              f"copies ca.pem, node.pem and node.key to each host (README)") from exc

    def context(self, server: bool) -> ssl.SSLContext:
        """Mutual TLS 1.3 for the rendezvous: our certificate, and the peer's checked against the
        CA (its role by ``check_peer``; no host names: ranks listen on any host's address)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cadata=self.ca.decode())
        ctx.load_cert_chain(self.directory / f"{self.role}.pem", self.directory / f"{self.role}.key")
        if server:
            ctx.num_tickets = 0  # no session resumption: every connection shows its certificate
        return ctx


def grpc_server_credentials(directory: Path) -> Any:
    """The root's gRPC port: its certificate, and a client certificate of the CA required
    (the service then takes only the control role: launcher/service.py)."""
    import grpc

    creds = Credentials.load(directory, ROOT)
    return grpc.ssl_server_credentials([(creds.key, creds.cert)], root_certificates=creds.ca,
                                       require_client_auth=True)


def peer_role(sock: ssl.SSLSocket) -> str:
    """The role of the (CA-verified) certificate ``sock``'s peer presented, '' if none."""
    cert = sock.getpeercert() or {}
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName" and value.startswith(PREFIX):
                return str(value[len(PREFIX):])
    return ""
