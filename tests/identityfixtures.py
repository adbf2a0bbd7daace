"""The identity systems companies run, started for real by the tests (registered in
tests/conftest.py with ``pytest_plugins``):

- ``slapd``: OpenLDAP's slapd (Debian's ``slapd``), one per session, in a private temporary
  directory on a free port of 127.0.0.1: ``cn=config`` and the entries are built with
  ``slapadd`` (about 70 ms each), then slapd runs in the foreground and is stopped by its PID at
  the end of the session, even when tests fail. Users ``alice`` (group ``cloud-admins``), ``bob``
  (``cloud-users``), ``carol`` (no group) and ``admin`` (no group: a directory user with the local
  break-glass admin's name); CloudLand's service account ``cn=cloudland,ou=services``. Tests that
  change entries (``Slapd.connect()`` binds as the directory's root) put them back.
- ``oidc_provider``: node ``oidc-provider`` (npm, OpenID Certified; ``tests/identity/provider``),
  one per session, with the device flow on and a public client ``cloudland``; its accounts
  (``OidcProvider.accounts``) are re-read at every sign-in, its signing keys are generated here
  (``OidcProvider.key``), so tests can sign tokens as the provider would.

A package that cannot be had skips with the reason, except under CI (which installs them:
deploy/bootstrap.sh), where it fails.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

SLAPD = Path("/usr/sbin/slapd")
SLAPADD = Path("/usr/sbin/slapadd")
SUFFIX = "dc=example,dc=org"
ROOT_DN = f"cn=root,{SUFFIX}"
SERVICE_DN = f"cn=cloudland,ou=services,{SUFFIX}"
PEOPLE = f"ou=people,{SUFFIX}"
GROUPS = f"ou=groups,{SUFFIX}"
# groupOfNames needs a member: one that names nobody, so a test may empty a group of people.
PLACEHOLDER = f"cn=nobody,{SUFFIX}"
PROVIDER_DIR = Path(__file__).parent / "identity" / "provider"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def ssha(password: str) -> str:
    """An LDAP ``{SSHA}`` hash of ``password`` (as slappasswd writes it)."""
    salt = os.urandom(8)
    return "{SSHA}" + base64.b64encode(hashlib.sha1(password.encode() + salt).digest() + salt).decode()


def _wait_port(port: int, proc: subprocess.Popen[Any], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited {proc.returncode} before listening on 127.0.0.1:{port}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{what} is not listening on 127.0.0.1:{port} after {timeout_s} s")


def _stop(proc: subprocess.Popen[Any] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- slapd ----------------------------------------------------------------------------------

CONFIG_LDIF = """\
dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: {base}/slapd.pid
olcTLSCertificateFile: {base}/server.pem
olcTLSCertificateKeyFile: {base}/server.key

dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: /usr/lib/ldap
olcModuleLoad: back_mdb

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

include: file:///etc/ldap/schema/core.ldif
include: file:///etc/ldap/schema/cosine.ldif
include: file:///etc/ldap/schema/nis.ldif
include: file:///etc/ldap/schema/inetorgperson.ldif

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcSuffix: {suffix}
olcRootDN: {root_dn}
olcRootPW: {root_pw}
olcDbDirectory: {base}/data
olcDbMaxSize: 67108864
olcAccess: {{0}}to attrs=userPassword by self read by anonymous auth by * none
olcAccess: {{1}}to * by users read by * none
"""


def _entries(passwords: dict[str, str]) -> str:
    people = "".join(f"""
dn: uid={uid},{PEOPLE}
objectClass: inetOrgPerson
uid: {uid}
cn: {uid.title()}
sn: {uid.title()}
mail: {uid}@example.org
userPassword: {ssha(password)}
""" for uid, password in passwords.items() if uid != "cloudland")
    return f"""\
dn: {SUFFIX}
objectClass: dcObject
objectClass: organization
dc: example
o: Example

dn: ou=people,{SUFFIX}
objectClass: organizationalUnit
ou: people

dn: ou=groups,{SUFFIX}
objectClass: organizationalUnit
ou: groups

dn: ou=services,{SUFFIX}
objectClass: organizationalUnit
ou: services

dn: {SERVICE_DN}
objectClass: organizationalRole
objectClass: simpleSecurityObject
cn: cloudland
userPassword: {ssha(passwords["cloudland"])}
{people}
dn: cn=cloud-admins,{GROUPS}
objectClass: groupOfNames
cn: cloud-admins
member: {PLACEHOLDER}
member: uid=alice,{PEOPLE}

