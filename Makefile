# The two commands of the README: `make demo` and `make test`. Each sets up .venv on a
# fresh machine first (idempotent: a stamp file remembers the install).
PYTHON ?= python3
VENV ?= .venv
# The CPU build lies on this disk; a bare `torch` would pull a multi-GB CUDA build.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.bluepri-installed
PYTEST_ARGS ?=
# The page test drives Debian's chromium through Playwright's Python client (the dev extra);
# no browser is ever downloaded (`playwright install` is not used).
CHROMIUM ?= /usr/bin/chromium

.PHONY: setup browser demo test lint format clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

# Debian's chromium, when missing (as root, or through sudo): the page and gallery tests
# open pages in it, and fail without it.
browser:
	@test -x $(CHROMIUM) || { \
	  SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	  $$SUDO apt-get update -q && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }
	@$(CHROMIUM) --version 2>/dev/null

demo: setup
	$(BIN)/bluepri demo

test: setup browser
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check platform tests jobs bench
	$(BIN)/ruff format --check platform tests jobs bench

format: setup
	$(BIN)/ruff check --fix platform tests jobs bench
	$(BIN)/ruff format platform tests jobs bench

clean:
	rm -rf demo-out .pytest_cache .ruff_cache
