# The two commands of the README: `make demo` and `make test`. Each sets up .venv on a
# fresh machine first (idempotent: a stamp file remembers the install).
PYTHON ?= python3
VENV ?= .venv
# The CPU build lies on this disk; a bare `torch` would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.bluepri-installed
PYTEST_ARGS ?=

.PHONY: setup demo test lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/bluepri demo

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check platform tests jobs bench
	$(BIN)/ruff format --check platform tests jobs bench

format: setup
	$(BIN)/ruff check --fix platform tests jobs bench
	$(BIN)/ruff format platform tests jobs bench

clean:
	rm -rf demo-out .pytest_cache .ruff_cache
