# The two commands: `make run` and `make test`. Both install whatever is missing first.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: run test setup down status lint bench clean

$(INSTALLED): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test]'
	@touch $@

# System packages (apt-get) and the Kafka jars (Maven Central, cached in ~/.cache/ams).
setup: $(INSTALLED)
	$(BIN)/ams setup $(SETUP_FLAGS)

run: setup
	$(BIN)/ams up
	$(BIN)/ams demo

test: SETUP_FLAGS = --for-tests
test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Benchmarks against the running stack (`make run` first); each prints ratios against the raw clients.
bench: SETUP_FLAGS = --for-bench
bench: setup
	$(BIN)/python -m bench.kv

down:
	$(BIN)/ams down

status:
	$(BIN)/ams status

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/mypy .

clean: down
	rm -rf .ams
