# Quick start: `make demo` and `make test` work on a fresh machine with Python 3.11 and make.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
DEMO_STAMP := $(VENV)/.installed-demo
# the tests' `mlflow server` runs from its own venv: the full mlflow package pins versions (pyarrow)
# that the project's venv must not take; the project itself needs only the client (mlflow-skinny)
MLFLOW_VENV := .venv-mlflow

.PHONY: demo test lint typecheck unit bench clean mlflow-server install-% bytecode

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

$(MLFLOW_VENV)/bin/mlflow:
	$(PYTHON) -m venv $(MLFLOW_VENV)
	$(MLFLOW_VENV)/bin/pip install --quiet --upgrade pip
	$(MLFLOW_VENV)/bin/pip install --quiet 'mlflow>=3.17,<4'

mlflow-server: $(MLFLOW_VENV)/bin/mlflow

# byte-compile the sources as installing a wheel does: an editable install leaves that to the first
# import, which PYTHONDONTWRITEBYTECODE=1 turns off, and then every CLI run, pool worker and
# Spark or Ray worker compiles each module it imports again (0.08 s of a small `sluice predict`)
bytecode: | $(BIN)/python
	$(BIN)/python -m compileall -q src

demo: $(DEMO_STAMP) bytecode
	$(BIN)/sluice demo

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/lint-imports --no-cache

typecheck: $(STAMP)
	$(BIN)/mypy --strict src

unit: $(STAMP) $(MLFLOW_VENV)/bin/mlflow bytecode
	$(BIN)/pytest -q

test: lint typecheck unit

bench: $(STAMP)
	$(BIN)/python bench/batch_throughput.py

clean:
	rm -rf $(VENV) $(MLFLOW_VENV) demo-data demo-output models bench/.data .pytest_cache .mypy_cache .ruff_cache
