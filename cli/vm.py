"""``cloudland vm``: create, list, show and act on VMs, with live progress until their jobs end."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from cloudland.errors import InvalidRequest, NotFound
from cloudland_cli.common import (
    EXIT_FAILED,
    EXIT_USAGE,
    batch_counts,
    confirmed,
    connect,
    fail,
    finish_job,
    out,
    print_json,
    print_page,
    print_outcome,
    print_record,
    print_table,
    styled,
    wait_job,
    watch_batches,
)
from cloudland_cli.restclient import ApiClient, find_by_ref

MAX_BATCH = 1000  # ids per POST /instances/actions (BatchAction's max_length)
_PAST = {"start": "started", "stop": "stopped", "reboot": "rebooted", "delete": "deleted"}

vm_app = typer.Typer(no_args_is_help=True, help="Virtual machines.")

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
NoWaitOpt = Annotated[bool, typer.Option("--no-wait", help="Return once the jobs are accepted.")]


def _ref(value: str | int) -> str | int:
    """A flavor/image/key reference as the API takes it: an int id or a name."""
    return int(value) if isinstance(value, str) and value.isdigit() else value


def list_instances(client: ApiClient, **filters: Any) -> list[dict[str, Any]]:
    """Every instance matching the filters, across all pages."""
    return list(client.iter_after("/instances", **filters))


def resolve_instance(client: ApiClient, ref: str) -> dict[str, Any]:
    """The one instance with that id or name; NotFound or InvalidRequest (ambiguous) otherwise."""
    if ref.isdigit():
        found: dict[str, Any] = client.get(f"/instances/{ref}")
        return found
    if "*" in ref:
        raise InvalidRequest(f"{ref!r} is a pattern: use --name for patterns")
    matches = [i for i in list_instances(client, name=ref) if i["name"] == ref]
    if not matches:
        raise NotFound(f"no VM named {ref!r}")
    if len(matches) > 1:
        raise InvalidRequest(f"{len(matches)} VMs are named {ref!r}; use an id: "
                             + ", ".join(str(i["id"]) for i in matches))
    return matches[0]


def watch_and_report(batches: Sequence[str], total: int | None, verb: str, as_json: bool) -> None:
    """Progress until every job of ``batches`` ended, then the summary; exit 1 if any failed."""
    started = time.monotonic()
    with connect() as client:
        if total is None:
            total = sum(sum(batch_counts(client, b).values()) for b in batches)
        outcome = watch_batches(client, batches, total, verb.removesuffix("ed") + "ing", show=not as_json)
    if as_json:
        print_json({"batches": list(batches), "counts": dict(outcome.counts), "reasons": dict(outcome.reasons)})
    else:
        print_outcome(outcome, verb, time.monotonic() - started)
    if outcome.failed:
        raise typer.Exit(EXIT_FAILED)


@vm_app.command("create")
def vm_create(
    name: Annotated[str, typer.Argument(help="VM name; name-1..name-N with --count N.")],
    flavor: Annotated[str, typer.Option(help="Flavor id or name.")],
    image: Annotated[str | None, typer.Option(help="Image id or name (or --boot-volume).")] = None,
    boot_volume: Annotated[str | None, typer.Option(
        help="Volume id or name to boot from: the VM's root disk, kept when the VM is deleted.")] = None,
    boot_volume_size: Annotated[int | None, typer.Option(
        min=1, help="With --image: each VM boots from a new volume of this many GiB made from the image "
                    "(named <VM name>-boot).")] = None,
    boot_volume_type: Annotated[str | None, typer.Option(
        help="With --boot-volume-size: the new volumes' type [default: the cloud's first].")] = None,
    delete_on_termination: Annotated[bool, typer.Option(
        "--delete-on-termination/--keep-volume",
        help="With --boot-volume or --boot-volume-size: delete the volume with the VM, or keep it.")] = False,
    key: Annotated[str | None, typer.Option(help="SSH key id or name.")] = None,
    count: Annotated[int, typer.Option(min=1, max=MAX_BATCH, help="How many VMs.")] = 1,
    user_data: Annotated[Path | None, typer.Option(
        help="A file given to each VM on its config drive (cloud-init user data, up to 64 KiB).")] = None,
    network: Annotated[list[str] | None, typer.Option(
        help="A subnet (id or name) to give each VM a NIC on; repeatable, the first is the primary NIC.")] = None,
    secgroup: Annotated[list[str] | None, typer.Option(
        "--secgroup", help="A security group (id or name) of every NIC; repeatable [default: the default group].")]
    = None,
    no_wait: NoWaitOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Create VMs (from an image, onto new volumes made from an image, or one from a volume) and
    follow their jobs with a progress bar; exit 1 if any failed."""
    if (image is None) == (boot_volume is None):
        fail(EXIT_USAGE, "give exactly one of --image and --boot-volume")
    if image is None and (boot_volume_size is not None or boot_volume_type is not None):
        fail(EXIT_USAGE, "--boot-volume-size and --boot-volume-type make a new volume from --image")
    if boot_volume_type is not None and boot_volume_size is None:
        fail(EXIT_USAGE, "--boot-volume-type needs --boot-volume-size")
    body: dict[str, Any] = {"name": name, "flavor": _ref(flavor), "count": count}
    if image is not None:
        body["image"] = _ref(image)
        if boot_volume_size is not None:
            new = {"size_gib": boot_volume_size} | ({"type": boot_volume_type} if boot_volume_type else {})
            body |= {"new_boot_volume": new, "delete_on_termination": delete_on_termination}
    elif boot_volume is not None:
        body |= {"boot_volume": _ref(boot_volume), "delete_on_termination": delete_on_termination}
    if network:
        body["networks"] = [_ref(subnet) for subnet in network]
    if secgroup:
        body["security_groups"] = [_ref(group) for group in secgroup]
    if key is not None:
        body["ssh_key"] = _ref(key)
    if user_data is not None:
        try:
            body["user_data"] = user_data.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            fail(EXIT_USAGE, f"cannot read the user data {user_data}: {exc}")
    with connect() as client:
        accepted = client.post("/instances", body)
    if no_wait:
        if as_json:
            print_json(accepted)
        else:
            out.print(f"batch {accepted['batch']}: {len(accepted['jobs'])} VMs accepted; "
                      f"follow with `cloudland job watch --batch {accepted['batch']}`")
        return
    if not as_json:
        out.print(f"batch {accepted['batch']}: creating {len(accepted['jobs'])} VMs")
    watch_and_report([accepted["batch"]], len(accepted["jobs"]), "created", as_json)


