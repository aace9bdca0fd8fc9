# Quick start: `make demo` and `make test` work on a fresh machine with Python 3.11 and make.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: demo test lint typecheck unit bench clean install-%

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@ $(DEMO_STAMP)

# the demo needs only scikit-learn and skl2onnx beside the core, not the test tools or torch
$(DEMO_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[sklearn]'
	touch $@

# one extra into .venv from this checkout: make install-serve, install-spark, install-train, …
install-%: | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[$*]'

demo: $(DEMO_STAMP)
	$(BIN)/sluice demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy --strict src

unit: $(STAMP)
	$(BIN)/pytest -q

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python bench/batch_throughput.py

clean:
	rm -rf $(VENV) demo-data demo-output models bench/.data .pytest_cache .mypy_cache .ruff_cache
