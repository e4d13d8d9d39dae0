# graceful-calc: every task of the original demo's Makefile, plus the lab.
# `make help` lists the targets. Targets that need a tool we cannot install here
# (docker engine, kubectl, doctl) fail with a message that names it.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 4000
CALC_URL ?= $(shell cat .calc-url 2>/dev/null || echo http://127.0.0.1:$(PORT))
export CALC_URL

.PHONY: help setup system-deps test lint typecheck pytest local-server local-test bench demo

DEMO_VERSIONS ?= v3,v4,v5,v8,v9,v10

help: ## List every target with its description
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-32s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# Exactly the tested versions: every dependency from the lock with its hash (mk/lock.mk),
# then the project itself, built with the locked setuptools and nothing else fetched.
$(BIN)/calc: pyproject.toml requirements/dev.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --require-hashes -r requirements/dev.lock
	$(BIN)/pip install --quiet --no-deps --no-build-isolation -e '.[lab,bench,dev]'
	@touch $@

setup: $(BIN)/calc system-deps cluster-bins-for-setup ## Create .venv with everything installed, plus haproxy and influxd
	@echo "setup done: $(BIN)/calc, $(BIN)/lab, $$(command -v haproxy), $$(command -v influxd)"

system-deps: ## Install haproxy, influxdb, openssl (lab TLS), nftables (lab node-failure) from Debian where missing; a Docker Engine (docker.io, started) where none answers (root or sudo)
	@missing=""; \
	command -v haproxy >/dev/null || missing="$$missing haproxy"; \
	command -v influxd >/dev/null || missing="$$missing influxdb"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v nft >/dev/null || [ -x /usr/sbin/nft ] || missing="$$missing nftables"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then sudo=""; \
	  elif command -v sudo >/dev/null; then sudo="sudo"; \
	  else echo "error: need root or sudo to apt-get install$$missing" >&2; exit 1; fi; \
	  echo "installing$$missing with apt-get"; \
	  $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -qq $$missing >/dev/null; \
	fi

lint: $(BIN)/calc ## ruff check + format check
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(BIN)/calc ## mypy (strict on graceful, calc, lab)
	$(BIN)/mypy

# CI_NO_SKIPS=1: a skip not on tests/skip-allowlist.txt fails the run (tests/skipcheck.py).
# Two passes: every test but the `alone` ones side by side on PYTEST_WORKERS workers
# (pytest-xdist; a file's tests stay on one worker, so a module's cluster is started once),
# then the `alone` ones (sub-second bounds, machine-wide state: tests/conftest.py) by
# themselves. Both passes run, and
# the first failure's status is the target's; a pass with nothing to run (PYTEST_ARGS
# naming only tests of the other kind) is no failure, unless neither had anything.
PYTEST_WORKERS ?= 4
pytest: setup test-deps ## Run the test suite only (with the lab's calc end-to-end runs), side by side on PYTEST_WORKERS (4), then the `alone` tests by themselves; fails on a skip not on tests/skip-allowlist.txt
	@status=0; empty=0; \
	run() { echo "pytest $$*"; CI_NO_SKIPS=1 LAB_SLOW=1 $(BIN)/pytest "$$@" $(PYTEST_ARGS); code=$$?; \
	  if [ $$code = 5 ]; then empty=$$((empty + 1)); \
	  elif [ $$code != 0 ] && [ $$status = 0 ]; then status=$$code; fi; }; \
	run -n $(PYTEST_WORKERS) --dist loadfile -m "not alone"; \
	run -m alone; \
	if [ $$empty = 2 ]; then echo "pytest: no test to run in either pass" >&2; status=5; fi; \
	exit $$status

test: setup cluster-bins lint typecheck pytest test-server-oldest ## Set up, then lint, type-check and run every test (the CI command), and graceful's on the oldest supported servers

local-server: $(BIN)/calc ## Run calc locally on PORT (default 4000), profile from CALC_PROFILE (default v10)
	$(BIN)/calc serve --host 127.0.0.1 --port $(PORT)

local-test: ## POST {"numbers": [1, 2, 3, 4]} to CALC_URL/sum
	@curl -sS --fail-with-body -H 'content-type: application/json' \
	  -d '{"numbers": [1, 2, 3, 4]}' $(CALC_URL)/sum; echo

demo: setup ## Main job: a quick lab matrix of the telling versions (DEMO_VERSIONS), table + plots in out/demo
	$(BIN)/lab matrix --quick --versions $(DEMO_VERSIONS) --out out/demo

bench: setup ## Same k6 load on calc v10 and on plain FastAPI+uvicorn; prints figures and ratios
	$(BIN)/python bench/throughput.py

-include mk/*.mk
