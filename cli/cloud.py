"""The CLI's REST commands: configure, login, flavor, image, key and job.

VM commands live in vm.py, hypervisor commands in hyper.py; exit codes and shared
output in common.py.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from cloudland.errors import InvalidRequest
from cloudland_cli.common import (
    EXIT_USAGE,
    all_pages,
    api_errors,
    connect,
    err,
    fail,
    finish_job,
    job_record,
    job_subject,
    out,
    print_json,
    print_page,
    print_record,
    print_table,
    styled,
    wait_job,
)
from cloudland_cli.restclient import ApiClient
from cloudland_cli.settings import CliConfig, ProfileStore, normalise_endpoint
from cloudland_cli.vm import watch_and_report

DEFAULT_CREDENTIALS = Path("var/admin-credentials")  # where `make run` / `cloudland up` put them
QCOW2_MAGIC = b"QFI\xfb"

flavor_app = typer.Typer(no_args_is_help=True, help="VM sizes.")
image_app = typer.Typer(no_args_is_help=True, help="Disk images.")
key_app = typer.Typer(no_args_is_help=True, help="SSH public keys.")
job_app = typer.Typer(no_args_is_help=True, help="Jobs: one action on one resource (an instance, an image) each.")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


# -- configure and login ------------------------------------------------------------------


def configure(
    profile: Annotated[str | None, typer.Option(help="The profile to set or show [default: the one in use].")] = None,
    endpoint: Annotated[str | None, typer.Option(help="The API's URL, e.g. http://127.0.0.1:8080.")] = None,
    grpc: Annotated[str | None, typer.Option(help="The root's host:port, for `tree` and `cluster`.")] = None,
    pki: Annotated[str | None, typer.Option(
        help="The directory of that root's ca.pem, control.pem and control.key.")] = None,
    use: Annotated[bool, typer.Option("--use", help="Make it the profile used when none is chosen.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Set a profile's API endpoint (and root address); without options, show it.

    A changed endpoint drops the profile's stored token. Choose a profile per command with
    `cloudland --profile NAME ...` or CLOUDLAND_PROFILE; CLOUDLAND_ENDPOINT overrides its endpoint.
    """
    with api_errors():
        store = ProfileStore.load()
        name = profile or store.selected()
        config = store.profiles.get(name) or CliConfig(profile=name)
        if endpoint is not None:
            url = normalise_endpoint(endpoint)
            if url != config.endpoint:
                config = CliConfig(endpoint=url, grpc=config.grpc, pki=config.pki, profile=name)
        if grpc is not None:
            config.grpc = grpc.strip() or None
        if pki is not None:
            config.pki = os.path.abspath(pki.strip()) if pki.strip() else None
        if endpoint is not None or grpc is not None or pki is not None or use:
            store.profiles[name] = config
            store.current = name if use else store.current
            store.save()
    effective = config.effective()
    shown = {"config": str(store.path), "profile": name, "current": name == store.current,
             "endpoint": effective.endpoint, "grpc": effective.grpc or "-",
             "pki": effective.pki or "-", "logged_in": bool(effective.token),
             "expires_at": effective.expires_at, "profiles": ", ".join(sorted({*store.profiles, name}))}
    if as_json:
        print_json(shown)
    else:
        print_record(shown)


