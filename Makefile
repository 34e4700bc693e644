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
# The cluster test scrapes the local multi-node cluster with Debian's Prometheus.
PROMETHEUS ?= /usr/bin/prometheus
APT_INSTALL = SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
	  $$SUDO apt-get update -q && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q

.PHONY: setup browser prometheus demo cluster-demo test lint format clean bench-script-env

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
	@test -x $(CHROMIUM) || { $(APT_INSTALL) chromium; }
	@$(CHROMIUM) --version 2>/dev/null

prometheus:
	@test -x $(PROMETHEUS) || { $(APT_INSTALL) prometheus; }
	@$(PROMETHEUS) --version 2>&1 | head -1

demo: setup
	$(BIN)/bluepri demo

# The same platform as Ray Jobs on a real multi-node Ray cluster on this machine
# (cluster/local/): start it, submit train, search and render, stop it.
cluster-demo: setup
	PATH="$(abspath $(BIN)):$$PATH" cluster/local/demo.sh

test: setup browser prometheus
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check platform tests jobs bench cluster dashboards
	$(BIN)/ruff format --check platform tests jobs bench cluster dashboards

format: setup
	$(BIN)/ruff check --fix platform tests jobs bench cluster dashboards
	$(BIN)/ruff format platform tests jobs bench cluster dashboards

# bench/overhead.py's baseline: diffusers' example script in a venv of its own (another torch,
# for torchvision), outside the repo: SCRIPT_VENV/bin/python and the script inside it.
SCRIPT_VENV ?= /work/script-venv
bench-script-env: setup
	bench/script_env.sh $(SCRIPT_VENV)

clean:
	rm -rf demo-out .pytest_cache .ruff_cache
