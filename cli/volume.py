"""``cloudland volume``: block storage that outlives VMs (issue 13).

Volumes and snapshots are named by id or name, VMs too. Every change is a job: the command waits
for it (``--no-wait`` returns once it is accepted) and exits 1 unless it succeeded. ``detach``
names the attachment by the volume's current one, so a repeated detach is a success with nothing
to do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer

from cloudland.errors import InvalidRequest
from cloudland_cli.cloud import find_by_ref as find
from cloudland_cli.common import (
    all_pages, connect, finish_job, out, print_json, print_page, print_record, print_table, wait_job,
)
from cloudland_cli.restclient import ApiClient

volume_app = typer.Typer(no_args_is_help=True, help="Volumes: block storage that outlives VMs.")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
NoWaitOpt = Annotated[bool, typer.Option("--no-wait", help="Return once the job is accepted.")]
Ref = Annotated[str, typer.Argument(help="Volume id or name.")]


def _ref(value: str) -> str | int:
    return int(value) if value.isdigit() else value


def _job(client: ApiClient, accepted: dict[str, Any], what: str, no_wait: bool, as_json: bool) -> None:
    """Wait for the job a change started (none: nothing was to do), print it, exit 1 unless it succeeded."""
    job = accepted.get("job")
    if job is None:
        print_json(accepted) if as_json else out.print(f"{what}: nothing to do")
        return
    if no_wait:
        print_json(accepted) if as_json else out.print(f"job {job['id']} {job['action']} of {what} accepted")
        return
    finish_job(wait_job(client, job["id"], show=not as_json), as_json)


@volume_app.command("create")
def volume_create(
    name: Annotated[str, typer.Argument(help="Volume name.")],
    size: Annotated[int | None, typer.Option(help="Size in GiB (from a snapshot: at least its size).")] = None,
    type: Annotated[str | None, typer.Option("--type", help="Volume type [default: the cloud's first].")] = None,
    image: Annotated[str | None, typer.Option(help="Make it with this image's content (id or name).")] = None,
    snapshot: Annotated[str | None, typer.Option(help="Make it from this snapshot (id or name).")] = None,
    vm: Annotated[str | None, typer.Option(help="A local volume goes on this VM's hypervisor.")] = None,
    no_wait: NoWaitOpt = False, as_json: JsonOpt = False,
) -> None:
    """Create a volume: blank, from an image, or from a snapshot."""
    body: dict[str, Any] = {"name": name}
    for key, value in (("size_gib", size), ("type", type)):
        if value is not None:
            body[key] = value
    if image is not None:
        body["image"] = _ref(image)
    if snapshot is not None:
        body["snapshot"] = _ref(snapshot)
    if vm is not None:
        body["instance"] = _ref(vm)
    with connect() as client:
        accepted = client.post("/volumes", body)
        _job(client, accepted, f"volume {accepted['volume']['id']} {name}", no_wait, as_json)


@volume_app.command("list")
def volume_list(as_json: JsonOpt = False) -> None:
    """Every volume of your organisation."""
    with connect() as client:
        volumes = all_pages(client, "/volumes")
    if as_json:
        print_page(volumes)
        return
    print_table(("id", "name", "size", "type", "status", "hypervisor", "attached to"),
                [(v["id"], v["name"], f"{v['size_gib']} GiB", v["type"], v["status"], v["hypervisor_id"],
                  f"vm {v['attachment']['instance_id']} as {v['attachment']['device']}" if v["attachment"] else None)
                 for v in volumes])


@volume_app.command("show")
def volume_show(ref: Ref, as_json: JsonOpt = False) -> None:
    """One volume."""
    with connect() as client:
        volume = find(client, "/volumes", ref, "volume")
    print_json(volume) if as_json else print_record(volume)


@volume_app.command("delete")
def volume_delete(ref: Ref, no_wait: NoWaitOpt = False, as_json: JsonOpt = False) -> None:
    """Delete a volume (refused while attached or snapshotted)."""
    with connect() as client:
        volume = find(client, "/volumes", ref, "volume")
        _job(client, client.delete(f"/volumes/{volume['id']}"), f"volume {volume['id']}", no_wait, as_json)


def _change(ref: str, action: str, body: dict[str, Any], no_wait: bool, as_json: bool,
            what: Callable[[dict[str, Any]], str] = lambda accepted: f"volume {accepted['volume']['id']}") -> None:
    """POST ``body`` to the volume's ``action`` and follow the job it started; ``what`` names it."""
    with connect() as client:
        volume = find(client, "/volumes", ref, "volume")
        accepted = client.post(f"/volumes/{volume['id']}/{action}", body)
        _job(client, accepted, what(accepted), no_wait, as_json)


