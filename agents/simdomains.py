"""A simulated hypervisor's domains kept on disk, so that they outlive the agent (issue 15).

libvirt's ``test:///<file>`` driver keeps its domains in the memory of the process that opened
the connection: the leaf. A real hypervisor's VMs are libvirtd's and outlive a leaf that dies;
simulated ones died with it, and until the reconciler defined them again (``recover`` jobs after
its grace) every stop, resize or delete of them failed with "VM not found" (the chaos suite at
1,000 operations: 119 stops). Now each simulated hypervisor's domains, their inactive definition
and power state, are written to ``<state>/hosts/hv-<id>.domains.json`` (0600) after every
operation on it, before its reply goes up, and defined (and started, if they ran) again when a
leaf opens the hypervisor: a killed leaf's VMs are there when it returns.

Ordering makes this safe without a journal: an operation whose effect is not saved yet has not
replied either, so the root sends it again under its id and the agent, idempotent on the VM, does
it again. The file is replaced atomically (rename) but not fsynced: it must outlive the process,
not the machine (a simulated hypervisor does not outlive its machine either).

A save reads again only what may have changed: the one domain an operation names when it can
change no other (``DEFINES_ONLY_ITS_OWN``: its definition and power state), every domain
otherwise; the rest are written from the entries of the last save. Reading every domain after
every create made saving a fifth of a leaf's CPU per ``vm.create`` at a few dozen domains per
hypervisor (issue 15).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path
from typing import Any

import libvirt

log = logging.getLogger(__name__)

# The operations that can change a hypervisor's domains: saved after each (the others only read them,
# or touch networks, volumes' files and images). tests/unit/test_simdomains.py classifies every one.
CHANGES_DOMAINS = frozenset({
    "vm.create", "vm.start", "vm.stop", "vm.reboot", "vm.delete", "vm.resize", "vm.rebuild", "vm.capture",
    "vm.attach_nic", "vm.detach_nic", "vol.attach", "vol.detach", "test.seed_domains",
})
READS_DOMAINS = frozenset({
    "vm.console", "vm.get", "vm.list", "image.evict", "net.sync", "net.apply", "net.show", "vol.create",
    "vol.clone", "vol.delete", "vol.extend", "vol.snapshot", "vol.snapshot_delete", "ping", "inventory",
    "sleep", "test.count", "test.slow", "test.fail", "test.break_report", "test.send_raw",
})
RUNNING_STATES = (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED, libvirt.VIR_DOMAIN_PAUSED)
# Operations that change the definition or power state of the one domain their request names, and of
# no other: after them a save reads that domain only. Every other operation of CHANGES_DOMAINS re-reads all.
DEFINES_ONLY_ITS_OWN = frozenset({"vm.create", "vm.start", "vm.stop", "vm.reboot", "vm.delete"})


def domain_named(operation: str, request: Any) -> str | None:
    """The domain whose definition ``operation`` may have changed, if it can change that one only."""
    if operation not in DEFINES_ONLY_ITS_OWN:
        return None
    name = request.spec.name if operation == "vm.create" else request.name
    return str(name) or None


class SavedDomains:
    """The file of one simulated hypervisor's domains; ``save`` and ``restore`` on its connection."""

    def __init__(self, path: Path, hypervisor_id: int) -> None:
        self.path = path
        self.hypervisor_id = hypervisor_id
        self._lock = threading.Lock()  # worker threads save the same hypervisor concurrently
        self._entries: dict[str, str] | None = None  # domain name -> its saved entry (JSON), under _lock

    def save(self, conn: libvirt.virConnect, changed: str | None = None) -> int:
        """Write every domain of ``conn`` (definition and power state); returns how many.

        ``changed``: the name of the only domain whose definition or power state may differ from
        the last save (``domain_named``): only it is read again. None reads every domain."""
        with self._lock:
            try:
                entries = self._read(conn, changed)
            except BaseException:
                self._entries = None  # half-updated: the next save reads every domain
                raise
            self._entries = entries
            tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(f'{{"hypervisor": {json.dumps(self.hypervisor_id)}, "domains": [')
                out.write(", ".join(entries.values()))
                out.write("]}")
            tmp.replace(self.path)
            return len(entries)

    def _read(self, conn: libvirt.virConnect, changed: str | None) -> dict[str, str]:
        if changed is None or self._entries is None:
            entries = {}
            for dom in conn.listAllDomains():
                try:
                    entries[dom.name()] = _entry(dom)
                except libvirt.libvirtError as exc:
                    if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                        raise  # else undefined while we listed: not on the host any more
            return entries
        entries = self._entries
        try:
            entries[changed] = _entry(conn.lookupByName(changed))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:
                raise
            entries.pop(changed, None)  # deleted (or never made): not on the host
        return entries

    def restore(self, conn: libvirt.virConnect) -> int:
        """Define the saved domains on ``conn`` again, started if they ran; returns how many.

        A domain libvirt refuses is logged, naming it and the hypervisor, and skipped: the
        reconciler sees it missing and defines it again from the database."""
        try:
            saved: dict[str, Any] = json.loads(self.path.read_text())
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            log.error("event=saved_domains_unreadable hypervisor=%s path=%s error=%s", self.hypervisor_id,
                      self.path, exc)
            return 0
        restored = 0
        for entry in saved.get("domains", []):
            try:
                dom = conn.defineXML(entry["xml"])
                if entry.get("running") and not dom.isActive():
                    dom.create()
                    if entry.get("paused"):
                        dom.suspend()
                restored += 1
            except (libvirt.libvirtError, KeyError, TypeError) as exc:
                log.error("event=saved_domain_refused hypervisor=%s error=%s", self.hypervisor_id, exc)
        log.info("event=saved_domains_restored hypervisor=%s domains=%d", self.hypervisor_id, restored)
        return restored


def _entry(dom: libvirt.virDomain) -> str:
    """A domain's entry in the file: its inactive definition and power state, as JSON."""
    state = dom.state()[0]
    return json.dumps({"xml": dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), "running": state in RUNNING_STATES,
                       "paused": state == libvirt.VIR_DOMAIN_PAUSED})
