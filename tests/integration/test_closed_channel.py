"""Issue 15, must show 1: as another local user, nothing can drive the tree or read its state.

A real cloud runs as root (a tree of 4 hypervisors and the API, one state directory, its CA in
``<state>/pki`` as ``cloudland up`` makes it), in a directory that was world-readable before
it started (as an old ``var`` would be). Then a process running as ``nobody`` tries, and
reports each attempt:

- to list the state directory and read what is in it: the database, the API's signing key,
  the admin's credentials, the CA's and the control plane's keys, a rank's log, the root's output;
- to call the root's gRPC service (``Dispatch vm.list``, ``vm.delete``, ``Health``) in plain
  text, and over TLS with a CA and a control certificate of its own making;
- to finish a TLS handshake with the gRPC port and with the rendezvous, presenting its own
  control or node certificate (without checking the root's, so that only the root's check
  decides);
- to join the rendezvous as a host (``HostHello``) and to ask it where a leaf's parent is
  (``LocateRequest``), in plain text.

Every attempt must be refused, and the root must not have taken the intruder for a host. The
MPI links themselves are not attempted here: docs/architecture.md says what guards them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc
import pytest

from cloudland import pki
from cloudland.client import RootClient
from cloudland_launcher.harness import start_tree, stop_tree, wait_for
from cloudland_proto.v1 import root_pb2
from tests.integration.cloud import Cloud

SECRETS = ("cloudland.db", "api-signing.key", "admin-credentials", "pki/ca.key", "pki/control.key",
           "pki/node.key", "pki/root.key", "logs/root.log", "root.out", "api.out")

INTRUDER = r'''
import json, os, socket, ssl, struct, sys, tempfile
from pathlib import Path

import grpc
from cloudland import pki
from cloudland_proto.v1 import envelope_pb2 as pb, link_pb2 as lpb, root_pb2, root_pb2_grpc

args = json.loads(sys.argv[1])
state, grpc_address, rendezvous = Path(args["state"]), args["grpc"], args["rendezvous"]
attempts = []


def tried(how, attempt):
    try:
        result = attempt()
    except Exception as exc:  # refused: what said no
        attempts.append({"how": how, "refused": True, "detail": " ".join(f"{type(exc).__name__}: {exc}".split())[:200]})
    else:
        attempts.append({"how": how, "refused": False, "detail": repr(result)[:240]})


tried("list the state directory", lambda: os.listdir(state))
for name in args["secrets"]:
    tried(f"read {name} in the state directory", lambda name=name: (state / name).read_bytes()[:16])

mine = pki.ensure(Path(tempfile.mkdtemp()) / "pki")  # a CA and certificates of our own making


def call(channel, what):
    stub = root_pb2_grpc.RootStub(channel)
    try:
        if what == "Health":
            return stub.Health(root_pb2.HealthRequest(), timeout=5)
        command = pb.Command(job_id=f"intruder-{what}", operation=what, targets=pb.Targets(all=True))
        return list(stub.Dispatch(root_pb2.DispatchRequest(command=command), timeout=5))
    finally:
        channel.close()


def own_tls():
    ca, cert, key = ((mine / f).read_bytes() for f in ("ca.pem", "control.pem", "control.key"))
    return grpc.secure_channel(grpc_address, grpc.ssl_channel_credentials(ca, key, cert),
                               options=[("grpc.ssl_target_name_override", pki.ROOT_NAME)])


for what in ("vm.list", "vm.delete", "Health"):
    tried(f"gRPC {what} in plain text", lambda what=what: call(grpc.insecure_channel(grpc_address), what))
    tried(f"gRPC {what} over TLS with our own CA's control certificate", lambda what=what: call(own_tls(), what))


LOCATE = {"locate": lpb.LocateRequest(node=pb.NodeId(first_leaf=0, end_leaf=1), host="intruder")}


def frame(**body):
    data = lpb.Frame(version=pb.WIRE_VERSION_1, **body).SerializeToString()
    return struct.pack("!I", len(data)) + data


def answer(sock):
    """The rendezvous's answer: a frame, or what shows there is none (a refusal)."""
    head = sock.recv(4)
    if len(head) < 4:
        raise ConnectionError(f"closed by the server ({head!r})")
    (size,) = struct.unpack("!I", head)
    if size > 1 << 20:
        raise ConnectionError(f"no frame: {head!r} is a TLS alert or garbage")
    reply = lpb.Frame()
    reply.ParseFromString(sock.recv(size))
    return reply.WhichOneof("body")


