"""IP addresses as CloudLand takes and shows them (VNC listen addresses, issue 4)."""

from __future__ import annotations

import ipaddress


def canonical_ip(value: object) -> str | None:
    """``value`` as a canonical IPv4 or IPv6 address, or None if it is not one.

    A zone (``fe80::1%eth0``) is refused: it names an interface of one host, which a
    client elsewhere cannot use.
    """
    if not isinstance(value, str):
        return None
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        return None
    return str(address)


def is_unspecified(address: str) -> bool:
    """Whether ``address`` is 0.0.0.0 or ``::``: listening there is on every interface of the host."""
    return canonical_ip(address) in ("0.0.0.0", "::")


def host_port(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets (``[::1]:5900``), as URLs and VNC clients write it."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
