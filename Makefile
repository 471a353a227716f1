# `make demo` and `make test` each bootstrap .venv on a fresh machine.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.kairos-installed
export DAGSTER_HOME ?= $(CURDIR)/.dagster_home
# one planned event per asset (not per week) when a run covers a range of weeks: see instance_tuning.py
export DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS ?= true

.PHONY: demo test bench ui lint venv clean-data

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	@$(BIN)/python -m pip install -q --upgrade pip uv >/dev/null
	$(BIN)/uv pip install --python $(BIN)/python -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)

$(DAGSTER_HOME)/dagster.yaml: deploy/dagster.yaml
	@mkdir -p $(DAGSTER_HOME) && cp deploy/dagster.yaml $(DAGSTER_HOME)/dagster.yaml

demo: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	$(BIN)/kairos demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile -q -p no:cacheprovider

bench: $(STAMP)
	$(BIN)/uv pip install --python $(BIN)/python -q -e '.[dev,bench]'
	$(BIN)/python -m benchmarks.run

ui: $(STAMP) $(DAGSTER_HOME)/dagster.yaml
	@set -a; if [ -f data/demo.env ]; then . data/demo.env; fi; set +a; \
	$(BIN)/kairos ui --host 127.0.0.1 --port 3000

lint: $(STAMP)
	$(BIN)/ruff check kairos_dagster kairos_dagster_tests benchmarks

clean-data:
	rm -rf data/kairos.duckdb data/kairos.duckdb.wal data/models outputs .dagster_home