@vm_app.command("list")
def vm_list(
    status: Annotated[str | None, typer.Option(help="Only VMs in this status.")] = None,
    name: Annotated[str | None, typer.Option(help="Only names matching this glob (web-*).")] = None,
    hypervisor: Annotated[int | None, typer.Option(help="Only VMs on this hypervisor.")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Every VM of your organisation (all pages)."""
    with connect() as client:
        vms = list_instances(client, status=status, name=name, hypervisor=hypervisor)
    if as_json:
        print_page(vms)
        return
    print_table(("id", "name", "status", "hypervisor", "vcpus", "memory MiB", "reason"),
                [(v["id"], v["name"], styled(v["status"]), v["hypervisor_id"], v["vcpus"], v["memory_mib"],
                  v.get("status_reason")) for v in vms])
    out.print(f"{len(vms)} VMs")


@vm_app.command("show")
def vm_show(ref: Annotated[str, typer.Argument(help="VM id or name.")], as_json: JsonOpt = False) -> None:
    """One VM."""
    with connect() as client:
        vm = resolve_instance(client, ref)
    print_json(vm) if as_json else print_record(vm)


def _select(client: ApiClient, refs: Sequence[str], name: str | None, status: str | None, every: bool) -> list[int]:
    """Instance ids named by ``refs`` plus those matching the filters; refuses an empty selection."""
    if not refs and name is None and status is None and not every:
        raise InvalidRequest("no VMs selected: name them, filter with --name/--status, or pass --all for every VM")
    ids = {resolve_instance(client, ref)["id"] for ref in refs}
    if name is not None or status is not None or (every and not refs):
        ids.update(v["id"] for v in list_instances(client, name=name, status=status))
    if not ids:
        raise InvalidRequest("no VMs match the selection")
    return sorted(ids)


def _act(action: str, refs: list[str] | None, name: str | None, status: str | None, every: bool,
         force: bool, no_wait: bool, as_json: bool, yes: bool = True) -> None:
    with connect() as client:
        ids = _select(client, refs or [], name, status, every)
        chosen_by_filter = name is not None or status is not None or every
        if chosen_by_filter and not confirmed(f"{action.capitalize()} {len(ids)} VMs?", f"{action} {len(ids)} VMs", yes):
            fail(EXIT_USAGE, f"{action} of {len(ids)} VMs cancelled")
        batches = [client.post("/instances/actions",
                               {"action": action, "ids": ids[i:i + MAX_BATCH], "force": force})["batch"]
                   for i in range(0, len(ids), MAX_BATCH)]
    if no_wait:
        print_json({"batches": batches, "ids": ids}) if as_json else out.print(
            f"{action} of {len(ids)} VMs accepted: batch {', '.join(batches)}")
        return
    watch_and_report(batches, len(ids), _PAST[action], as_json)


Refs = Annotated[list[str] | None, typer.Argument(help="VM ids or names.", show_default=False)]
NameOpt = Annotated[str | None, typer.Option(help="Also every VM whose name matches this glob.")]
StatusOpt = Annotated[str | None, typer.Option(help="Also every VM in this status.")]
AllOpt = Annotated[bool, typer.Option("--all", help="Every VM, when no id, name or filter is given.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Power off / destroy without waiting for the guest.")]


@vm_app.command("start")
def vm_start(refs: Refs = None, name: NameOpt = None, status: StatusOpt = None, every: AllOpt = False,
             force: ForceOpt = False, no_wait: NoWaitOpt = False, as_json: JsonOpt = False) -> None:
    """Start VMs."""
    _act("start", refs, name, status, every, force, no_wait, as_json)


@vm_app.command("stop")
def vm_stop(refs: Refs = None, name: NameOpt = None, status: StatusOpt = None, every: AllOpt = False,
            force: ForceOpt = False, no_wait: NoWaitOpt = False, as_json: JsonOpt = False) -> None:
    """Stop VMs."""
    _act("stop", refs, name, status, every, force, no_wait, as_json)


@vm_app.command("reboot")
def vm_reboot(refs: Refs = None, name: NameOpt = None, status: StatusOpt = None, every: AllOpt = False,
              force: ForceOpt = False, no_wait: NoWaitOpt = False, as_json: JsonOpt = False) -> None:
    """Reboot VMs."""
    _act("reboot", refs, name, status, every, force, no_wait, as_json)


@vm_app.command("delete")
def vm_delete(refs: Refs = None, name: NameOpt = None, status: StatusOpt = None, every: AllOpt = False,
              force: ForceOpt = False, no_wait: NoWaitOpt = False, as_json: JsonOpt = False,
              yes: Annotated[bool, typer.Option("--yes", help="Do not ask before deleting VMs chosen by "
                                                "--name, --status or --all.")] = False) -> None:
    """Delete VMs (asks first, on a terminal, when --name, --status or --all chose them)."""
    _act("delete", refs, name, status, every, force, no_wait, as_json, yes)


def _one_job(ref: str, verb: str, body: dict[str, Any] | None, no_wait: bool, as_json: bool,
             what: str | None = None) -> None:
    """One job on one VM: POST ``/instances/{id}/{verb}`` with ``body``, or a DELETE there without;
    ``what`` names it in the message (default: ``verb``)."""
    with connect() as client:
        vm = resolve_instance(client, ref)
        path = f"/instances/{vm['id']}/{verb}"
        job = client.post(path, body) if body is not None else client.delete(path)
        verb = what or verb
        if not no_wait:
            job = wait_job(client, job["id"], show=not as_json)
    if no_wait:
        print_json(job) if as_json else out.print(f"job {job['id']} {verb} of VM {vm['id']} accepted")
        return
    finish_job(job, as_json)


@vm_app.command("resize")
def vm_resize(ref: Annotated[str, typer.Argument(help="VM id or name.")],
              flavor: Annotated[str, typer.Option(help="New flavor id or name.")],
              no_wait: NoWaitOpt = False, as_json: JsonOpt = False) -> None:
    """Resize a stopped VM to another flavor."""
    _one_job(ref, "resize", {"flavor": _ref(flavor)}, no_wait, as_json)


@vm_app.command("rebuild")
def vm_rebuild(ref: Annotated[str, typer.Argument(help="VM id or name.")],
               image: Annotated[str, typer.Option(help="Image id or name.")],
               no_wait: NoWaitOpt = False, as_json: JsonOpt = False) -> None:
    """Rebuild a VM from an image (its name and uuid stay)."""
    _one_job(ref, "rebuild", {"image": _ref(image)}, no_wait, as_json)



nic_app = typer.Typer(no_args_is_help=True, help="A VM's NICs: attach and detach (ports: `cloudland port list`).")
vm_app.add_typer(nic_app, name="nic")


@nic_app.command("attach")
def vm_nic_attach(ref: Annotated[str, typer.Argument(help="VM id or name (running or stopped).")],
                  network: Annotated[str | None, typer.Option(help="Subnet id or name: a new port on it.")] = None,
                  port: Annotated[str | None, typer.Option(help="Port id or name: one bound to no VM.")] = None,
                  no_wait: NoWaitOpt = False, as_json: JsonOpt = False) -> None:
    """Attach a NIC: a new port on a subnet (--network), or an unbound port (--port)."""
    if (network is None) == (port is None):
        fail(EXIT_USAGE, "give exactly one of --network and --port")
    body = {"network": _ref(network)} if network is not None else {"port": _port_id(port or "")}
    _one_job(ref, "nics", body, no_wait, as_json, "NIC attach")


@nic_app.command("detach")
def vm_nic_detach(ref: Annotated[str, typer.Argument(help="VM id or name.")],
                  port: Annotated[str, typer.Argument(help="The NIC's port id or name (not the primary's).")],
                  no_wait: NoWaitOpt = False, as_json: JsonOpt = False) -> None:
    """Detach a NIC; its port is kept, bound to nothing (attach it again, or `port delete` it)."""
    port_id = _port_id(port)
    _one_job(ref, f"nics/{port_id}", None, no_wait, as_json, f"NIC detach (port {port_id})")


def _port_id(ref: str) -> int:
    """A port's id from its id or name (names as `port show` takes them)."""
    if ref.isdigit():
        return int(ref)
    with connect() as client:
        return int(find_by_ref(client, "/ports", ref, "port")["id"])


@vm_app.command("capture")
def vm_capture(ref: Annotated[str, typer.Argument(help="VM id or name (stopped).")],
               image: Annotated[str, typer.Argument(help="Name of the new image.")],
               disk_format: Annotated[str, typer.Option("--format", help="qcow2 or raw.")] = "qcow2",
               no_wait: NoWaitOpt = False, as_json: JsonOpt = False) -> None:
    """Capture a stopped VM's disk into a new image that VMs can boot from."""
    with connect() as client:
        vm = resolve_instance(client, ref)
        accepted = client.post(f"/instances/{vm['id']}/capture", {"name": image, "disk_format": disk_format})
        job, captured = accepted["job"], accepted["image"]
        if not no_wait:
            job = wait_job(client, job["id"], show=not as_json)
            captured = client.get(f"/images/{captured['id']}")
    if as_json:
        print_json({"job": job, "image": captured})
    elif no_wait:
        out.print(f"job {job['id']} capture of VM {vm['id']} into image {captured['id']} ({image}) accepted")
    elif job["state"] == "succeeded":
        out.print(f"image {captured['id']} ({image}) captured from VM {vm['name']} ({vm['id']}): "
                  f"{captured['status']}, {captured['size_bytes'] / 2**20:.1f} MiB, sha256 {captured['sha256']}")
    else:
        finish_job(job, as_json=False)  # the reason, and exit 1
    if job["state"] in ("failed", "timeout"):
        raise typer.Exit(EXIT_FAILED)


@vm_app.command("console")
def vm_console(ref: Annotated[str, typer.Argument(help="VM id or name.")],
               read_only: Annotated[bool, typer.Option("--read-only", help="Show the output; type nothing.")]
               = False) -> None:
    """Show a VM's serial console and type into it; Ctrl-] leaves."""
    from cloudland_cli.console import run_console  # websockets only when a console is opened

    with connect() as client:
        vm = resolve_instance(client, ref)
        endpoint, token = client.endpoint, client.token or ""
    run_console(endpoint, token, vm["id"], f"{vm['name']} ({vm['id']})", read_only)


@vm_app.command("vnc")
def vm_vnc(ref: Annotated[str, typer.Argument(help="VM id or name.")], as_json: JsonOpt = False) -> None:
    """Print where a VNC client reaches a running VM's graphical console (host:port)."""
    with connect() as client:
        vm = resolve_instance(client, ref)
        vnc = client.get(f"/instances/{vm['id']}/vnc")
    print_json(vnc) if as_json else out.print(vnc["address"])


@vm_app.command("exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def vm_exec(ref: Annotated[str, typer.Argument(help="VM id or name.")],
            command: Annotated[list[str], typer.Argument(help="The command and its words, after --.")]) -> None:
    """Run a command in the network of a simulated VM of this machine's cloud (admins; root).

    ``make run``'s VMs are simulated, and on its real tenant networks (CLOUDLAND_NETWORK=netns)
    each NIC is a namespace on this machine: ``vm exec web-1 -- busybox ping -c 3 10.0.0.3`` runs the
    command there, on the VM's primary NIC, with this machine's tools. Only an admin of the VM's
    organisation may, and only the machine's root can enter a namespace."""
    import os
    import subprocess

    from cloudland.netclean import NETNS_DIR, guest_namespace

    with connect() as client:
        if client.get("/me")["role"] != "admin":
            fail(EXIT_USAGE, "vm exec is for admins of the VM's organisation")
        vm = resolve_instance(client, ref)
        ports = client.get("/ports", instance=vm["id"], limit=100)["items"]
    primary = min(ports, key=lambda p: p["device_index"] if p["device_index"] is not None else 1 << 30, default=None)
    if primary is None or vm.get("hypervisor_id") is None:
        fail(EXIT_FAILED, f"VM {vm['name']} ({vm['id']}) has no NIC on a hypervisor yet")
    where = guest_namespace(vm["hypervisor_id"], primary["mac"])
    if where is None:
        fail(EXIT_FAILED, f"VM {vm['name']} ({vm['id']}): no namespace of its NIC {primary['mac']} on this machine "
                          f"(hypervisor {vm['hypervisor_id']}): only make run's simulated hypervisors with real "
                          "tenant networks (CLOUDLAND_NETWORK=netns, as root) have one")
    if os.geteuid() != 0:
        fail(EXIT_FAILED, "vm exec enters a namespace of this machine: run it as root")
    done = subprocess.run(["nsenter", f"--net={NETNS_DIR / where}", "--", *command], check=False)
    raise typer.Exit(done.returncode)
