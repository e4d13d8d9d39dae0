"""The endpoints controller plus the load balancer's view of it.

Ready, non-terminating pods belong in the Service. A real cluster takes a while to tell
its load balancers (EndpointSlice -> kube-proxy / cloud LB): the propagation lag. Each
change here reaches HAProxy `lag` seconds after the pod changed; with a range, each
change draws its own lag. Per pod, changes apply in the order they happened.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass

from lab.events import EventLog
from lab.haproxy import HAProxy, HAProxyError
from lab.pods import Pod
from lab.waits import stop_task, wait_event

DELETE_RETRY_FOR = 10.0  # seconds to keep retrying `del server` while connections drain


@dataclass
class _Change:
    due: float
    pod: Pod
    add: bool


class EndpointsController:
    def __init__(
        self,
        haproxy: HAProxy,
        pods: Callable[[], list[Pod]],
        port: int,
        events: EventLog,
        lag: tuple[float, float] = (1.0, 1.0),
        rng: random.Random | None = None,
    ) -> None:
        self.haproxy = haproxy
        self.pods = pods
        self.port = port
        self.events = events
        self.lag = lag
        self.rng = rng or random.Random()
        self.intended: set[str] = set()  # what the control plane says, now
        self.pending: list[_Change] = []
        self.last_due: dict[str, float] = {}
        self.in_lb: set[str] = set()  # what HAProxy sends new connections to
        self.to_delete: dict[str, float] = {}  # drained servers -> give up deleting at
        self.known: dict[str, Pod] = {}
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.running = False

    def draw_lag(self) -> float:
        low, high = self.lag
        return low if high <= low else self.rng.uniform(low, high)

    def desired(self) -> set[str]:
        return {p.name for p in self.pods() if p.ready and not p.terminating and not p.gone}

    def observe(self) -> None:
        """Compare the pods with what we last intended; queue each difference."""
        now = self.events.now()
        pods = {p.name: p for p in self.pods()}
        self.known.update(pods)
        desired = self.desired()
        for name in sorted(desired - self.intended):
            self._queue(now, self.known[name], add=True)
        for name in sorted(self.intended - desired):
            self._queue(now, self.known[name], add=False)
        self.intended = desired

    def _queue(self, now: float, pod: Pod, add: bool) -> None:
        due = max(now + self.draw_lag(), self.last_due.get(pod.name, 0.0))
        self.last_due[pod.name] = due
        self.pending.append(_Change(due, pod, add))

    def apply_due(self) -> None:
        now = self.events.now()
        due = sorted((c for c in self.pending if c.due <= now), key=lambda c: c.due)
        self.pending = [c for c in self.pending if c.due > now]
        for change in due:
            name = change.pod.name
            if change.add and name not in self.in_lb:
                self.to_delete.pop(name, None)
                if name in self.haproxy.servers():
                    self.haproxy.command(f"enable server pods/{name}")
                else:
                    self.haproxy.add_server(name, change.pod.ip, self.port)
                self.in_lb.add(name)
                self.events.add(name, "lb-added", f"{change.pod.ip}:{self.port}")
            elif not change.add and name in self.in_lb:
                self.haproxy.drain_server(name)
                self.in_lb.discard(name)
                self.to_delete[name] = now + DELETE_RETRY_FOR
                self.events.add(name, "lb-removed")
        for name, give_up in list(self.to_delete.items()):
            try:
                deleted = self.haproxy.delete_server(name)
            except HAProxyError as exc:
                self.events.add(name, "lb-delete-failed", str(exc))
                deleted = True
            if deleted or now > give_up:
                # A server we gave up on stays drained (MAINT): it gets no new traffic.
                del self.to_delete[name]

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
