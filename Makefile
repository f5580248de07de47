# `make dev` and `make test` bootstrap everything they need (virtualenv,
# packages, embedded PostgreSQL; for browser tests supabase-js from npm and,
# in CI, Debian's Chromium) on a machine that has python3, node and npm.
# Vercel runs Python 3.12: develop and test on it. Found on PATH or under pyenv.
PYTHON ?= $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12 /usr/bin/python3.12 /usr/local/bin/python3.12; do \
  command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' >/dev/null 2>&1 && { echo $$p; break; }; \
  done)
ifeq ($(PYTHON),)
$(error Python 3.12 not found (Vercel runs 3.12): install it, or run make PYTHON=/path/to/python3.12)
endif
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
JS_DIR := tests/browser/js
JS_STAMP := $(JS_DIR)/node_modules/.installed
# supabase-js for the demo console, served by `ai-jobs dev` from the checkout (offline).
PUBLIC_DIR := public
PUBLIC_STAMP := $(PUBLIC_DIR)/node_modules/.installed
VERCEL_DIR := tests/vercel
VERCEL_STAMP := $(VERCEL_DIR)/node_modules/.installed
# The uv that Vercel's Python builder (in the pinned CLI) installs for itself.
UV_VERSION := 0.10.11
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: dev test install public-js chromium pgcron migrate bench vercel-build clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

$(JS_STAMP): $(JS_DIR)/package.json $(JS_DIR)/package-lock.json
	cd $(JS_DIR) && npm ci --no-audit --no-fund --silent
	touch $(JS_STAMP)

$(PUBLIC_STAMP): $(PUBLIC_DIR)/package.json $(PUBLIC_DIR)/package-lock.json
	cd $(PUBLIC_DIR) && npm ci --no-audit --no-fund --silent
	touch $(PUBLIC_STAMP)

# Never stops `make dev`: without npm (or offline on a first run) the console polls,
# and `ai-jobs dev` says so in one line.
public-js:
	@if [ -f $(PUBLIC_DIR)/package-lock.json ]; then \
	  if command -v npm >/dev/null 2>&1; then \
	    $(MAKE) -s --no-print-directory $(PUBLIC_STAMP) || echo "note: npm ci in public/ failed: the demo console will poll"; \
	  elif [ ! -f $(PUBLIC_STAMP) ]; then \
	    echo "note: npm not found: supabase-js is not installed in public/node_modules; the demo console will poll"; \
	  fi; \
	fi

# `npm install` installs the lock's versions; `npm ci` refuses this lock because
# the CLI names native helpers for other platforms that the registry lacks.
$(VERCEL_STAMP): $(VERCEL_DIR)/package.json $(VERCEL_DIR)/package-lock.json
	cd $(VERCEL_DIR) && npm install --no-audit --no-fund --silent
	touch $(VERCEL_STAMP)

# Browser tests use Debian's Chromium (Playwright cannot download browsers here).
# CI installs it; elsewhere set AI_JOBS_INSTALL_CHROMIUM=1 or install it yourself.
chromium:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ -n "$$CI" ] || [ "$$AI_JOBS_INSTALL_CHROMIUM" = 1 ]; then \
	    $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "note: chromium is not installed; browser tests will be skipped (apt-get install chromium)"; \
	  fi; \
	fi

# Supabase Cron tests run the real pg_cron in a PostgreSQL 15 cluster (Debian's
# postgresql-15-cron). CI installs it; elsewhere set AI_JOBS_INSTALL_PGCRON=1 or
# install it yourself.
pgcron:
	@if [ ! -f /usr/share/postgresql/15/extension/pg_cron.control ]; then \
	  if [ -n "$$CI" ] || [ "$$AI_JOBS_INSTALL_PGCRON" = 1 ]; then \
	    $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq postgresql-15 postgresql-15-cron >/dev/null; \
	  else \
	    echo "note: pg_cron is not installed; Supabase Cron tests will be skipped (apt-get install postgresql-15-cron)"; \
	  fi; \
	fi

install: $(STAMP)

# make dev PORT=8001 (or AI_JOBS_PORT=8001 make dev); PORT=0 picks any free port.
PORT ?=
dev: $(STAMP) public-js
	$(BIN)/ai-jobs dev$(if $(PORT), --port $(PORT))

test: $(STAMP) $(JS_STAMP) public-js chromium pgcron
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Optional check before deploying, not part of `make test`: build offline what
# `vercel deploy` would upload, as Vercel builds it, and check the bundle
# (tests/vercel/build_check.py; output in .vercel/deploy-check/).
vercel-build: $(STAMP) $(VERCEL_STAMP)
	@$(BIN)/uv --version 2>/dev/null | grep -qE '^uv $(UV_VERSION)( |$$)' || $(BIN)/python -m pip install --quiet 'uv==$(UV_VERSION)'
	$(BIN)/python $(VERCEL_DIR)/build_check.py

migrate: $(STAMP)
	$(BIN)/ai-jobs migrate

# The throughput run also measures the worker as it was before the fast path
# (issue 13), from the same run and database: that commit's package, exported.
BENCH_BEFORE ?= ee02aee
# import_time.py builds the function as make vercel-build does (the Vercel CLI and uv).
bench: $(STAMP) $(VERCEL_STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	@$(BIN)/uv --version 2>/dev/null | grep -qE '^uv $(UV_VERSION)( |$$)' || $(BIN)/python -m pip install --quiet 'uv==$(UV_VERSION)'
	rm -rf .bench-before && mkdir -p .bench-before && git archive $(BENCH_BEFORE) shared/src | tar -x -C .bench-before
	$(BIN)/python bench/throughput.py --repeat 3 --ai-jobs-variant before=.bench-before/shared/src
	$(BIN)/python bench/throughput.py --systems ai-jobs pgqueuer --workers 1 2 4 --repeat 3 --ai-jobs-concurrency 1 2 --enqueue-single 0 --enqueue-bulk 0 --json bench/results/throughput-concurrency.json --png bench/throughput-concurrency.png
	$(BIN)/python bench/throughput.py --systems ai-jobs pgqueuer --workers 1 --repeat 3 --ai-jobs-concurrency 1 2 3 4 --enqueue-single 0 --enqueue-bulk 0 --json bench/results/throughput-loops.json --png bench/throughput-loops.png
	$(BIN)/python bench/db_floor.py
	$(BIN)/python bench/claim_limits.py
	$(BIN)/python bench/latency.py
	$(BIN)/python bench/create_latency.py
	$(BIN)/python bench/handoff_tls.py
	$(BIN)/python bench/map_cost.py
	$(BIN)/python bench/map_parallel.py
	$(BIN)/python bench/import_time.py
	$(BIN)/python bench/retention.py
	$(BIN)/python bench/crash_test.py
	$(BIN)/python bench/load_test.py

clean:
	rm -rf $(VENV) .pytest_cache test-artifacts .bench-before $(JS_DIR)/node_modules $(PUBLIC_DIR)/node_modules $(VERCEL_DIR)/node_modules .vercel/deploy-check
