"""The message tree: root rank, relays, links and routing (import name ``cloudland_launcher``)."""
