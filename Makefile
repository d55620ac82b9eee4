# Two entry points for a fresh machine: `make run` and `make test` (each installs what it needs).
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup web browser postgres run test test-unit lint format typecheck bench clean

# uv from PyPI, then the locked dependencies into .venv; then the browser bundles.
setup:
	@python3 -m uv --version >/dev/null 2>&1 || python3 -m pip install --quiet uv
	python3 -m uv sync --frozen --python python3
	@$(MAKE) --no-print-directory web

# Dashboard and tracker bundles (web/ -> web/dist, git-ignored), from the npm lockfile.
# File targets: nothing runs when the bundles are newer than their sources.
WEB_SOURCES := web/build.mjs $(shell find web/src -type f 2>/dev/null)
web: web/dist/.built
web/node_modules/.installed: web/package.json web/package-lock.json
	@command -v npm >/dev/null || (apt-get update -qq && apt-get install -y -qq nodejs npm)
	cd web && npm ci --no-audit --no-fund --loglevel=error
	@touch $@
web/dist/.built: web/node_modules/.installed $(WEB_SOURCES)
	cd web && node build.mjs
	@touch $@

# Debian's Chromium for the browser tests (driven by Playwright, which uses it as is).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

# Debian's PostgreSQL server binaries, for the tests of the application database on it.
postgres:
	@bash .ci/install-postgres.sh

run: setup
	$(VENV)/bin/rollup run

test: setup browser postgres lint
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
	$(PY) -m loadtest.bench

clean:
	rm -rf .rollup .pytest_cache .mypy_cache .ruff_cache web/dist web/node_modules tests/artifacts
