"""The names of the objects the data plane makes: one prefix marks every one of them.

A reconciler deletes only what it owns (shared/reference/sdn-peers.md, "Ownership"): every link,
namespace and file the agent makes is named ``<prefix><kind><vni>``, and the agent reads back
only names of exactly that shape, so a name of another prefix (another run, another tool) is
never touched. Links are at most 15 characters (IFNAMSIZ - 1): a prefix of up to 6 characters
leaves room for the kind letter and a VNI of up to 8 digits (2^24 - 1).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cloudland.config import NETWORK_PREFIX_RE
from cloudland.errors import InvalidRequest

DEFAULT_PREFIX = "cl"
MAX_VNI = (1 << 24) - 1
DHCP_INSIDE = "d0"  # the DHCP namespace's end of its veth; that namespace holds nothing else

BRIDGE, VXLAN, DHCP = "b", "v", "d"
TAP = "t"  # a VM's NIC: its tap, or a test guest's namespace and veth (agents/compute/nics.py)
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


@dataclass(frozen=True)
class Names:
    """Names of one prefix: ``clb<vni>`` (bridge), ``clv<vni>`` (VXLAN device), ``cld<vni>`` (the
    DHCP namespace, and its veth's end on the bridge), ``clt<8 hex digits>`` (a VM's NIC)."""

    prefix: str = DEFAULT_PREFIX
    # A simulated hypervisor's own namespace (``<prefix>hv<id>``, hostns.py), "" for the agent's:
    # its links are named as anywhere, but the namespaces it makes beside it (DHCP, test guests)
    # live in one directory with every other hypervisor's, so they carry it: ``<host>.<link name>``.
    host: str = ""

    def __post_init__(self) -> None:
        if not NETWORK_PREFIX_RE.fullmatch(self.prefix):
            raise ValueError(f"bad network name prefix {self.prefix!r}: 1-6 lowercase letters and digits, "
                             "starting with a letter")

    def bridge(self, vni: int) -> str:
        return f"{self.prefix}{BRIDGE}{vni}"

    def vxlan(self, vni: int) -> str:
        return f"{self.prefix}{VXLAN}{vni}"

    def dhcp(self, vni: int) -> str:
        """The DHCP namespace of the subnet, and its veth's end on the bridge."""
        return f"{self.prefix}{DHCP}{vni}"

    def tap(self, mac: str) -> str:
        """A VM NIC's host end (its tap; a test guest's namespace and veth): the MAC's last four
        bytes, unique as the MAC is (the API's are ``02:c1:`` and four random bytes)."""
        if not _MAC.fullmatch(mac):
            raise InvalidRequest(f"mac must be a lower-case aa:bb:cc:dd:ee:ff, got {mac!r}")
        return f"{self.prefix}{TAP}{mac[6:].replace(':', '')}"

    def netns(self, link: str) -> str:
        """The namespace beside link ``link`` (a DHCP server's, a test guest's): its name, scoped
        to this hypervisor's own namespace if it has one."""
        return f"{self.host}.{link}" if self.host else link

    def link_of_netns(self, name: str) -> str | None:
        """The link name of namespace ``name`` if it is one of this hypervisor's (``netns``), else None."""
        if not self.host:
            return None if "." in name else name
        scope = f"{self.host}."
        return name[len(scope):] if name.startswith(scope) else None

    def is_tap(self, name: str) -> bool:
        """Whether ``name`` is a NIC's host end of this prefix (the one test of ownership for them)."""
        return re.fullmatch(rf"{self.prefix}{TAP}[0-9a-f]{{8}}", name) is not None

    def parse(self, name: str) -> tuple[str, int] | None:
        """(kind, vni) of a name this prefix made, else None: the one test of ownership."""
        match = re.fullmatch(rf"{self.prefix}([{BRIDGE}{VXLAN}{DHCP}])([1-9][0-9]{{0,7}})", name)
        if match is None or int(match[2]) > MAX_VNI:
            return None
        return match[1], int(match[2])


def check_vni(vni: int, where: str) -> int:
    if not 1 <= vni <= MAX_VNI:
        raise InvalidRequest(f"{where}.vni must be in [1, {MAX_VNI}], got {vni}")
    return vni
