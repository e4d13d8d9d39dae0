"""LoadBalancer Services on the lab's cluster: the part a cloud provider plays.

For each Service of type LoadBalancer, as a cloud's service controller does
(k8s.io/cloud-provider, controllers/service): a balancer at an address of the Service's
own, on the Service's port, in front of every node's proxy (lab.kube.proxy); the address
goes into `status.loadBalancer.ingress`, where `kubectl get service` shows it as the
EXTERNAL-IP. The address is a loopback one of this machine, so load from here reaches it
and nothing else can.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client

from lab.events import EventLog
from lab.kube.api import Informer, WatchEvent, call, status_of
from lab.kube.nodes import Agents
from lab.kube.proxy import NodeProxies, SliceFeed, slice_port
from lab.lag import DEFAULT_LAG, Lag
from lab.procs import Registry
from lab.waits import stop_task


@dataclass
class Balancer:
    feed: SliceFeed
    address: str
    port: int  # the Service's port, where the balancer listens
    proxies: NodeProxies | None = None
    task: asyncio.Task[None] | None = None


@dataclass
class Balancers:
    api: client.ApiClient
    agents: Agents
    out: Path
    registry: Registry
    events: EventLog
    lag: Lag = DEFAULT_LAG
    seed: int | None = None
    open: dict[str, Balancer] = field(default_factory=dict)  # "namespace/name" -> balancer
    informer: Informer | None = None
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def start(self) -> None:
        core = client.CoreV1Api(self.api)
        self.core = core
        self.informer = Informer(
            "services",
            core.list_service_for_all_namespaces,
            self._changed,
            lambda message: self.events.add("", "api-error", message),
        )
        self.informer.start()

    async def stop(self) -> None:
        if self.informer is not None:
            await self.informer.stop()
        for key in list(self.open):
            await self._close(key)

    def _changed(self, event: WatchEvent) -> None:
        if event.kind == "SYNCED":
            return
        meta, spec = event.obj["metadata"], event.obj.get("spec") or {}
        key = f"{meta.get('namespace', '')}/{meta['name']}"
        wanted = event.kind != "DELETED" and spec.get("type") == "LoadBalancer"
        if wanted and key not in self.open:
            ports = spec.get("ports") or [{}]
            balancer = Balancer(
                SliceFeed(
                    self.api, meta.get("namespace", ""), meta["name"], self.agents, self.events
                ),
                self.agents.addresses.take(),
                int(ports[0].get("port", 80)),
            )
            self.open[key] = balancer
            balancer.task = asyncio.create_task(self._open(key, balancer), name=f"balancer {key}")
        elif not wanted and key in self.open:
            task = asyncio.create_task(self._close(key), name=f"close balancer {key}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _open(self, key: str, balancer: Balancer) -> None:
        """Wait for the Service's endpoints to name their port, then open the balancer
        and publish its address."""
        balancer.feed.start()
        while (port := slice_port(balancer.feed.slices)) is None:
            await balancer.feed.updated.wait()
            balancer.feed.updated.clear()
        namespace, name = key.split("/", 1)
        balancer.proxies = NodeProxies(
            balancer.feed,
            port,
            self.out / "balancers" / f"{namespace}_{name}",
            self.registry,
            self.events,
            self.lag,
            seed=self.seed,
            entry=(balancer.address, balancer.port),
        )
        await balancer.proxies.start()
        status = {
            "status": {"loadBalancer": {"ingress": [{"ip": balancer.address, "ipMode": "VIP"}]}}
        }
        try:
            await call(self.core.patch_namespaced_service_status, name, namespace, status)
        except Exception as exc:
            if status_of(exc) != 404:
                raise
        self.events.add("", "load-balancer", f"{key}: {balancer.address}:{balancer.port}")

    async def _close(self, key: str) -> None:
        balancer = self.open.pop(key)
        await stop_task(balancer.task)
        if balancer.proxies is not None:
            await balancer.proxies.stop()
        await balancer.feed.stop()
        self.agents.addresses.give_back(balancer.address)


def ingress(service: dict[str, Any]) -> str | None:
    """The address a LoadBalancer Service's status publishes, if any."""
    found = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    return found[0].get("ip") if found else None
