# Two entry points for a fresh machine: `make run` and `make test` (each installs what it needs).
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup postgres run test test-unit lint format typecheck bench clean

# uv from PyPI, then the locked dependencies into .venv.
setup:
	@python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	python3 -m uv sync --frozen --python python3

# Debian's PostgreSQL server binaries, for the tests of the application database on it.
postgres:
	@bash .ci/install-postgres.sh

run: setup
	$(VENV)/bin/rollup run

test: setup postgres lint
	$(PY) -m pytest -q

test-unit: setup
	$(PY) -m pytest -q -m "not integration"

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: setup
	@command -v hey >/dev/null || (apt-get update -qq && apt-get install -y -qq hey)
	$(PY) -m loadtest.ingest_bench

clean:
	rm -rf .rollup .pytest_cache .mypy_cache .ruff_cache
