"""Helpers for the lab tests: manifests for the tiny test app, and a small cluster built from the lab's
real parts (HAProxy, kubelet, controllers) that each test drives from asyncio."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml

from lab.blackhole import Blackhole
from lab.controller import DeploymentController
from lab.endpoints import EndpointsController
from lab.events import EventLog
from lab.haproxy import HAProxy
from lab.images import ImageMap
from lab.influx import free_port
from lab.lag import Lag
from lab.manifest import Manifests, load
from lab.pods import AddressPool, Kubelet, Pod
from lab.procs import Registry
from lab.runtime import ProcessRuntime

HERE = Path(__file__).resolve().parent
TINY_IMAGES = HERE / "images.yml"
TINYAPP = HERE / "apps" / "tinyapp.py"

T = TypeVar("T")


def tiny_manifest(
    path: Path,
    *,
    port: int,
    replicas: int = 1,
    args: list[str] | None = None,
    command: list[str] | None = None,
    readiness: dict[str, Any] | None = None,
    liveness: dict[str, Any] | None = None,
    pre_stop: dict[str, Any] | None = None,
    grace: float | None = None,
    strategy: dict[str, Any] | None = None,
    min_ready: float | None = None,
    env: list[dict[str, Any]] | None = None,
) -> Path:
    """Write a Deployment + Service for the tiny app; returns the file's path."""
    container: dict[str, Any] = {
        "name": "tiny",
        "image": "registry.example.com/lab/tinyapp:test",
        "args": ["--port", str(port), *(args or [])],
        "ports": [{"name": "http", "containerPort": port}],
    }
    if command is not None:
        container["command"] = command
    if readiness is not None:
        container["readinessProbe"] = readiness
    if liveness is not None:
        container["livenessProbe"] = liveness
    if pre_stop is not None:
        container["lifecycle"] = {"preStop": pre_stop}
    if env is not None:
        container["env"] = env
    pod_spec: dict[str, Any] = {"containers": [container]}
    if grace is not None:
        pod_spec["terminationGracePeriodSeconds"] = grace
    spec: dict[str, Any] = {
        "replicas": replicas,
        "selector": {"matchLabels": {"app": "tiny"}},
        "template": {"metadata": {"labels": {"app": "tiny"}}, "spec": pod_spec},
    }
    if strategy is not None:
        spec["strategy"] = strategy
    if min_ready is not None:
        spec["minReadySeconds"] = min_ready
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "tiny"},
        "spec": spec,
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "tiny"},
        "spec": {
            "type": "LoadBalancer",
            "selector": {"app": "tiny"},
            "ports": [{"port": 80, "targetPort": "http"}],
        },
    }
    path.write_text(yaml.safe_dump_all([deployment, service], sort_keys=False))
    return path


READY_PROBE: dict[str, Any] = {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1}


async def until(predicate: Any, timeout: float, what: str = "") -> None:
    """Polls `predicate` until it is true; fails naming `what` after `timeout` s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")
        await asyncio.sleep(0.02)


@dataclass
class Cluster:
    manifests: Manifests
    events: EventLog
    registry: Registry
    haproxy: HAProxy
    kubelet: Kubelet
    controller: DeploymentController
    endpoints: EndpointsController

    def pods(self) -> list[Pod]:
        return [p for p in self.kubelet.pods if not p.gone]

    async def until(self, predicate: Any, timeout: float, what: str = "") -> None:
        await until(predicate, timeout, what)

    def log(self, pod: Pod) -> str:
        path = self.kubelet.log_dir / f"{pod.name}.log"
        return path.read_text() if path.exists() else ""


@contextlib.asynccontextmanager
async def cluster(
    tmp_path: Path,
    manifest: Path,
    lag: float = 0.0,
    dead: Blackhole | None = None,
    make_runtime: Callable[[Registry, Path], Awaitable[ProcessRuntime]] | None = None,
) -> AsyncIterator[Cluster]:
    """HAProxy (tcp, retries 0) + kubelet + Deployment and endpoints controllers; every
    process is gone when the block exits, also on failure. With `dead`, a gone pod's
    address drops packets (its table is deleted at the end). `make_runtime(registry,
    pods_dir)`: another process runtime (the pods' network namespaces, lab.pod_netns)."""
    manifests = load(manifest)
    images = ImageMap.load(TINY_IMAGES)
    events = EventLog(progress=None)
    registry = Registry(tmp_path / "pids.txt")
    haproxy = HAProxy(tmp_path / "haproxy", free_port())
    if make_runtime is not None:
        runtime = await make_runtime(registry, tmp_path / "pods")
    else:
        runtime = ProcessRuntime(
            registry, tmp_path / "pods", dict(os.environ), None, AddressPool(), dead
        )
    kubelet = Kubelet(
        events, registry, tmp_path / "pods", dict(os.environ), rng=random.Random(7), runtime=runtime
    )
    controller = DeploymentController(manifests.deployment, kubelet, images, events)
    endpoints = EndpointsController(
        haproxy,
        lambda: kubelet.pods,
        manifests.target_port,
        events,
        Lag.fixed(lag),
        random.Random(7),
    )

    def changed() -> None:
        controller.wake.set()
        endpoints.wake.set()

    kubelet.on_change = changed
    try:
        await haproxy.start(registry)
        controller.start()
        endpoints.start()
        yield Cluster(manifests, events, registry, haproxy, kubelet, controller, endpoints)
    finally:
        await controller.stop()
        await endpoints.stop()
        await kubelet.shutdown()
        await haproxy.stop()
        await runtime.close()
        await registry.kill_all()
        # Killed orphans (a wrapper's child) are reaped by init a moment later.
        for _ in range(100):  # up to 5 s
            if not registry.alive():
                break
            await asyncio.sleep(0.05)
        left = {p: registry.children[p] for p in registry.alive()}
        assert left == {}, f"processes outlived the cluster: {left}"


def run(coro: Coroutine[Any, Any, T], timeout: float = 90.0) -> T:
    """Run a test scenario with a deadline below pytest's, so a hang fails with the
    coroutine's traceback rather than a dump of every thread."""
    return asyncio.run(asyncio.wait_for(coro, timeout))
