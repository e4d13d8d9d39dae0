"""The endpoints controller plus the load balancer's view of it.

Each pod is an endpoint with the EndpointSlice conditions: `serving` (its readiness
probe passes, also while it terminates), `terminating`, and `ready` (serving and not
terminating). A real cluster takes a while to tell its load balancers (EndpointSlice ->
kube-proxy / cloud LB): the propagation lag. Each change of a pod's conditions reaches
the proxy `lag` seconds after the pod changed; with a range, each change draws its own
lag. Per pod, changes apply in the order they happened. From what it has seen, the
proxy sends new connections to the ready endpoints or, when there are none, to the
serving and terminating ones (kube-proxy's fallback).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from lab.events import EventLog
from lab.haproxy import HAProxy, HAProxyError
from lab.lag import DEFAULT_LAG, Lag
from lab.pods import Pod
from lab.waits import stop_task, wait_event

DELETE_RETRY_FOR = 10.0  # seconds to keep retrying `del server` while connections drain


@dataclass(frozen=True)
class Conditions:
    """An endpoint's conditions in its EndpointSlice."""

    ready: bool
    serving: bool
    terminating: bool


def conditions(pod: Pod) -> Conditions | None:
    """The pod's endpoint conditions; None once the pod is gone (no endpoint)."""
    if pod.gone:
        return None
    return Conditions(
        ready=pod.ready and not pod.terminating, serving=pod.ready, terminating=pod.terminating
    )


def usable(endpoints: dict[str, Conditions]) -> set[str]:
    """Where a proxy sends new connections: the ready endpoints, or when there are none
    the serving and terminating ones (ProxyTerminatingEndpoints, GA in Kubernetes 1.28:
    CategorizeEndpoints in kubernetes pkg/proxy/topology.go, for Cluster traffic policy
    without topology hints, as here)."""
    ready = {name for name, c in endpoints.items() if c.ready}
    if ready:
        return ready
    return {name for name, c in endpoints.items() if c.serving and c.terminating}


class Endpoint(Protocol):
    """What a proxy needs of an endpoint: a name and the address it sends to (a lab Pod,
    or an endpoint of a real EndpointSlice, lab.kube.proxy)."""

    @property
    def name(self) -> str: ...

    @property
    def ip(self) -> str: ...


@dataclass
class _Change:
    due: float
    pod: Endpoint
    conditions: Conditions | None


