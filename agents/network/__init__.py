"""Tenant networks on one hypervisor (issue 11): a Linux-native data plane, level-triggered.

- ``names.py``: the names of every object the agent makes (one prefix marks them all);
- ``desired.py``: what the hypervisor must have, computed from the VPC states it holds
  (``NetVpcState``, proto/v1/network.proto), and those states kept on disk;
- ``kernel.py``: bridges, VXLAN devices, FDB and neighbour entries through pyroute2;
- ``dhcp.py``: one dnsmasq per subnet in a small namespace on the subnet's bridge;
- ``reconcile.py``: read the kernel, diff against the desired state, add before removing;
- ``delta.py``: one change applied to a held state, and its VPC replanned, at the change's cost;
- ``fake.py``: the same in memory, for simulated hypervisors (which share one namespace);
- ``hostns.py``: a simulated hypervisor's own namespace and underlay, for the kernel's plane there
  (``CLOUDLAND_NETWORK=netns``, ``make run`` as root);
- ``ops.py``: the ``net.sync``, ``net.apply`` and ``net.show`` operations, and the agent's periodic repair;
- ``guest.py``: a test-driver VM's NIC, played by a namespace with a DHCP client;
- ``router.py``, ``routing.py``, ``nat.py``: a VPC's distributed router on this hypervisor (issue 12):
  its plan, its namespace and veths, and its nftables table (SNAT, floating IPs).
"""