dn: cn=cloud-users,{GROUPS}
objectClass: groupOfNames
cn: cloud-users
member: {PLACEHOLDER}
member: uid=bob,{PEOPLE}
"""


def _tls_files(base: Path) -> str:
    """A CA and a certificate for 127.0.0.1 it signed, in ``base`` (server.pem, server.key); the
    CA's PEM, which tests give CloudLand as the directory's ``ca_cert``."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("test directory CA")).issuer_name(name("test directory CA"))
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(ca_key, hashes.SHA256()))
    import ipaddress

    server = (x509.CertificateBuilder().subject_name(name("127.0.0.1")).issuer_name(ca.subject)
              .public_key(key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
              .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                             critical=False).sign(ca_key, hashes.SHA256()))
    (base / "server.pem").write_bytes(server.public_bytes(serialization.Encoding.PEM))
    fd = os.open(base / "server.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return ca.public_bytes(serialization.Encoding.PEM).decode()


@dataclass
class Slapd:
    """A running throwaway slapd; ``passwords`` by uid (and "cloudland": the service account's).
    It serves ``url`` (StartTLS offered) and ``ldaps_url``, with a certificate ``ca_cert`` signed."""

    base: Path
    port: int
    root_password: str
    passwords: dict[str, str]
    ldaps_port: int = 0
    ca_cert: str = ""
    proc: subprocess.Popen[Any] | None = None

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def ldaps_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.ldaps_port}"

    def start(self) -> None:
        log = (self.base / "slapd.log").open("ab")
        self.proc = subprocess.Popen([str(SLAPD), "-F", str(self.base / "config"), "-h",
                                      f"{self.url}/ {self.ldaps_url}/", "-d", "0"],
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        _wait_port(self.port, self.proc, "slapd")
        _wait_port(self.ldaps_port, self.proc, "slapd (ldaps)")

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None

    @contextmanager
    def stopped(self) -> Iterator[None]:
        """The directory down meanwhile (its port refuses), up again afterwards."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def connect(self) -> Any:
        """An ldap3 connection bound as the directory's root (it may change any entry)."""
        from ldap3 import Connection, Server

        return Connection(Server(self.url), user=ROOT_DN, password=self.root_password, auto_bind=True)

    def ldap_settings(self, **overrides: Any) -> dict[str, Any]:
        """The body of ``PUT /organisations/{id}/ldap`` for this directory."""
        body = {"url": self.url, "bind_dn": SERVICE_DN, "bind_password": self.passwords["cloudland"],
                "user_base": PEOPLE, "group_base": GROUPS,
                "roles": {"cloud-admins": "admin", "cloud-users": "member"}, "timeout_s": 3.0}
        return {**body, **overrides}


@pytest.fixture(scope="session")
def slapd() -> Iterator[Slapd]:
    """A real slapd for the session (the module's docstring)."""
    if not SLAPD.exists() or not SLAPADD.exists():
        _missing("slapd not installed: apt-get install slapd ldap-utils (deploy/bootstrap.sh does)")
    pytest.importorskip("ldap3")
    base = Path(tempfile.mkdtemp(prefix="cloudland-slapd-"))
    server = Slapd(base, free_port(), os.urandom(12).hex(),
                   {uid: os.urandom(9).hex() for uid in ("cloudland", "alice", "bob", "carol", "admin")},
                   ldaps_port=free_port())
    try:
        server.ca_cert = _tls_files(base)
        (base / "config").mkdir(mode=0o700)
        (base / "data").mkdir(mode=0o700)
        (base / "config.ldif").write_text(CONFIG_LDIF.format(base=base, suffix=SUFFIX, root_dn=ROOT_DN,
                                                             root_pw=server.root_password))
        (base / "data.ldif").write_text(_entries(server.passwords))
        for argv in ([str(SLAPADD), "-n0", "-F", str(base / "config"), "-l", str(base / "config.ldif")],
                     [str(SLAPADD), "-n1", "-F", str(base / "config"), "-l", str(base / "data.ldif")]):
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stdout}{done.stderr}")
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


# -- the OpenID provider ---------------------------------------------------------------------

CLIENT_ID = "cloudland"


def new_signing_key(kid: str) -> tuple[Any, dict[str, Any]]:
    """An RSA key and its private JWK (``kid``), as the provider is given them."""
    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key))
    jwk.update(kid=kid, use="sig", alg="RS256")
    return key, jwk


