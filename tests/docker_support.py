"""Helpers for tests against the Docker Engine: the built image, and containers and
networks that are always removed, also when a test fails.

The engine and calc:latest come from `make image` (which `make pytest` runs first). Run
alone, the fixtures build the image when the engine lacks it, and skip only where no
engine answers at all.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import docker
import docker.errors
import pytest
from docker.models.containers import Container
from docker.models.networks import Network

from lab import image_build

IMAGE = image_build.IMAGE_TAG


def engine_or_skip() -> docker.DockerClient:
    engine = docker.from_env(timeout=120)
    try:
        engine.ping()
    except docker.errors.DockerException as exc:
        engine.close()
        pytest.skip(f"no Docker engine answers ({exc}): make system-deps starts one")
    return engine


def ensure_image(engine: docker.DockerClient) -> str:
    """calc:latest, built through lab.image_build when the engine lacks it."""
    if not image_build.has_image(engine, IMAGE):
        base = image_build.choose_base(engine, log=lambda line: None)
        image_build.build(engine, base, IMAGE, log=lambda line: None)
    return IMAGE


class Containers:
    """Creates containers and networks with a test label and removes them at teardown."""

    def __init__(self, engine: docker.DockerClient, prefix: str) -> None:
        self.engine = engine
        self.prefix = f"{prefix}-{os.getpid()}"
        self.containers: list[Container] = []
        self.networks: list[Network] = []

    def network(self) -> Network:
        network = self.engine.networks.create(
            f"{self.prefix}-net{len(self.networks)}", driver="bridge", labels={"test": "1"}
        )
        self.networks.append(network)
        return network

    def run(self, image: str, network: Network, **kwargs: Any) -> Container:
        """Start a detached container on `network`; its IP is `ip(container)`."""
        container = self.engine.containers.run(
            image,
            detach=True,
            name=f"{self.prefix}-c{len(self.containers)}",
            network=network.name,
            labels={"test": "1"},
            **kwargs,
        )
        self.containers.append(container)
        return container

    def ip(self, container: Container, network: Network) -> str:
        container.reload()
        address: str = container.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"]
        assert address, f"{container.name} has no address on {network.name}"
        return address

    def cleanup(self) -> None:
        for container in reversed(self.containers):
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
        for network in self.networks:
            with contextlib.suppress(docker.errors.NotFound):
                network.remove()


@contextlib.contextmanager
def containers(engine: docker.DockerClient, prefix: str) -> Iterator[Containers]:
    made = Containers(engine, prefix)
    try:
        yield made
    finally:
        made.cleanup()


def state(container: Container) -> dict[str, Any]:
    container.reload()
    result: dict[str, Any] = container.attrs["State"]
    return result
