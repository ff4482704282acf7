# Every target sets up what it needs first: a fresh clone runs `make demo` or `make test` directly.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup system-deps demo test lint format bench clean

setup: $(STAMP) system-deps

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	$(PY) -m pip install -q -e '.[dev,bench]'
	touch $(STAMP)

# nginx, wrk and curl: the real third-party peers the integration tests and benchmarks drive.
system-deps:
	@scripts/install-system-deps

# The demo needs only the Python environment: no system packages, no network once installed.
demo: $(STAMP)
	$(VENV)/bin/shadowd demo --duration 30

test: setup
	$(PY) -m ruff check shadowd tests benchmarks
	$(PY) -m mypy
	$(PY) -m pytest

lint: $(STAMP)
	$(PY) -m ruff check shadowd tests benchmarks
	$(PY) -m ruff format --check shadowd tests benchmarks
	$(PY) -m mypy

format: $(STAMP)
	$(PY) -m ruff format shadowd tests benchmarks
	$(PY) -m ruff check --fix shadowd tests benchmarks

bench: setup
	$(PY) benchmarks/run.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
