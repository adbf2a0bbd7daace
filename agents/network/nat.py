"""A router namespace's nftables ruleset (issue 12): SNAT, floating IPs, and the external edge.

One table, ``ip router``, in the router's own namespace (everything in that namespace is ours).
It is rendered exactly as ``nft list table`` prints it, so the running ruleset is compared as
text: a right one is never rewritten (an agent's restart changes nothing), and a wrong or
missing one is replaced whole in one ``nft -f`` transaction (create, delete, define: atomic, so
there is never a moment without rules). Conntrack entries outlive the replacement: established
flows keep their translation.

- prerouting (dstnat): each floating IP to its fixed address;
- postrouting (srcnat), only what leaves by the external interface: a fixed address with a
  floating IP as that floating IP, everything else as the hypervisor's SNAT address;
- forward: from the external network only what was DNATed (to a floating IP) or answers a
  flow from inside; the internet reaches a VM through its floating IP, and no other way.
"""

from __future__ import annotations

import subprocess

from cloudland.errors import DriverError
from cloudland_agents.network.router import EXTERNAL_INSIDE, RouterPlan

TABLE = "router"
NFT_TIMEOUT_S = 10.0


def ruleset(plan: RouterPlan) -> str:
    """The table ``plan`` wants, as ``nft list table ip router`` prints it; "" when it wants none
    (a router without an external network: east-west needs no rules)."""
    uplink = plan.uplink
    if uplink is None:
        return ""
    x = f'"{EXTERNAL_INSIDE}"'
    dnat = [f"ip daddr {fip} dnat to {fixed}" for fip, fixed in plan.floating]
    snat = [f"oifname {x} ip saddr {fixed} snat to {fip}" for fip, fixed in plan.floating]
    if uplink.snat:
        snat.append(f"oifname {x} snat to {uplink.snat}")
    forward = [f"iifname {x} ct status dnat accept", f"iifname {x} ct state established,related accept",
               f"iifname {x} drop"]
    chains = [("prerouting", "type nat hook prerouting priority dstnat; policy accept;", dnat),
              ("postrouting", "type nat hook postrouting priority srcnat; policy accept;", snat),
              ("forward", "type filter hook forward priority filter; policy accept;", forward)]
    body = "\n\n".join(f"\tchain {name} {{\n\t\t{head}\n" + "".join(f"\t\t{rule}\n" for rule in rules) + "\t}"
                       for name, head, rules in chains)
    return f"table ip {TABLE} {{\n{body}\n}}\n"


def nft(namespace: str, hypervisor: int, args: list[str], stdin: str = "") -> str:
    """``nft`` inside the router's namespace; DriverError naming it on failure."""
    argv = ["nsenter", f"--net=/run/netns/{namespace}", "nft", *args]
    try:
        done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=NFT_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise DriverError(hypervisor, f"cannot run nft in {namespace}: {exc}") from exc
    if done.returncode != 0:
        raise DriverError(hypervisor, f"nft {' '.join(args)} in {namespace} failed: {done.stderr.strip()}")
    return done.stdout


def current(namespace: str, hypervisor: int) -> str:
    """The router table as the namespace holds it now ("" if there is none)."""
    listed = nft(namespace, hypervisor, ["list", "tables", "ip"])
    if f"table ip {TABLE}" not in listed.splitlines():
        return ""
    return nft(namespace, hypervisor, ["list", "table", "ip", TABLE])


def replace(namespace: str, hypervisor: int, wanted: str) -> None:
    """Make the table exactly ``wanted`` ("" : none) in one transaction."""
    script = f"table ip {TABLE} {{}}\ndelete table ip {TABLE}\n{wanted}"
    nft(namespace, hypervisor, ["-f", "-"], stdin=script)
