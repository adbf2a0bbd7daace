"""A simulated hypervisor's domains outlive the process that held them (agents/simdomains.py).

Each ``test:///<file>`` connection is an independent in-memory host, so a second connection to the
same file plays the agent that comes back after a kill: it sees only what was saved."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import libvirt
import pytest

from cloudland_agents import leaf as _leaf  # noqa: F401 - registers every operation
from cloudland_agents import ops
from cloudland_agents.compute.domain import DomainSpec, domain_xml
from cloudland_agents.compute.driver import LibvirtCompute
from cloudland_agents.hypervisor import open_simulated
from cloudland_agents.simdomains import CHANGES_DOMAINS, READS_DOMAINS, domain_named
from cloudland_proto.v1 import compute_pb2 as cpb


def spec(n: int) -> DomainSpec:
    return DomainSpec(name=f"cl-{n}", uuid=f"00000000-0000-4000-8000-{n:012x}", vcpus=1, memory_mib=64,
                      metadata={"instance_id": str(n)})


def states(conn: libvirt.virConnect) -> dict[str, int]:
    return {d.name(): d.state()[0] for d in conn.listAllDomains()}


def test_every_operation_says_whether_it_changes_domains() -> None:
    assert set(ops.REGISTRY) == CHANGES_DOMAINS | READS_DOMAINS
    assert not CHANGES_DOMAINS & READS_DOMAINS


def test_domains_come_back_with_their_power_state_and_definition(tmp_path: Path) -> None:
    first = open_simulated(3, tmp_path, saved=True)
    compute = LibvirtCompute(first.conn, 3, poll_s=0.01)
    for n in (1, 2, 3, 4):
        compute.create(spec(n))
    compute.stop("cl-2", force=True)
    compute.stop("cl-3", force=True)
    compute.resize("cl-3", 4, 512)
    compute.delete("cl-4")
    first.conn.lookupByName("cl-1").suspend()
    first.persist()
    saved = tmp_path / "hosts" / "hv-3.domains.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert json.loads(saved.read_text())["hypervisor"] == 3

    again = open_simulated(3, tmp_path, saved=True)  # the agent after a kill -9: a fresh test:/// host
    assert states(again.conn) == {"cl-1": libvirt.VIR_DOMAIN_PAUSED, "cl-2": libvirt.VIR_DOMAIN_SHUTOFF,
                                  "cl-3": libvirt.VIR_DOMAIN_SHUTOFF}
    record = LibvirtCompute(again.conn, 3).get("cl-3")
    assert (record["vcpus"], record["memory_mib"], record["uuid"]) == (4, 512, spec(3).uuid)
    assert again.report().vms[0].instance_id in (1, 2, 3)  # CloudLand's metadata came back too
    # And the returned agent acts on them: a stop of a VM saved running works (not "VM not found").
    assert LibvirtCompute(again.conn, 3).stop("cl-1", force=True)["state"] == "shutoff"


def test_without_saving_a_new_process_finds_no_domains(tmp_path: Path) -> None:
    """The property the file provides: a test:/// host alone keeps nothing across connections."""
    first = open_simulated(5, tmp_path, saved=True)
    first.conn.defineXML(domain_xml(spec(9))).create()
    assert states(open_simulated(5, tmp_path, saved=True).conn) == {}
    assert states(open_simulated(5, tmp_path).conn) == {}  # not asked to keep them: nothing read either


def test_a_domain_libvirt_refuses_is_skipped_and_the_rest_come_back(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    first = open_simulated(7, tmp_path, saved=True)
    first.conn.defineXML(domain_xml(spec(1))).create()
    first.persist()
    saved = tmp_path / "hosts" / "hv-7.domains.json"
    content = json.loads(saved.read_text())
    content["domains"].append({"xml": "<domain type='nonsense'/>", "running": True})
    saved.write_text(json.dumps(content))
    again = open_simulated(7, tmp_path, saved=True)
    assert states(again.conn) == {"cl-1": libvirt.VIR_DOMAIN_RUNNING}
    assert "event=saved_domain_refused hypervisor=7" in caplog.text


def test_saving_after_each_operation_keeps_every_definition(tmp_path: Path) -> None:
    """Saves re-read only the definition an operation names when it can change no other
    (simdomains.DEFINES_ONLY_ITS_OWN); one that changes a definition (a resize) re-reads all."""
    first = open_simulated(4, tmp_path, saved=True)
    compute = LibvirtCompute(first.conn, 4, poll_s=0.01)

    def saved_after(operation: str, request: object) -> None:
        first.persist(domain_named(operation, request))

    for n in (1, 2, 3):
        compute.create(spec(n))
        saved_after("vm.create", cpb.VmCreateRequest(spec=cpb.DomainSpec(name=f"cl-{n}")))
    compute.stop("cl-2", force=True)
    saved_after("vm.stop", cpb.VmStopRequest(name="cl-2"))
    compute.resize("cl-2", 4, 512)
    saved_after("vm.resize", cpb.VmResizeRequest(name="cl-2"))
    compute.delete("cl-3")
    saved_after("vm.delete", cpb.VmDeleteRequest(name="cl-3"))
    assert domain_named("vm.resize", cpb.VmResizeRequest(name="cl-2")) is None

    again = open_simulated(4, tmp_path, saved=True)
    assert states(again.conn) == {"cl-1": libvirt.VIR_DOMAIN_RUNNING, "cl-2": libvirt.VIR_DOMAIN_SHUTOFF}
    record = LibvirtCompute(again.conn, 4).get("cl-2")
    assert (record["vcpus"], record["memory_mib"]) == (4, 512), "the resize's definition was saved"
