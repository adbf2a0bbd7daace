"""CloudLand's protobuf contracts (import name ``cloudland_proto``); see README.md."""