@dataclass
class OidcProvider:
    """A running node oidc-provider; ``accounts`` (login -> claims) is re-read at every sign-in."""

    base: Path
    port: int
    key: Any                      # the signing key (cryptography's RSA private key) ...
    kid: str                      # ... and its kid
    jwk: dict[str, Any]           # ... and its private JWK, as the provider is given it
    accounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    proc: subprocess.Popen[Any] | None = None

    @property
    def issuer(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def set_accounts(self, accounts: dict[str, dict[str, Any]]) -> None:
        self.accounts = accounts
        (self.base / "accounts.json").write_text(json.dumps(accounts))

    def start(self) -> None:
        log = (self.base / "provider.log").open("ab")
        self.proc = subprocess.Popen(["node", str(PROVIDER_DIR / "provider.mjs"), str(self.base / "config.json")],
                                     stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        _wait_port(self.port, self.proc, "oidc-provider")

    def stop(self) -> None:
        _stop(self.proc)
        self.proc = None

    def rotate(self, jwks: list[dict[str, Any]]) -> None:
        """Restart the provider (same port, same accounts) publishing ``jwks``; it signs with the first."""
        config = json.loads((self.base / "config.json").read_text())
        config["jwks"] = {"keys": jwks}
        (self.base / "config.json").write_text(json.dumps(config))
        self.stop()
        self.start()

    def sign(self, claims: dict[str, Any], key: Any = None, kid: str | None = None) -> str:
        """A token signed as the provider signs (or with another ``key``), for the refusal tests."""
        import jwt

        return jwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": kid or self.kid})

    def oidc_settings(self, **overrides: Any) -> dict[str, Any]:
        """The body of ``PUT /organisations/{id}/oidc`` for this provider."""
        body = {"issuer": self.issuer, "client_id": CLIENT_ID,
                "roles": {"cloud-admins": "admin", "cloud-users": "member"}, "timeout_s": 3.0}
        return {**body, **overrides}


@pytest.fixture(scope="session")
def oidc_provider() -> Iterator[OidcProvider]:
    """A real OpenID provider for the session (the module's docstring)."""
    if shutil.which("node") is None:
        _missing("node not installed: the OpenID provider tests need Node.js 20 or later")
    if not (PROVIDER_DIR / "node_modules" / "oidc-provider").is_dir():
        _missing(f"oidc-provider not installed: npm ci --prefix {PROVIDER_DIR} (deploy/bootstrap.sh does)")
    base = Path(tempfile.mkdtemp(prefix="cloudland-oidc-"))
    os.chmod(base, 0o700)
    key, jwk = new_signing_key("k1")
    provider = OidcProvider(base, free_port(), key, "k1", jwk)
    try:
        provider.set_accounts({
            "alice": {"preferred_username": "alice", "email": "alice@example.org", "groups": ["cloud-admins"]},
            "bob": {"preferred_username": "bob", "email": "bob@example.org", "groups": ["cloud-users"]},
            "carol": {"preferred_username": "carol", "email": "carol@example.org", "groups": []},
        })
        client = {"client_id": CLIENT_ID, "token_endpoint_auth_method": "none", "redirect_uris": [],
                  "response_types": [], "grant_types": ["urn:ietf:params:oauth:grant-type:device_code"]}
        (base / "config.json").write_text(json.dumps({
            "port": provider.port, "issuer": provider.issuer, "accounts": str(base / "accounts.json"),
            "jwks": {"keys": [jwk]}, "clients": [client]}))
        provider.start()
        yield provider
    finally:
        provider.stop()
        shutil.rmtree(base, ignore_errors=True)


# -- the API over HTTP, for the CLI ------------------------------------------------------------


@contextmanager
def serve(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn on a free port of 127.0.0.1 in a thread; yields its URL."""
    import threading

    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, name="api-under-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the API under test did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def run_cli(config: Path, *argv: str, stdin: str = "", env: dict[str, str] | None = None) -> Any:
    """``cloudland ARGV`` in this process (typer's runner) with its own profile file ``config``."""
    from typer.testing import CliRunner

    from cloudland_cli.main import app as cli

    environment = {"CLOUDLAND_CONFIG": str(config), "CLOUDLAND_TOKEN": "", "CLOUDLAND_ENDPOINT": "",
                   **(env or {})}
    return CliRunner().invoke(cli, list(argv), input=stdin, env=environment)


def confirm_device(url: str, login: str) -> None:
    """Do what a person does in a browser with the device flow's verification URL: confirm the
    code, then sign in as ``login`` on the provider's (development) login form."""
    from html.parser import HTMLParser

    import httpx2 as httpx

    class Form(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.action: str | None = None
            self.fields: dict[str, str] = {}

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            named = dict(attrs)
            if tag == "form" and self.action is None:
                self.action = named.get("action")
            if tag == "input" and named.get("name"):
                self.fields[str(named["name"])] = named.get("value") or ""

    with httpx.Client(follow_redirects=True, timeout=10) as browser:
        page = browser.get(url)
        for _ in range(8):
            form = Form()
            form.feed(page.text)
            if form.action is None:
                assert "Sign-in Success" in page.text, page.text[:500]
                return
            if "login" in form.fields:
                form.fields.update(login=login, password="any: the development form checks none")
            page = browser.post(page.url.join(form.action), data=form.fields)
        raise AssertionError(f"the provider's pages did not end in a sign-in: {page.text[:500]}")


LOCAL_PASSWORD = "acme-admin-pw-1"  # the local admin of an organisation ``organisation_with`` makes


def organisation_with(client: Any, operator: dict[str, str], name: str, kind: str, settings: dict[str, Any]) -> int:
    """Organisation ``name`` (its local admin ``<name>-admin``, password LOCAL_PASSWORD) signing its
    people in through the directory of ``kind`` ("ldap", "oidc") with ``settings``; its id."""
    reply = client.post("/api/v1/organisations", headers=operator,
                        json={"name": name, "admin": {"username": f"{name}-admin", "password": LOCAL_PASSWORD}})
    assert reply.status_code == 201, reply.text
    org_id: int = reply.json()["id"]
    reply = client.put(f"/api/v1/organisations/{org_id}/{kind}", headers=operator, json=settings)
    assert reply.status_code == 200, reply.text
    return org_id