class EndpointsController:
    def __init__(
        self,
        haproxy: HAProxy,
        pods: Callable[[], Sequence[Endpoint]],
        port: int,
        events: EventLog,
        lag: Lag = DEFAULT_LAG,
        rng: random.Random | None = None,
        node: str = "",
        conditions_of: Callable[[Any], Conditions | None] = conditions,
    ) -> None:
        # With several nodes, each node's proxy is one controller: its events say which.
        self.node = node
        self.haproxy = haproxy
        self.pods = pods
        # An endpoint's conditions now (None: it has none, it is gone).
        self.conditions_of = conditions_of
        self.port = port
        self.events = events
        self.lag = lag
        self.rng = rng or random.Random()
        self.published: dict[str, Conditions] = {}  # the EndpointSlice, now
        self.pending: list[_Change] = []
        self.last_due: dict[str, float] = {}
        self.seen: dict[str, Conditions] = {}  # the EndpointSlice as the proxy knows it
        self.fallback = False  # the proxy uses serving-terminating endpoints
        self.failing: dict[str, str] = {}  # server -> its last HAProxy error, logged once
        self.in_lb: set[str] = set()  # what HAProxy sends new connections to
        self.to_delete: dict[str, float] = {}  # drained servers -> give up deleting at
        self.known: dict[str, Endpoint] = {}
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.running = False

    def draw_lag(self) -> float:
        return self.lag.draw(self.rng)

    def desired(self) -> set[str]:
        """Where new connections go once every change has reached the proxy."""
        return usable(self.published)

    def observe(self) -> None:
        """Compare each pod's conditions with the published ones; queue each difference."""
        now = self.events.now()
        self.known.update({p.name: p for p in self.pods()})
        for name, pod in sorted(self.known.items()):
            current = self.conditions_of(pod)
            if current != self.published.get(name):
                self._queue(now, pod, current)
                if current is None:
                    del self.published[name]
                else:
                    self.published[name] = current

    def _queue(self, now: float, pod: Endpoint, current: Conditions | None) -> None:
        due = max(now + self.draw_lag(), self.last_due.get(pod.name, 0.0))
        self.last_due[pod.name] = due
        self.pending.append(_Change(due, pod, current))

    def apply_due(self) -> None:
        now = self.events.now()
        due = sorted((c for c in self.pending if c.due <= now), key=lambda c: c.due)
        self.pending = [c for c in self.pending if c.due > now]
        for change in due:
            if change.conditions is None:
                self.seen.pop(change.pod.name, None)
            else:
                self.seen[change.pod.name] = change.conditions
        self._sync(now)
        for name, give_up in list(self.to_delete.items()):
            try:
                deleted = self.haproxy.delete_server(name)
            except HAProxyError as exc:
                self.events.add(name, "lb-delete-failed", str(exc))
                deleted = True
            except OSError:  # HAProxy away: try again until giving up
                deleted = False
            if deleted or now > give_up:
                # A server we gave up on stays drained (MAINT): it gets no new traffic.
                del self.to_delete[name]

    def _sync(self, now: float) -> None:
        """HAProxy's servers to what the proxy, from what it has seen, would use."""
        wanted = usable(self.seen)
        fallback = bool(wanted) and not any(c.ready for c in self.seen.values())
        if fallback != self.fallback:
            self.fallback = fallback
            detail = f"{len(wanted)} serving-terminating" if fallback else "ready endpoints again"
            if not fallback and not wanted:
                detail = "no serving endpoints left"
            self.events.add(
                "", "lb-fallback" if fallback else "lb-fallback-ended", self._on_node(detail)
            )
        for name in sorted(wanted - self.in_lb):
            pod = self.known[name]
            try:
                if name in self.haproxy.servers():
                    self.haproxy.command(f"enable server pods/{name}")
                else:
                    self.haproxy.add_server(name, pod.ip, self.port)
            except (HAProxyError, OSError) as exc:
                self._failed(name, "add", exc)
                continue
            self.failing.pop(name, None)
            self.to_delete.pop(name, None)
            self.in_lb.add(name)
            note = " (serving, terminating: no ready endpoints)" if fallback else ""
            self.events.add(name, "lb-added", self._on_node(f"{pod.ip}:{self.port}{note}"))
        for name in sorted(self.in_lb - wanted):
            try:
                self.haproxy.drain_server(name)
            except (HAProxyError, OSError) as exc:
                self._failed(name, "drain", exc)
                continue
            self.failing.pop(name, None)
            self.in_lb.discard(name)
            self.to_delete[name] = now + DELETE_RETRY_FOR
            self.events.add(name, "lb-removed", self._on_node(""))

    def _on_node(self, detail: str) -> str:
        if not self.node:
            return detail
        return f"{self.node}: {detail}" if detail else self.node

    def _failed(self, name: str, action: str, exc: Exception) -> None:
        # HAProxy away (restarting, dead) or refusing: the change is tried again on the
        # next loop, so nothing is dropped; each new error is logged once, not per loop.
        message = f"{action}: {exc!r}"
        if self.failing.get(name) != message:
            self.failing[name] = message
            self.events.add(name, "lb-error", message)

    async def run(self) -> None:
        while self.running:
            self.observe()
            self.apply_due()
            self.wake.clear()
            await wait_event(self.wake, 0.02)

    def start(self) -> None:
        self.running = True
        self.task = asyncio.create_task(self.run(), name="endpoints controller")

    async def stop(self) -> None:
        self.running = False  # ends the loop even if a cancellation were lost
        await stop_task(self.task)
        self.task = None

    @contextlib.asynccontextmanager
    async def proxy_restarting(self) -> AsyncIterator[dict[str, str]]:
        """While its HAProxy is stopped and started again (lb-restart): the controller
        pauses, keeping its state and pending changes; yields the servers in rotation
        (name -> IP). Once HAProxy is back they are added to it again, and the drained
        servers are forgotten (their connections went with the old process). The
        controller runs again either way."""
        await self.stop()
        try:
            servers = {name: self.known[name].ip for name in self.in_lb}
            yield servers
            for name, ip in sorted(servers.items()):
                self.haproxy.add_server(name, ip, self.port)
            self.to_delete.clear()
        finally:
            self.start()
