# Two commands for a newcomer: `make run` (whole pipeline on the synthetic cohort) and `make test`.
PY := .venv/bin/python
CONFIG ?= configs/demo.yaml
RUN_DIR ?= runs/demo

.PHONY: setup run test test-fast test-min test-latest lock bench bench-scale lint clean help

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

setup:  ## create .venv and install (idempotent)
	@bash setup.sh

run: setup  ## run every stage on the built-in synthetic cohort into runs/demo/
	$(PY) -m stsae run --config $(CONFIG) --run-dir $(RUN_DIR)

test: setup  ## the full test suite (includes slow end-to-end tests), one pytest-xdist worker per core
	$(PY) -m pytest -q -n auto

test-fast: setup  ## unit tests only
	$(PY) -m pytest -q -n auto -m "not slow"

test-min: setup  ## fast tests against the LOWEST versions pyproject.toml allows (.venv-min)
	bash scripts/test_bounds.sh lowest

test-latest: setup  ## fast tests against the NEWEST releases (.venv-latest)
	bash scripts/test_bounds.sh highest

lock: setup  ## regenerate requirements.lock from pyproject.toml (a deliberate commit)
	bash scripts/lock.sh

bench: setup  ## throughput benchmarks (JSON in benchmarks/results/)
	$(PY) benchmarks/bench_synthetic.py
	$(PY) benchmarks/bench_extract.py
	$(PY) benchmarks/bench_train.py

bench-scale: setup  ## 1M-window scale run (long; not part of make test)
	$(PY) benchmarks/bench_scale.py

lint: setup  ## ruff
	$(PY) -m ruff check src tests benchmarks

clean:  ## remove runs and caches (keeps .venv)
	rm -rf runs .pytest_cache .ruff_cache .venv-min .venv-latest
