# CloudLand: `make run` starts the all-in-one cloud, `make test` runs the suite,
# `make bench` measures the tree, the REST API, the image paths, then the CLI's start-up, `make lab` emulates hosts on this
# machine (`make lab-down` removes them). Each sets up .venv itself (deploy/bootstrap.sh).
VENV := .venv
BIN := $(VENV)/bin
HYPERVISORS ?= 100
PYTEST_ARGS ?=
# Which benchmarks `make bench` runs, in order: BENCH=api (or tree, image, lab, cli, net) runs only that one.
# lab (the tree across emulated hosts) needs root.
BENCH ?= tree lab api image cli
# PostgreSQL 15 (installed by bootstrap.sh) beside SQLite; API_BENCH_ARGS= for SQLite only.
API_BENCH_ARGS ?= --postgres
# Worker hosts of `make lab` (h1..hN, beside the controller ctl).
HOSTS ?= 4
# The all-in-one cloud's default network (issue 11): `vm create` without --network puts a NIC on it;
# DEFAULT_NETWORK= for none. A /16, so that `vm create --count 1000` fits.
DEFAULT_NETWORK ?= 10.0.0.0/16
# Its external network (issue 12), made on this machine by `cloudland up` as root: a bridge with the
# network's first address, the default network's router's gateway there, floating IPs from it that
# answer here. A documentation range (RFC 5737); EXTERNAL_NETWORK= for none.
EXTERNAL_NETWORK ?= 198.51.100.0/24

.PHONY: setup run test bench clean libvirtd libvirtd-stop guest lab lab-down

setup:
	@VENV=$(VENV) deploy/bootstrap.sh

run: setup
	CLOUDLAND_API_DEFAULT_NETWORK=$(DEFAULT_NETWORK) CLOUDLAND_API_EXTERNAL_NETWORK=$(EXTERNAL_NETWORK) \
		$(BIN)/cloudland up --hypervisors $(HYPERVISORS)

# -p no:cacheprovider keeps a fresh clone clean; output goes to the terminal for CI.
test:
	@VENV=$(VENV) deploy/bootstrap.sh --tests
	$(BIN)/python -m pytest -p no:cacheprovider $(PYTEST_ARGS)

bench: setup
ifneq (,$(filter tree,$(BENCH)))
	$(BIN)/python bench/tree_bench.py
endif
ifneq (,$(filter lab,$(BENCH)))
	$(BIN)/python bench/lab_bench.py
endif
ifneq (,$(filter api,$(BENCH)))
	$(BIN)/python bench/api_bench.py $(API_BENCH_ARGS)
endif
ifneq (,$(filter image,$(BENCH)))
	$(BIN)/python bench/image_bench.py
endif
ifneq (,$(filter cli,$(BENCH)))
	$(BIN)/python bench/cli_bench.py
endif
# Not in the default list: 1,000 simulated hypervisors want the machine to themselves.
ifneq (,$(filter net,$(BENCH)))
	$(BIN)/python bench/net_bench.py
endif

# The lab (README "The lab"): hosts as namespaces on one underlay switch, for trying the tree
# across hosts by hand. Needs root. Prints how to enter a host and where the hostfile is.
lab: setup
	$(BIN)/python -m cloudland_lab up --hosts $(HOSTS)

lab-down: setup
	$(BIN)/python -m cloudland_lab down

# Real hypervisor mode: libvirtd + QEMU (TCG) started by hand (no systemd), and the test guest.
libvirtd:
	@deploy/libvirtd.sh start

libvirtd-stop:
	@deploy/libvirtd.sh stop

guest:
	@deploy/guest/build.sh var/guest

clean:
	rm -rf $(VENV) build var proto/v1/*_pb2*.py proto/v1/*_pb2.pyi
