# CloudLand: `make run` starts the all-in-one cloud, `make test` runs the suite,
# `make bench` measures the tree. Each sets up .venv itself (deploy/bootstrap.sh).
VENV := .venv
BIN := $(VENV)/bin
HYPERVISORS ?= 100
PYTEST_ARGS ?=

.PHONY: setup run test bench clean

setup:
	@deploy/bootstrap.sh

run: setup
	$(BIN)/cloudland up --hypervisors $(HYPERVISORS)

# -p no:cacheprovider keeps a fresh clone clean; output goes to the terminal for CI.
test: setup
	$(BIN)/python -m pytest -p no:cacheprovider $(PYTEST_ARGS)

bench: setup
	$(BIN)/python bench/tree_bench.py

clean:
	rm -rf $(VENV) build var proto/v1/*_pb2*.py proto/v1/*_pb2.pyi
