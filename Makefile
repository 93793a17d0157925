# Two commands for a newcomer: `make run` (whole pipeline on the synthetic cohort) and `make test`.
PY := .venv/bin/python
CONFIG ?= configs/demo.yaml
RUN_DIR ?= runs/demo

.PHONY: setup run test test-fast bench bench-scale lint clean help

help:  ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed 's/:.*##/\t/'

setup:  ## create .venv and install (idempotent)
	@bash setup.sh

run: setup  ## run every stage on the built-in synthetic cohort into runs/demo/
	$(PY) -m stsae run --config $(CONFIG) --run-dir $(RUN_DIR)

test: setup  ## the full test suite (includes slow end-to-end tests)
	$(PY) -m pytest -q

test-fast: setup  ## unit tests only
	$(PY) -m pytest -q -m "not slow"

bench: setup  ## throughput benchmarks (JSON in benchmarks/results/)
	$(PY) benchmarks/bench_synthetic.py
	$(PY) benchmarks/bench_extract.py
	$(PY) benchmarks/bench_train.py

bench-scale: setup  ## 1M-window scale run (long; not part of make test)
	$(PY) benchmarks/bench_scale.py

lint: setup  ## ruff
	$(PY) -m ruff check src tests benchmarks

clean:  ## remove runs and caches (keeps .venv)
	rm -rf runs .pytest_cache .ruff_cache
