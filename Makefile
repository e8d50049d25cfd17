# The one task vocabulary: README, CI (.ci/run) and hooks call these targets and nothing else.
PYTHON ?= python3
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup run test test-slow lint format bench serve clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -e '.[dev]'
	touch $@

setup: $(VENV)/.installed  ## create .venv and install cdgan with its tools

run: setup  ## the whole pipeline on the embedded digits data: prepare -> train -> evaluate -> register
	dvc repro
	dvc metrics show

test: setup  ## lint, then the pytest suite (CPU, about 13 min on 2 cores)
	ruff check .
	pytest

test-slow: setup  ## the slow quality tests (minutes of training): grid25 mode coverage
	pytest -m slow

lint: setup
	ruff format --check .
	ruff check .

format: setup
	ruff format .
	ruff check --fix .

bench: setup  ## benchmarks printing JSON (see benchmarks/)
	python benchmarks/run.py --quick

serve: setup  ## Prefect server + deployments + worker + MLflow UI on 127.0.0.1; Ctrl-C stops them all
	bash pipelines/serve.sh

clean:  ## pipeline outputs and the local MLflow store (not .venv)
	rm -rf data/prepared models metrics plots mlruns dvc.lock
