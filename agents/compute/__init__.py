"""Compute on one hypervisor: the VM driver (driver.py, and fake.py for tests), the domain
spec and its XML (domain.py), a real guest's files (guests.py, configdrive.py), the serial
console (console.py), and the ``vm.*`` operations that put them behind the registry (ops.py,
console_ops.py; contract in proto/v1/compute.proto)."""