def read_credentials(path: Path) -> tuple[str | None, str]:
    """``(username, password)`` from an admin-credentials file (``username=`` / ``password=`` lines)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise InvalidRequest(f"cannot read credentials {path}: {exc.strerror or exc}") from exc
    values = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    if not values.get("password"):
        raise InvalidRequest(f"{path} has no password= line")
    return values.get("username") or None, values["password"]


def credentials_for(username: str | None, credentials: Path | None) -> tuple[str | None, str | None]:
    """``(username, password)`` of the credentials file to log in with, or ``(None, None)`` to ask.

    An explicit ``--credentials`` file is read as it is. The default file (``make run``'s first
    admin) is read only when it is that user's: ``login --username alice`` beside it asks for alice's
    password instead of sending the admin's under her name (README, "Tenants").
    """
    if credentials is not None:
        return read_credentials(credentials)
    if not DEFAULT_CREDENTIALS.exists():
        return None, None
    file_user, password = read_credentials(DEFAULT_CREDENTIALS)
    if username is not None and username != (file_user or "admin"):
        return None, None
    return file_user, password


def login(
    username: Annotated[str | None, typer.Option(
        help="User name [default: admin, or the credentials file's]; another user than the file's is asked for "
             "a password.")] = None,
    password_stdin: Annotated[bool, typer.Option("--password-stdin", help="Read the password from stdin.")] = False,
    credentials: Annotated[Path | None, typer.Option(
        help=f"An admin-credentials file [default: {DEFAULT_CREDENTIALS} if it exists].")] = None,
    organisation: Annotated[str | None, typer.Option(help="Organisation to act in.")] = None,
    endpoint: Annotated[str | None, typer.Option(help="Set the endpoint too (as configure does).")] = None,
    lifetime: Annotated[int | None, typer.Option(
        min=1, help="Seconds the token lives [default: the API's; at most its ceiling].")] = None,
    oidc: Annotated[bool, typer.Option("--oidc", help=(
        "Sign in with the organisation's OpenID provider: open the URL shown, confirm the code."))] = False,
) -> None:
    """Log in and store the bearer token in the profile (mode 0600).

    With --organisation, an organisation's LDAP users give their directory's username and password;
    with --oidc, its OpenID provider signs you in (the device flow: any browser, anywhere)."""
    if oidc:
        _login_oidc(organisation, endpoint, lifetime, username, password_stdin, credentials)
        return
    with api_errors():
        if password_stdin and credentials is not None:
            raise InvalidRequest("use either --password-stdin or --credentials, not both")
        if password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            file_user, password = credentials_for(username, credentials)
            username = username or file_user
            if password is None:
                password = typer.prompt("password", hide_input=True, err=True)
        if not password:
            raise InvalidRequest("empty password")
        username = username or "admin"
        stored = CliConfig.load()
        url = normalise_endpoint(endpoint) if endpoint is not None else stored.effective().endpoint
        config = CliConfig(endpoint=url, grpc=stored.grpc, pki=stored.pki, profile=stored.profile)
        with ApiClient(config.endpoint) as client:
            reply = client.login(username, password, organisation, lifetime)
        config.token, config.expires_at = reply["token"], str(reply["expires_at"])
        path = config.save()
    out.print(f"logged in to {config.endpoint} as {username}; token stored in {path} "
              f"(profile {config.profile}) until {config.expires_at}")


def _login_oidc(organisation: str | None, endpoint: str | None, lifetime: int | None, *password_options: Any) -> None:
    from cloudland_cli.oidc import device_sign_in

    with api_errors():
        if any(password_options):
            raise InvalidRequest("--oidc takes no --username, --password-stdin or --credentials: the provider asks")
        if not organisation:
            raise InvalidRequest("--oidc needs --organisation: whose OpenID provider to sign in with")
        stored = CliConfig.load()
        url = normalise_endpoint(endpoint) if endpoint is not None else stored.effective().endpoint
        config = CliConfig(endpoint=url, grpc=stored.grpc, pki=stored.pki, profile=stored.profile)
        with ApiClient(config.endpoint) as client:
            reply = device_sign_in(client, organisation, lifetime, lambda text: err.print(text, soft_wrap=True))
        config.token, config.expires_at = reply["token"], str(reply["expires_at"])
        path = config.save()
    out.print(f"logged in to {config.endpoint} through {organisation!r}'s OpenID provider; token stored in {path} "
              f"(profile {config.profile}) until {config.expires_at}")


# -- flavors --------------------------------------------------------------------------------


@flavor_app.command("list")
def flavor_list(as_json: JsonOpt = False) -> None:
    """Every flavor of your organisation."""
    with connect() as client:
        flavors = all_pages(client, "/flavors")
    if as_json:
        print_page(flavors)
        return
    print_table(("id", "name", "vcpus", "memory MiB", "disk GiB"),
                [(f["id"], f["name"], f["vcpus"], f["memory_mib"], f["disk_gib"]) for f in flavors])


@flavor_app.command("create")
def flavor_create(
    name: Annotated[str, typer.Argument(help="Flavor name.")],
    vcpus: Annotated[int, typer.Option(help="Virtual CPUs.")],
    memory_mib: Annotated[int, typer.Option(help="Memory in MiB.")],
    disk_gib: Annotated[int, typer.Option(help="Disk in GiB.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Create a flavor."""
    with connect() as client:
        flavor = client.post("/flavors", {"name": name, "vcpus": vcpus, "memory_mib": memory_mib, "disk_gib": disk_gib})
    print_json(flavor) if as_json else out.print(f"flavor {flavor['id']} {flavor['name']} created")


