# The lock files: every Python dependency pinned with its hashes, so a fresh machine
# installs exactly what was tested. `make setup` and the image install from them with
# `pip install --require-hashes`; pyproject.toml keeps the ranges they are resolved from.
#   requirements/dev.lock    the project with its lab, bench and dev extras (make setup, CI)
#   requirements/image.lock  the service's own dependencies (deploy/Dockerfile)
#   requirements/oldest.lock dev.lock's set with the oldest server releases graceful
#                            supports (requirements/oldest.in), without the bench's
#                            peers; make test-server-versions (mk/compat.mk)
# `make lock` re-resolves after pyproject.toml changed, keeping every pin it can (uv reads
# the existing lock as its preferences); `make lock-upgrade` moves every pin to the newest
# release the ranges allow. Both need the package index; commit the result.

.PHONY: lock lock-upgrade

LOCK_PLATFORM := --python-version 3.11 --python-platform x86_64-manylinux_2_28
LOCK_FLAGS ?=

$(BIN)/uv: $(BIN)/calc
	$(BIN)/pip install --quiet 'uv>=0.9,<1'

lock: $(BIN)/uv ## Re-resolve requirements/*.lock from pyproject.toml (keeps current pins where it can)
	$(BIN)/uv pip compile pyproject.toml requirements/build.in --extra lab --extra bench \
	  --extra dev --generate-hashes --custom-compile-command "make lock" $(LOCK_PLATFORM) $(LOCK_FLAGS) -o requirements/dev.lock
	$(BIN)/uv pip compile pyproject.toml requirements/build.in --generate-hashes --custom-compile-command "make lock" \
	  $(LOCK_PLATFORM) $(LOCK_FLAGS) -o requirements/image.lock
	$(BIN)/uv pip compile pyproject.toml requirements/build.in --extra lab --extra dev \
	  --extra gunicorn --extra hypercorn -c requirements/oldest.in --generate-hashes \
	  --custom-compile-command "make lock" $(LOCK_PLATFORM) $(LOCK_FLAGS) -o requirements/oldest.lock

lock-upgrade: ## Move every pin in requirements/*.lock to the newest release pyproject.toml allows
	$(MAKE) lock LOCK_FLAGS=--upgrade
