# The two commands of the README. Everything else here serves them.
#   make demo   create .venv, install, run the fraud example on embedded defaults
#   make test   create .venv if needed, install the dev extras, run lint, types and the suite

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Installed before the project so that `torch>=2.4` is already satisfied: a range on its own
# would make pip download a multi-GB CUDA build. Override with TORCH=... (e.g. a CUDA wheel).
TORCH  ?= torch==2.13.0
PIP    := $(BIN)/python -m pip --disable-pip-version-check --quiet

.PHONY: demo test check lint format types bench mutate clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(PIP) install "$(TORCH)"
	$(PIP) install -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(PIP) install "$(TORCH)"
	$(PIP) install -e ".[dev]"
	touch $(VENV)/.installed $@

demo: $(VENV)/.installed
	$(BIN)/backline demo

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: $(VENV)/.installed-dev
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

types: $(VENV)/.installed-dev
	$(BIN)/mypy

check: lint types

test: check
	$(BIN)/python -m pytest

bench: $(VENV)/.installed-dev
	$(BIN)/python benchmarks/ingest.py

# Mutation testing of the invariant modules (docs/testing.md): a benchmark, not part of `make
# test`, so mutmut is installed here only, pinned. Options: make mutate MUTATE_ARGS="--help"
MUTMUT ?= mutmut==3.8.1
$(VENV)/.installed-mutate: $(VENV)/.installed-dev
	$(PIP) install "$(MUTMUT)"
	touch $@

mutate: $(VENV)/.installed-mutate
	$(BIN)/python benchmarks/mutate.py $(MUTATE_ARGS)

clean:
	rm -rf $(VENV) demo-project .pytest_cache .mypy_cache .ruff_cache
