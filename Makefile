# wlex: every target makes and uses .venv by itself (Python 3.11+, Java 17+ and Maven on PATH).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.wlex-installed
# rustup puts cargo in ~/.cargo/bin, which a fresh shell may not have on PATH; the
# native matching core (services/matching/native) needs it to build.
export PATH := $(HOME)/.cargo/bin:$(PATH)
NATIVE := services/matching/native

.PHONY: demo test test-unit test-integration test-e2e test-faults bench lint clean

$(STAMP): pyproject.toml $(NATIVE)/Cargo.toml $(NATIVE)/Cargo.lock $(NATIVE)/pyproject.toml $(NATIVE)/build.rs $(wildcard $(NATIVE)/src/*.rs)
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "wlex needs Python 3.11+"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,local]'
	$(PY) -m pip install --quiet ./$(NATIVE)
	touch $(STAMP)

## demo: the local exchange (PostgreSQL, Kafka, every service) until Ctrl-C
demo: $(STAMP)
	$(VENV)/bin/wlex demo

## test: the whole suite: unit tests first, then integration, end-to-end, then fault tests
test: $(STAMP)
	$(PY) -m pytest -p no:cacheprovider tests/unit tests/integration tests/e2e tests/faults

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit

test-integration: $(STAMP)
	$(PY) -m pytest tests/integration

test-e2e: $(STAMP)
	$(PY) -m pytest tests/e2e

test-faults: $(STAMP)
	$(PY) -m pytest tests/faults

## bench: the benchmarks; results in loadtests/results/, figures in docs/performance.md
BENCH_STAMP := $(VENV)/.wlex-bench-installed

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev,local,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) -m loadtests.bench_core
	$(PY) -m loadtests.bench_core_mypyc
	$(PY) -m loadtests.bench_native_ablation
	$(PY) -m loadtests.bench_pipeline
	$(PY) -m loadtests.bench_ledger
	$(PY) -m loadtests.bench_gateway
	$(PY) -m loadtests.bench_startup

lint: $(STAMP)
	$(VENV)/bin/ruff check services tests loadtests
	$(VENV)/bin/ruff format --check services tests loadtests

## clean: stop the local runtime and delete its data, logs and jar cache (.wlex/)
clean:
	-test -x $(VENV)/bin/wlex && $(VENV)/bin/wlex dev down
	rm -rf .wlex .pytest_cache .ruff_cache .hypothesis
