"""Leaf hypervisor agents and their operations (import name ``cloudland_agents``)."""
