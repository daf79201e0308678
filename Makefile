# Quick start: `make demo` runs the demo pipeline on a local Kafka; `make test` runs the tests.
# Both set themselves up (venv, packages, Kafka jars) idempotently.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The extras installed; CI leaves out bench (matplotlib, numpy, redis...: the benchmarks' peers
# and plots, which no test imports).
EXTRAS ?= dev,bench,docs

.PHONY: install kafka demo demo-downstream test lint dist docs bench chaos broker-start broker-stop clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(EXTRAS)]'
	touch $(STAMP)

install: $(STAMP)

kafka: $(STAMP)
	$(PY) -m faust_backpressure.testing.broker fetch

# DEMO_ARGS="--batch 500": the demo's pipeline in batch mode (docs/batching.md)
demo: kafka
	$(PY) -m examples.demo $(DEMO_ARGS)

# a downstream guard: 3,000 orders through a quota'd API that fails for 5 s (docs/downstream.md)
demo-downstream: kafka
	$(PY) -m examples.downstream_demo

# pytest-xdist workers share one broker (tests/conftest.py), handed one test at a time
# (slowest collected first). Not --dist loadgroup: after a worker crash (a hung test ended by
# pytest-timeout) its scheduler gave the replacement worker nothing and the run never ended.
# The suite is mostly waiting for real workers to join, rebalance and settle, so more test
# workers than cores pay. Clean-clone CI runs at 31c5d73 (suite / whole CI): 4 workers
# 577 s / 642 s, 5: 549 s / 615 s, 6: 521 s / 593 s. On 2026-12-06 at 6: 420-465 s suites,
# 472-509 s CI, but 3 of 4 runs failed timing-sensitive distributed-limiter tests (evenness,
# shared-bucket accuracy, an announced quota: 6 test workers' Faust workers on 2 cores delay
# lease grants) and one keyed test hung in its group join: back to 5, fewer at once.
PYTEST_WORKERS ?= 5
test: kafka
	$(PY) -m pytest -n $(PYTEST_WORKERS) --maxschedchunk 1

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy faust_backpressure

# A release's files: the sdist, then the wheel built from it (python -m build), into dist/;
# twine's check of their metadata (what PyPI would refuse); the wheel must hold the package
# data (py.typed, the dashboard's static files, the Kafka pom). A few seconds on a warm machine.
WHEEL_DATA := py.typed app/static/dashboard.html app/static/dashboard.js \
	app/static/dashboard.css testing/kafka-pom.xml
dist: $(STAMP)
	rm -rf dist
	$(PY) -m build --outdir dist .
	$(VENV)/bin/twine check --strict dist/*
	@listing="$$($(PY) -m zipfile -l dist/*.whl)"; for f in $(WHEEL_DATA); do \
	  echo "$$listing" | grep -q "^faust_backpressure/$$f " \
	    || { echo "the wheel lacks faust_backpressure/$$f" >&2; exit 1; }; \
	done; echo "wheel has the package data: $(WHEEL_DATA)"

# The docs site with the API reference from the docstrings (mkdocs.yml), into site/: open
# site/index.html. --strict: a broken link, anchor or API reference fails the build. Offline.
# NO_MKDOCS_2_WARNING: mkdocs-material's notice of its end of life (May 2027), printed on each build.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

bench: kafka
	$(PY) bench/limiters.py
	$(PY) bench/distributed.py
	$(PY) bench/agent_overhead.py

# The full chaos run (not in CI): 100,000 records, 3 SIGKILLs, a 20 s broker outage, both modes,
# the per-event and the batch pipeline at once. CHAOS_ARGS="--pipeline batch": that one alone
chaos: kafka
	$(PY) bench/chaos.py $(CHAOS_ARGS)

broker-start: kafka
	$(PY) -m faust_backpressure.testing.broker start

broker-stop: $(STAMP)
	$(PY) -m faust_backpressure.testing.broker stop

clean:
	rm -rf $(VENV) .kafka .pytest_cache .mypy_cache .ruff_cache site
