# The Docker Engine and the image. Included by the root Makefile, which defines PYTHON,
# BIN and the setup and system-deps targets.
#
# `make system-deps` runs docker-engine: an engine that answers (DOCKER_HOST or
# /var/run/docker.sock) is used as it is; otherwise Debian's docker.io and debootstrap are
# installed with apt-get and dockerd is started (root, or sudo when not root).

.PHONY: docker-engine image image-rebuild-base

IMAGE_TAG ?= calc:latest

system-deps: docker-engine

docker-engine: ## Docker: use a running engine, else apt-get install docker.io + debootstrap and start dockerd (root or sudo)
	@$(PYTHON) src/lab/engine_setup.py

image: $(BIN)/calc docker-engine ## Docker: build deploy/Dockerfile as IMAGE_TAG (calc:latest) through the Engine API; a local Debian base where Docker Hub is out of reach
	$(BIN)/python -m lab.image_build --tag $(IMAGE_TAG) $(if $(PYTHON_IMAGE),--python-image $(PYTHON_IMAGE))

image-rebuild-base: $(BIN)/calc docker-engine ## Docker: remake the local Debian stand-in base, then the image
	$(BIN)/python -m lab.image_build --tag $(IMAGE_TAG) --rebuild-base

# The suite runs calc:latest in the engine (tests/deploy/test_deploy_image.py and the
# lab's docker runtime), so the CI command builds it first.
pytest: image