@flavor_app.command("delete")
def flavor_delete(ref: Annotated[str, typer.Argument(help="Flavor id or name.")]) -> None:
    """Delete a flavor."""
    with connect() as client:
        flavor = find_by_ref(client, "/flavors", ref, "flavor")
        client.delete(f"/flavors/{flavor['id']}")
    out.print(f"flavor {flavor['id']} {flavor['name']} deleted")


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


# -- images ---------------------------------------------------------------------------------


def _sha256(file: Path) -> str:
    digest = hashlib.sha256()
    with file.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _guess_format(file: Path) -> str:
    with file.open("rb") as fh:
        return "qcow2" if fh.read(4) == QCOW2_MAGIC else "raw"


@image_app.command("upload")
def image_upload(
    file: Annotated[Path, typer.Argument(help="The image file.")],
    name: Annotated[str, typer.Option(help="Image name.")],
    arch: Annotated[str, typer.Option(help="x86_64, i686 or aarch64.")] = "x86_64",
    disk_format: Annotated[str | None, typer.Option("--format", help="qcow2 or raw [default: from the file].")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Create an image and upload FILE into it, with a progress bar; the server checks its sha256."""
    if not file.is_file():
        fail(EXIT_USAGE, f"{file} is not a readable file")
    size = file.stat().st_size
    with connect() as client:
        fmt = disk_format or _guess_format(file)
        with err.status(f"hashing {file}…"):
            sha256 = _sha256(file)
        image = client.post("/images", {"name": name, "arch": arch, "disk_format": fmt})
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

        columns = (TextColumn(f"uploading {file.name}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
        try:
            with Progress(*columns, console=err, transient=True) as progress:
                task = progress.add_task("upload", total=size)
                image = client.upload(f"/images/{image['id']}/file", file, {"X-Image-Sha256": sha256},
                                      progress=lambda sent: progress.update(task, completed=sent))
        except BaseException:
            # A queued image with no bytes is of no use to anyone: do not leave it behind.
            try:
                client.delete(f"/images/{image['id']}")
            except Exception:  # noqa: BLE001 - the upload's error is the one to report
                pass
            raise
    if as_json:
        print_json(image)
    else:
        out.print(f"image {image['id']} {image['name']} {image['status']}, {size} bytes, sha256 {image.get('sha256')}")


@image_app.command("list")
def image_list(as_json: JsonOpt = False) -> None:
    """Every image of your organisation."""
    with connect() as client:
        images = all_pages(client, "/images")
    if as_json:
        print_page(images)
        return
    print_table(("id", "name", "arch", "format", "status", "size", "sha256"),
                [(i["id"], i["name"], i["arch"], i["disk_format"], styled(i["status"]), i["size_bytes"],
                  (i.get("sha256") or "-")[:16]) for i in images])


@image_app.command("delete")
def image_delete(ref: Annotated[str, typer.Argument(help="Image id or name.")]) -> None:
    """Delete an image."""
    with connect() as client:
        image = find_by_ref(client, "/images", ref, "image")
        client.delete(f"/images/{image['id']}")
    out.print(f"image {image['id']} {image['name']} deleted")


# -- ssh keys -------------------------------------------------------------------------------


@key_app.command("add")
def key_add(
    name: Annotated[str, typer.Argument(help="Key name.")],
    file: Annotated[str, typer.Argument(help="Public key file, or - for stdin.")],
    as_json: JsonOpt = False,
) -> None:
    """Add an OpenSSH public key."""
    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        fail(EXIT_USAGE, f"cannot read {file}: {exc}")
    with connect() as client:
        key = client.post("/ssh-keys", {"name": name, "public_key": text.strip()})
    print_json(key) if as_json else out.print(f"key {key['id']} {key['name']} added: {key['fingerprint']}")


@key_app.command("list")
def key_list(as_json: JsonOpt = False) -> None:
    """Every SSH key of your organisation."""
    with connect() as client:
        keys = all_pages(client, "/ssh-keys")
    if as_json:
        print_page(keys)
        return
    print_table(("id", "name", "fingerprint"), [(k["id"], k["name"], k["fingerprint"]) for k in keys])


@key_app.command("delete")
def key_delete(ref: Annotated[str, typer.Argument(help="Key id or name.")]) -> None:
    """Delete an SSH key."""
    with connect() as client:
        key = find_by_ref(client, "/ssh-keys", ref, "key")
        client.delete(f"/ssh-keys/{key['id']}")
    out.print(f"key {key['id']} {key['name']} deleted")


# -- jobs -----------------------------------------------------------------------------------


@job_app.command("list")
def job_list(
    batch: Annotated[str | None, typer.Option(help="Only this batch's jobs.")] = None,
    state: Annotated[str | None, typer.Option(help="pending, dispatched, succeeded, failed or timeout.")] = None,
    instance: Annotated[int | None, typer.Option(help="Only this instance's jobs.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500, help="Newest this many.")] = 50,
    after: Annotated[str | None, typer.Option(help="The next_after of the previous page (--json shows it).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Jobs, newest first: one page, as the API pages them."""
    with connect() as client:
        page = client.get("/jobs", batch=batch, state=state, instance=instance, limit=limit, after=after)
    if as_json:
        print_json(page)
        return
    print_table(("id", "batch", "kind", "action", "subject", "hypervisor", "state", "reason", "updated"),
                [(j["id"], j["batch"], j["kind"], j["action"], job_subject(j), j["hypervisor_id"], styled(j["state"]),
                  j.get("reason"), j["updated_at"]) for j in page["items"]], whole=("id",))
    if page.get("counts"):
        out.print("  ".join(f"{k} {v}" for k, v in page["counts"].items()))


@job_app.command("show")
def job_show(job_id: Annotated[str, typer.Argument(help="Job id.")], as_json: JsonOpt = False) -> None:
    """One job."""
    with connect() as client:
        job = client.get(f"/jobs/{job_id}")
    print_json(job) if as_json else print_record(job_record(job))


@job_app.command("watch")
def job_watch(
    job_id: Annotated[str | None, typer.Argument(help="Job id.")] = None,
    batch: Annotated[str | None, typer.Option(help="Watch every job of this batch instead.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Wait until a job (or every job of --batch) has ended; exit 1 if any failed."""
    if (job_id is None) == (batch is None):
        fail(EXIT_USAGE, "give a job id or --batch, one of the two")
    if job_id is not None:
        with connect() as client:
            job = wait_job(client, job_id, show=not as_json)
        finish_job(job, as_json)
        return
    assert batch is not None
    watch_and_report([batch], None, "ended", as_json)
