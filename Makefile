# Outpost: every target sets itself up. `make demo` and `make test` work on a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.outpost-installed
PYTEST := $(VENV)/bin/pytest
TORCH  := torch==2.14.1 torchvision==0.29.1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup demo test lint test-slow test-gpu test-netns test-all bench bench-import clean

setup: $(STAMP)

# torch first, pinned to the release this machine holds on disk (see ENVIRONMENT notes in README),
# then the project with every role's extras.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade "pip>=24"
	$(PIP) install -q $(TORCH)
	$(PIP) install -q -e ".[all,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/outpost demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

test: lint
	$(PYTEST) -m "not slow and not gpu and not netns and not gui" -q

test-slow: $(STAMP)
	$(PYTEST) -m slow -q

test-gpu: $(STAMP)
	$(PYTEST) -m gpu -q

test-netns: $(STAMP)
	$(PYTEST) -m netns -q

test-all: lint
	$(PYTEST) -q

bench: $(STAMP)
	$(PY) benchmarks/runtime_overhead.py
	$(PY) benchmarks/dataset_import.py

bench-import: $(STAMP)
	$(PY) benchmarks/dataset_import.py

clean:
	rm -rf $(VENV) .outpost-demo .pytest_cache .ruff_cache
