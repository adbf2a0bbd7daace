"""Config drives: built with agents/compute/configdrive.py, read back with pycdlib (label, names, contents)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import pycdlib
import pytest

from cloudland.errors import InvalidRequest
from cloudland_agents.compute.configdrive import LABEL, MAX_USER_DATA_BYTES, build_config_drive

UUID = "6f1d2c3b-4a5e-4f60-8172-93a4b5c6d7e8"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGq0g8tV1RkqyZ1mYV0m2v7bq3x2Jw2mJ7yY9o8t2xQF alice@example"
RSA = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7 bob"
NETWORK = {
    "links": [{"id": "eth0", "type": "phy", "ethernet_mac_address": "52:54:00:12:34:56", "mtu": 1450}],
    "networks": [{"id": "net0", "link": "eth0", "type": "ipv4", "ip_address": "10.0.0.5",
                  "netmask": "255.255.255.0", "routes": [], "network_id": "n1"}],
    "services": [{"type": "dns", "address": "10.0.0.1"}],
}
GOOD: dict[str, Any] = {
    "hostname": "web-1", "uuid": UUID, "ssh_keys": [KEY, RSA],
    "user_data": b"#cloud-config\nruncmd: [echo hi]\n", "network_config": NETWORK,
}


def read_iso(path: Path) -> tuple[pycdlib.PyCdlib, dict[str, bytes]]:
    """The open image and its files by Rock Ridge path (the names Linux shows)."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    files: dict[str, bytes] = {}
    for root, _dirs, names in iso.walk(rr_path="/"):
        for name in names:
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path=f"{root.rstrip('/')}/{name}")
            files[f"{root.rstrip('/')}/{name}"] = out.getvalue()
    return iso, files


def test_layout_label_and_contents(tmp_path: Path) -> None:
    path = build_config_drive(tmp_path / "drive" / "config.iso", **GOOD)
    assert path == tmp_path / "drive" / "config.iso"
    iso, files = read_iso(path)
    try:
        assert iso.pvd.volume_identifier.decode().rstrip() == LABEL
        assert iso.has_rock_ridge() and iso.joliet_vd is not None
        assert sorted(files) == [
            "/openstack/latest/meta_data.json",
            "/openstack/latest/network_data.json",
            "/openstack/latest/user_data",
        ]
        # Joliet carries the same names, for Windows guests.
        out = io.BytesIO()
        iso.get_file_from_iso_fp(out, joliet_path="/openstack/latest/meta_data.json")
        assert out.getvalue() == files["/openstack/latest/meta_data.json"]
    finally:
        iso.close()
    meta = json.loads(files["/openstack/latest/meta_data.json"])
    assert meta["uuid"] == UUID
    assert meta["hostname"] == meta["name"] == "web-1"
    assert meta["public_keys"] == {"key-0": KEY, "key-1": RSA}
    assert files["/openstack/latest/user_data"] == GOOD["user_data"]
    assert json.loads(files["/openstack/latest/network_data.json"]) == NETWORK
    # One line: the test guest (deploy/guest/init) reads fields with sed.
    assert b"\n" not in files["/openstack/latest/meta_data.json"]


def test_optional_parts_are_omitted(tmp_path: Path) -> None:
    path = build_config_drive(tmp_path / "c.iso", hostname="db", uuid=UUID.upper(), name="Database (primary)")
    iso, files = read_iso(path)
    iso.close()
    assert sorted(files) == ["/openstack/latest/meta_data.json"]
    meta = json.loads(files["/openstack/latest/meta_data.json"])
    assert meta["uuid"] == UUID  # canonical lower case
    assert meta["name"] == "Database (primary)" and meta["public_keys"] == {}


