"""Each lab node's proxy, fed by the real EndpointSlices of a Service.

A node's kube-proxy watches the Service's EndpointSlices (discovery.k8s.io/v1, label
`kubernetes.io/service-name`) and syncs its rules on its own schedule; here each node's
HAProxy follows the same watch through lab.endpoints.EndpointsController, which applies
the node's own propagation lag to every change and the same rules as kube-proxy: ready
endpoints, or serving-and-terminating ones when none is ready (pkg/proxy/topology.go).
With several nodes an L4 balancer spreads connections over the nodes' proxies, as a
cloud load balancer to a NodePort does.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client

from lab.endpoints import Conditions, EndpointsController
from lab.events import EventLog
from lab.experiment import FRONT_CHECKS
from lab.haproxy import HAProxy
from lab.influx import free_port
from lab.kube.api import Informer, WatchEvent
from lab.kube.nodes import Agents
from lab.lag import DEFAULT_LAG, Lag
from lab.procs import Registry


@dataclass(frozen=True)
class SliceEndpoint:
    """One endpoint of the Service's EndpointSlices, where this machine reaches it."""

    name: str  # the pod's name, as the lab's events name it
    ip: str  # the pod's loopback address (its status names the podCIDR one)
    conditions: Conditions


def slice_endpoints(slices: list[dict[str, Any]], agents: Agents) -> dict[str, SliceEndpoint]:
    """Every endpoint of `slices` whose pod runs on the lab's nodes, by pod name. An
    absent condition counts as in the API: `ready` and `serving` unset mean true, and
    `terminating` unset means false (discovery/v1 EndpointConditions)."""
    out: dict[str, SliceEndpoint] = {}
    for item in slices:
        for endpoint in item.get("endpoints") or []:
            addresses = endpoint.get("addresses") or []
            target = endpoint.get("targetRef") or {}
            if not addresses or target.get("kind") != "Pod":
                continue
            local = agents.local_address(addresses[0])
            if local is None:
                continue
            cond = endpoint.get("conditions") or {}
            ready = cond.get("ready") is not False
            serving = cond.get("serving", ready) is not False
            terminating = cond.get("terminating") is True
            name = agents.lab_name(target.get("namespace", ""), target.get("name", ""))
            out[name] = SliceEndpoint(name, local, Conditions(ready, serving, terminating))
    return out


def slice_port(slices: list[dict[str, Any]]) -> int | None:
    """The port the Service's endpoints listen on (its resolved targetPort)."""
    for item in slices:
        for port in item.get("ports") or []:
            if port.get("port"):
                return int(port["port"])
    return None


@dataclass
class SliceFeed:
    """The Service's EndpointSlices as watched: what every node's proxy reads."""

    api: client.ApiClient
    namespace: str
    service: str
    agents: Agents
    events: EventLog
    current: dict[str, SliceEndpoint] = field(default_factory=dict)
    informer: Informer | None = None
    updated: asyncio.Event = field(default_factory=asyncio.Event)  # set on every change

    def start(self) -> None:
        discovery = client.DiscoveryV1Api(self.api)
        self.informer = Informer(
            f"endpointslices of {self.namespace}/{self.service}",
            lambda **kw: discovery.list_namespaced_endpoint_slice(self.namespace, **kw),
            self._changed,
            lambda message: self.events.add("", "api-error", message),
            label_selector=f"kubernetes.io/service-name={self.service}",
        )
        self.informer.start()

    async def stop(self) -> None:
        if self.informer is not None:
            await self.informer.stop()

    @property
    def slices(self) -> list[dict[str, Any]]:
        return list(self.informer.known.values()) if self.informer is not None else []

    def _changed(self, event: WatchEvent) -> None:
        self.current = slice_endpoints(self.slices, self.agents)
        self.updated.set()

    def endpoints(self) -> list[SliceEndpoint]:
        return list(self.current.values())

    def conditions(self, endpoint: SliceEndpoint) -> Conditions | None:
        found = self.current.get(endpoint.name)
        return found.conditions if found is not None else None


@dataclass
class NodeProxies:
    """An HAProxy per lab node following `feed`, with its own lag, and an L4 balancer in
    front of them at `entry` (a cloud load balancer to the Service's NodePort: each
    connection to one node, round robin, health-checked with a cloud's defaults). With
    no `entry` and one node, that node's proxy is where load enters."""

    feed: SliceFeed
    port: int  # the endpoints' port
    out: Path
    registry: Registry
    events: EventLog
    lag: Lag = DEFAULT_LAG
    mode: str = "tcp"
    seed: int | None = None
    entry: tuple[str, int] | None = None  # the balancer's address and port
    proxies: list[HAProxy] = field(default_factory=list)
    controllers: list[EndpointsController] = field(default_factory=list)
    front: HAProxy | None = None

    @property
    def url(self) -> str:
        entry = self.front or self.proxies[0]
        return f"http://{entry.host}:{entry.port}"

    async def start(self) -> None:
        nodes = self.feed.agents.nodes
        rng = random.Random(self.seed)
        behind = self.entry is not None or len(nodes) > 1
        for node in nodes:
            # Behind a balancer each node's proxy listens on its node's own address.
            host = node.address if behind else "127.0.0.1"
            proxy = HAProxy(
                self.out / f"haproxy-{node.name}", free_port(host), host=host, mode=self.mode
            )
            self.proxies.append(proxy)
            await proxy.start(self.registry)
            controller = EndpointsController(
                proxy,
                self.feed.endpoints,
                self.port,
                self.events,
                self.lag,
                random.Random(rng.random()),
                node=node.name if len(nodes) > 1 else "",
                conditions_of=self.feed.conditions,
            )
            self.controllers.append(controller)
            controller.start()
        if behind:
            host, port = self.entry or ("127.0.0.1", free_port())
            self.front = HAProxy(
                self.out / "haproxy-lb", port, host=host, mode="tcp", health_checks=FRONT_CHECKS
            )
            await self.front.start(self.registry)
            for node, proxy in zip(nodes, self.proxies, strict=True):
                self.front.add_server(node.name, proxy.host, proxy.port)
        self.events.add("", "node-proxies", f"{len(nodes)} node proxies, entry {self.url}")

    async def stop(self) -> None:
        for controller in self.controllers:
            await controller.stop()
        for proxy in [*self.proxies, *([self.front] if self.front else [])]:
            await proxy.stop()