def handshake(address, role, grpc_port):
    """TLS with our own certificate of ``role``, not checking the server's: only its check decides."""
    host, _, port = address.rpartition(":")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.load_cert_chain(mine / f"{role}.pem", mine / f"{role}.key")
    if grpc_port:
        ctx.set_alpn_protocols(["h2"])
    with socket.create_connection((host, int(port)), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
        # TLS 1.3: the server's verdict on our certificate arrives with its first bytes.
        if grpc_port:
            tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            data = tls.recv(64)  # its SETTINGS, if it took us
            if not data:
                raise ConnectionError("closed by the server")
            return data
        tls.sendall(frame(**LOCATE))
        return answer(tls)


def plain(address, **body):
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(frame(**body))
        return answer(sock)


tried("TLS with the gRPC port, our own control certificate", lambda: handshake(grpc_address, "control", True))
tried("TLS with the rendezvous and a locate, our own node certificate",
      lambda: handshake(rendezvous, "node", False))
tried("join the rendezvous as host 'intruder' in plain text",
      lambda: plain(rendezvous, host_hello=lpb.HostHello(host="intruder", address="127.0.0.1", leaves=0, pid=1)))
tried("locate leaf 0's parent on the rendezvous in plain text", lambda: plain(rendezvous, **LOCATE))
print(json.dumps(attempts))
'''


@pytest.fixture
def cloud(monkeypatch: pytest.MonkeyPatch):
    """A tree and the API in one state directory, its CA in it, under a world-searchable parent."""
    base = Path(tempfile.mkdtemp(prefix="cloudland-closed-", dir="/var/tmp"))
    os.chmod(base, 0o755)  # so that only the state directory's own modes keep "nobody" out
    state = base / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o755)  # as an old `var` was: the root closes it
    monkeypatch.delenv("CLOUDLAND_PKI", raising=False)  # the cloud's own CA, in <state>/pki
    tree = cloud = None
    try:
        tree = start_tree(state, 4, 1, 32, 0.5)
        cloud = Cloud(tree, state, f"sqlite:///{state / 'cloudland.db'}")
        cloud.start_api()
        yield cloud
    finally:
        if cloud is not None:
            cloud.stop_api()
        if tree is not None:
            stop_tree(tree)
        shutil.rmtree(base, ignore_errors=True)


# What the intruder imports, copied where nobody may read it: the venv and the checkout can sit
# under a directory only root may enter (a CI clone in a 0700 temporary directory).
INTRUDER_PACKAGES = ("grpc", "google", "typing_extensions", "cryptography", "cffi", "_cffi_backend", "cloudland",
                     "cloudland_proto")


def _readable_copy(dest: Path) -> None:
    for name in INTRUDER_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None:
            continue
        if spec.submodule_search_locations:  # a package, maybe a namespace one spread over several dirs
            for src in spec.submodule_search_locations:
                shutil.copytree(src, dest / name, dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__", "*.proto", "*.pyi"))
        elif spec.origin:
            shutil.copy2(spec.origin, dest / Path(spec.origin).name)
    for path in [dest, *dest.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


def as_nobody(code: str, arg: dict[str, object]) -> subprocess.CompletedProcess[str]:
    """Run ``code`` as nobody, with our packages (CloudLand, gRPC, cryptography) importable.

    The system's interpreter of our version: the venv's links to one that may sit where
    nobody may not go (/root/.pyenv here); our packages are copied where nobody can read them.
    """
    python = Path(f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}")
    if not python.exists():
        pytest.skip(f"no {python} for nobody to run")
    site = Path(tempfile.mkdtemp(prefix="cloudland-intruder-", dir="/var/tmp"))
    try:
        _readable_copy(site)
        prelude = f"import sys\nsys.path.insert(0, {str(site)!r})\n"
        env = {"PATH": "/usr/bin:/bin", "HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1"}
        return subprocess.run([str(python), "-c", prelude + code, json.dumps(arg)], user="nobody",
                              group="nogroup", extra_groups=[], env=env, cwd="/", capture_output=True, text=True,
                              timeout=120)
    finally:
        shutil.rmtree(site, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a process as another user")
def test_another_local_user_can_neither_drive_the_tree_nor_read_its_state(cloud: Cloud):
    state, tree = cloud.state_dir, cloud.tree
    rendezvous = tree.client.hosts().listen
    hosts_before = {h.name for h in tree.client.hosts().hosts}

    # The owner's view: the state directory 0700, everything in it its owner's alone.
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    loose = [f"{p.relative_to(state)} {stat.S_IMODE(p.stat().st_mode):o}" for p in state.rglob("*")
             if not p.is_symlink() and stat.S_IMODE(p.stat().st_mode) & 0o077]
    assert not loose, f"files or directories open to others: {loose}"
    for name in SECRETS:
        assert (state / name).exists(), f"{name} should exist for the intruder to try"

    done = as_nobody(INTRUDER, {"state": str(state), "grpc": tree.endpoint, "rendezvous": rendezvous,
                                "secrets": list(SECRETS)})
    assert done.returncode == 0, done.stderr[-3000:]
    attempts = json.loads(done.stdout.strip().splitlines()[-1])
    print("\nas nobody (uid 65534):")
    for attempt in attempts:
        print(f"  {'refused' if attempt['refused'] else 'ALLOWED'}: {attempt['how']} -> {attempt['detail']}")
    assert len(attempts) == 1 + len(SECRETS) + 6 + 4
    allowed = [a["how"] for a in attempts if not a["refused"]]
    assert not allowed, f"another local user could: {allowed}"

    # The root took no intruder for a host, and said it refused the handshakes; the tree is whole.
    assert {h.name for h in tree.client.hosts().hosts} == hosts_before
    wait_for(lambda: "rendezvous_rejected" in (state / "logs" / "root.log").read_text(), 5,
             "the root to log the refused rendezvous")
    assert tree.client.topology().ready and len(tree.client.run("ping", timeout=10)) == 4


def test_a_hosts_node_certificate_cannot_drive_the_tree(cloud: Cloud):
    """Only the control certificate calls the root: a hypervisor host's node certificate (which
    every host holds) gets PERMISSION_DENIED, and a client of another CA no answer at all."""
    tree = cloud.tree
    assert tree.pki_dir is not None
    creds = {f: (tree.pki_dir / f).read_bytes() for f in ("ca.pem", "node.pem", "node.key")}
    channel = grpc.secure_channel(tree.endpoint, grpc.ssl_channel_credentials(
        creds["ca.pem"], creds["node.key"], creds["node.pem"]), options=[("grpc.ssl_target_name_override",
                                                                          pki.ROOT_NAME)])
    with pytest.raises(grpc.RpcError) as refused:
        from cloudland_proto.v1 import root_pb2_grpc

        root_pb2_grpc.RootStub(channel).Topology(root_pb2.TopologyRequest(), timeout=5)
    channel.close()
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "control plane" in refused.value.details()

    other = pki.ensure(Path(tempfile.mkdtemp()) / "pki")
    try:
        with RootClient(tree.endpoint, other) as stranger:
            with pytest.raises(Exception, match="cannot reach the root|UNAVAILABLE"):
                stranger.topology(timeout=3)
    finally:
        shutil.rmtree(other.parent, ignore_errors=True)
