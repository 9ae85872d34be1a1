# The README's commands. `make train` and `make test` install what is missing into .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
# pip's notes about local mirror folders it skips are noise; real errors still fail the build.
QUIET_PIP := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }

.PHONY: install train test lint bench repro clean

install: $(STAMP)

# Re-installs only when pyproject.toml changes (the stamp is newer otherwise).
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip $(QUIET_PIP)
	$(BIN)/pip install --quiet -e ".[dev]" $(QUIET_PIP)
	touch $(STAMP)

train: $(STAMP)
	$(BIN)/sparse-lab train $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check sparse_lab tests scripts
	$(BIN)/ruff format --check sparse_lab tests scripts

# Regenerates docs/benchmarks.md from every scripts/bench_*.py; `make bench QUICK=1` is a smoke run.
bench: $(STAMP)
	$(BIN)/python scripts/bench.py $(if $(QUICK),--quick) $(ARGS)

# The papers' claims as seeded sweeps, judged and written to docs/results.md (CLAIM=<name>: one; QUICK=1: smoke run).
repro: $(STAMP)
	$(BIN)/sparse-lab repro $(CLAIM) $(if $(QUICK),--quick) $(ARGS)

clean:
	rm -rf outputs/runs outputs/multirun wandb .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
