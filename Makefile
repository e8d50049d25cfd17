# The one task vocabulary: README, CI (.ci/run) and hooks call these targets and nothing else.
PYTHON ?= python3
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup run test test-fast test-slow test-quality lint format bench serve docs docs-serve clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -c constraints.txt -e '.[dev]'  # the versions the tests passed with
	touch $@

setup: $(VENV)/.installed  ## create .venv and install cdgan with its tools

run: setup  ## the whole pipeline on the embedded digits data: prepare -> train -> evaluate -> register
	OMP_NUM_THREADS=2 dvc repro  # the cores of these machines; RESULTS.md has the digits step on 1 and 2 threads
	dvc metrics show

SLOW_LOG := .pytest-slow.log

# what CI runs: ruff, then the two tiers side by side. The slow tier (single-threaded trainings) runs in the
# background on two xdist workers, its output in $(SLOW_LOG), printed when both are done; either tier failing
# fails make. Its trainings are independent, so two workers keep both cores busy while the other tier waits on
# servers and subprocesses. tests/conftest.py's scheduler keeps tests/test_dvc_exp.py on one worker (its module
# fixture runs once) and starts the tests marked heavy first; each tier prints its 25 slowest tests.
test: setup docs  ## what CI runs: the docs build (--strict), ruff, every test: the slow tier in the background
	ruff check .
	@pytest -m slow -n 2 --durations=25 > $(SLOW_LOG) 2>&1 & slow=$$!; \
	trap 'kill $$slow 2>/dev/null' INT TERM; \
	echo "slow tier (quality, dvc exp, serving) running in the background: $(SLOW_LOG)"; \
	pytest -m "not slow and not quality" --durations=25; rest=$$?; \
	wait $$slow; slow_rc=$$?; \
	echo "===== slow tier ($(SLOW_LOG)) ====="; cat $(SLOW_LOG); \
	echo "exit codes: slow tier $$slow_rc, the others $$rest"; \
	test $$rest -eq 0 && test $$slow_rc -eq 0

test-fast: setup  ## the edit loop: unit and in-process tests, no subprocess, server, DVC or Prefect (under 3 min)
	pytest -m "not slow and not integration and not quality" --durations=10

test-slow: setup  ## only the slow tests (minutes of training each): quality targets, dvc exp, serving, compile
	pytest -m slow -n auto --dist load

# the full targets of the longest presets (stacked digits, MNIST, stacked MNIST): 10-30 min of training each, too
# long for CI, which runs their shortened checks in the slow tier instead (tests/test_quality.py says how their
# bounds were set)
test-quality: setup  ## the full quality targets of the longest presets, one seed each (about an hour)
	pytest -m quality -n 2 --durations=25

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

docs: setup  ## the documentation site into site/; --strict: a broken link, a missing page or a bad reference fails
	NO_MKDOCS_2_WARNING=1 mkdocs build --strict --quiet  # the variable silences Material's banner about its successor

docs-serve: setup  ## preview the documentation site on 127.0.0.1:8000, rebuilt on every edit
	NO_MKDOCS_2_WARNING=1 mkdocs serve --dev-addr 127.0.0.1:8000

clean:  ## pipeline outputs and the local MLflow store (not .venv)
	rm -rf data/prepared models metrics plots mlruns dvc.lock
