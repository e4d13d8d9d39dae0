# graceful against the oldest and the newest release of each server it supports: the ranges
# in pyproject.toml (uvicorn, and the gunicorn and hypercorn extras) run from the releases in
# requirements/oldest.in to those in requirements/dev.lock.
#   newest: the project's own .venv (dev.lock), where `make pytest` runs every test
#   oldest: .venv-compat/oldest, installed from requirements/oldest.lock (with hashes; the
#           same pins as dev.lock but for the servers), graceful's tests run there
# Every reach into a server's internals is in src/graceful/<server>_compat.py, checked by
# tests/graceful/test_server_internals.py, which runs in both environments.

.PHONY: test-server-versions test-server-oldest test-server-newest

COMPAT_DIR ?= .venv-compat
COMPAT_OLDEST := $(COMPAT_DIR)/oldest
# graceful's tests: all but the wheel's (it installs dev.lock's versions from the index).
COMPAT_TESTS ?= tests/graceful --deselect tests/graceful/test_distribution.py
COMPAT_PYTEST_ARGS ?=
# uvicorn before 0.50 serves websockets with their legacy API (ws=auto), which websockets
# 14 (the lock's) deprecates: warnings that filterwarnings=error would make failures.
COMPAT_OLDEST_WARNINGS := -W 'ignore:websockets.legacy is deprecated:DeprecationWarning' \
  -W 'ignore:websockets.server.WebSocketServerProtocol is deprecated:DeprecationWarning' \
  -W 'ignore:remove second argument of ws_handler:DeprecationWarning'

$(COMPAT_OLDEST)/bin/graceful-serve: requirements/oldest.lock pyproject.toml | $(BIN)/uv
	rm -rf $(COMPAT_OLDEST)
	$(BIN)/uv venv --quiet --python $(BIN)/python $(COMPAT_OLDEST)
	$(BIN)/uv pip install --quiet --python $(COMPAT_OLDEST)/bin/python --require-hashes \
	  -r requirements/oldest.lock
	$(BIN)/uv pip install --quiet --python $(COMPAT_OLDEST)/bin/python --no-deps \
	  --no-build-isolation -e .
	@touch $@

test-server-oldest: $(COMPAT_OLDEST)/bin/graceful-serve ## graceful's tests on the oldest supported uvicorn, gunicorn and hypercorn (requirements/oldest.lock)
	@$(COMPAT_OLDEST)/bin/python -c 'from importlib.metadata import version as v; print("servers:", *(n + " " + v(n) for n in ("uvicorn", "gunicorn", "hypercorn")))'
	$(COMPAT_OLDEST)/bin/pytest $(COMPAT_OLDEST_WARNINGS) $(COMPAT_TESTS) $(COMPAT_PYTEST_ARGS)

test-server-newest: $(BIN)/calc ## graceful's tests on the newest supported releases (requirements/dev.lock, the project's .venv)
	@$(BIN)/python -c 'from importlib.metadata import version as v; print("servers:", *(n + " " + v(n) for n in ("uvicorn", "gunicorn", "hypercorn")))'
	$(BIN)/pytest $(COMPAT_TESTS) $(COMPAT_PYTEST_ARGS)

test-server-versions: test-server-oldest test-server-newest ## graceful's tests on the oldest and on the newest supported release of each server