@volume_app.command("extend")
def volume_extend(ref: Ref, size: Annotated[int, typer.Option(help="New size in GiB (larger).")],
                  no_wait: NoWaitOpt = False, as_json: JsonOpt = False) -> None:
    """Grow a volume; live when it is attached to a running VM."""
    _change(ref, "extend", {"size_gib": size}, no_wait, as_json)


def _attached(accepted: dict[str, Any]) -> str:
    attachment = accepted["volume"]["attachment"]
    return f"volume {accepted['volume']['id']} as {attachment['device']} (attachment {attachment['id']})"


@volume_app.command("attach")
def volume_attach(ref: Ref, vm: Annotated[str, typer.Option(help="VM id or name.")],
                  no_wait: NoWaitOpt = False, as_json: JsonOpt = False) -> None:
    """Attach a volume to a VM; its device name (vdb, vdc...) is chosen for it."""
    _change(ref, "attachments", {"instance": _ref(vm)}, no_wait, as_json, _attached)


@volume_app.command("detach")
def volume_detach(ref: Ref, no_wait: NoWaitOpt = False, as_json: JsonOpt = False) -> None:
    """Detach a volume from its VM (already detached: nothing to do)."""
    with connect() as client:
        volume = find(client, "/volumes", ref, "volume")
        if volume["attachment"] is None:
            print_json({"volume": volume, "job": None}) if as_json else out.print(
                f"volume {volume['id']}: not attached, nothing to do")
            return
        attachment = volume["attachment"]["id"]
        accepted = client.delete(f"/volumes/{volume['id']}/attachments/{attachment}")
        _job(client, accepted, f"volume {volume['id']} (attachment {attachment})", no_wait, as_json)


@volume_app.command("snapshot")
def volume_snapshot(ref: Ref, name: Annotated[str, typer.Option(help="Snapshot name.")],
                    no_wait: NoWaitOpt = False, as_json: JsonOpt = False) -> None:
    """Snapshot a volume."""
    _change(ref, "snapshots", {"name": name}, no_wait, as_json,
            lambda accepted: f"snapshot {accepted['snapshot']['id']} {name}")


@volume_app.command("snapshots")
def volume_snapshots(ref: Ref, as_json: JsonOpt = False) -> None:
    """A volume's snapshots."""
    with connect() as client:
        volume = find(client, "/volumes", ref, "volume")
        snapshots = all_pages(client, f"/volumes/{volume['id']}/snapshots")
    if as_json:
        print_page(snapshots)
        return
    print_table(("id", "name", "size", "status"),
                [(s["id"], s["name"], f"{s['size_gib']} GiB", s["status"]) for s in snapshots])


@volume_app.command("snapshot-delete")
def volume_snapshot_delete(ref: Ref, snapshot: Annotated[str, typer.Argument(help="Snapshot id or name.")],
                           no_wait: NoWaitOpt = False, as_json: JsonOpt = False) -> None:
    """Delete a snapshot of a volume."""
    with connect() as client:
        volume = find(client, "/volumes", ref, "volume")
        snapshots = all_pages(client, f"/volumes/{volume['id']}/snapshots")
        found = [s for s in snapshots if str(s["id"]) == snapshot or s["name"] == snapshot]
        if not found:
            raise InvalidRequest(f"volume {volume['id']} has no snapshot {snapshot!r}")
        accepted = client.delete(f"/volumes/{volume['id']}/snapshots/{found[0]['id']}")
        _job(client, accepted, f"snapshot {found[0]['id']}", no_wait, as_json)