def test_binary_user_data_at_the_limit(tmp_path: Path) -> None:
    blob = bytes(range(256)) * (MAX_USER_DATA_BYTES // 256) + b"\0" * (MAX_USER_DATA_BYTES % 256)
    iso, files = read_iso(build_config_drive(tmp_path / "c.iso", hostname="h", uuid=UUID, user_data=blob))
    iso.close()
    assert files["/openstack/latest/user_data"] == blob


def test_rebuild_replaces_the_image(tmp_path: Path) -> None:
    path = tmp_path / "c.iso"
    build_config_drive(path, hostname="old", uuid=UUID)
    build_config_drive(path, hostname="new", uuid=UUID)
    iso, files = read_iso(path)
    iso.close()
    assert json.loads(files["/openstack/latest/meta_data.json"])["hostname"] == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["c.iso"]  # no temporary file left behind


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"hostname": ""}, "hostname"),
        ({"hostname": "-web"}, "hostname"),
        ({"hostname": "web-"}, "hostname"),
        ({"hostname": "web_1"}, "hostname"),
        ({"hostname": "a..b"}, "hostname"),
        ({"hostname": "x" * 64}, "hostname"),
        ({"hostname": ".".join(["a" * 63] * 4)}, "hostname"),  # 255 characters
        ({"hostname": 7}, "hostname"),
        ({"uuid": "not-a-uuid"}, "uuid"),
        ({"uuid": "6f1d2c3b4a5e4f60817293a4b5c6d7e8"}, "uuid"),
        ({"ssh_keys": KEY}, "ssh_keys"),  # a string, not a list of them
        ({"ssh_keys": ["not a key"]}, "ssh_keys[0]"),
        ({"ssh_keys": [KEY, KEY + "\nssh-rsa AAAA evil"]}, "ssh_keys[1]"),
        ({"ssh_keys": [KEY] * 65}, "ssh_keys"),
        ({"user_data": "text, not bytes"}, "user_data"),
        ({"user_data": b"x" * (MAX_USER_DATA_BYTES + 1)}, "user_data"),
        ({"network_config": ["links"]}, "network_config"),
        ({"network_config": {"mtu": float("nan")}}, "network_config"),
        ({"network_config": {"links": [{"id": "x" * 70000}]}}, "network_config"),
        ({"name": ""}, "name"),
    ],
)
def test_invalid_inputs_name_the_field(tmp_path: Path, changes: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidRequest, match=f"^'{re.escape(field)}' must be"):
        build_config_drive(tmp_path / "c.iso", **{**GOOD, **changes})
    assert not any(tmp_path.iterdir())  # nothing written


def test_a_nic_without_addresses_gets_a_dhcp_link() -> None:
    """agents/compute/guests.py's network data: nova's shape for DHCP networks, one link per MAC."""
    from cloudland_agents.compute.guests import NicConfig, network_data

    assert network_data(()) == {"links": [], "networks": [], "services": []}
    nics = (NicConfig("52:54:00:00:00:01"), NicConfig("52:54:00:00:00:02"))
    assert network_data(nics) == {
        "links": [{"id": "tap0", "type": "phy", "ethernet_mac_address": "52:54:00:00:00:01"},
                  {"id": "tap1", "type": "phy", "ethernet_mac_address": "52:54:00:00:00:02"}],
        "networks": [{"id": "network0", "link": "tap0", "type": "ipv4_dhcp"},
                     {"id": "network1", "link": "tap1", "type": "ipv4_dhcp"}],
        "services": [],
    }


def test_a_port_s_addresses_and_mtu_are_static_entries() -> None:
    """A port's fixed addresses become nova's static ``ipv4`` networks, so a guest without a DHCP
    client comes up too: the default route through the primary NIC's gateway only, the MTU on
    the link, the DNS servers on each network and once among the services."""
    from cloudland_agents.compute.guests import NicConfig, network_data

    nics = (NicConfig("02:c1:00:00:00:01", 1450, ("10.0.0.2/24",), "10.0.0.1", ("10.0.0.254",)),
            NicConfig("02:c1:00:00:00:02", 1400, ("192.168.5.9/26", "192.168.5.10/26"), "192.168.5.1",
                      ("10.0.0.254", "9.9.9.9")))
    dns = [{"type": "dns", "address": "10.0.0.254"}]
    both = [*dns, {"type": "dns", "address": "9.9.9.9"}]
    assert network_data(nics) == {
        "links": [{"id": "tap0", "type": "phy", "ethernet_mac_address": "02:c1:00:00:00:01", "mtu": 1450},
                  {"id": "tap1", "type": "phy", "ethernet_mac_address": "02:c1:00:00:00:02", "mtu": 1400}],
        "networks": [
            {"id": "network0", "link": "tap0", "type": "ipv4", "ip_address": "10.0.0.2", "netmask": "255.255.255.0",
             "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.0.0.1"}], "services": dns},
            {"id": "network1", "link": "tap1", "type": "ipv4", "ip_address": "192.168.5.9",
             "netmask": "255.255.255.192", "routes": [], "services": both},
            {"id": "network2", "link": "tap1", "type": "ipv4", "ip_address": "192.168.5.10",
             "netmask": "255.255.255.192", "routes": [], "services": both},
        ],
        "services": both,
    }
