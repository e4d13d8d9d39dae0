"""The cluster's worker side, on a healthy control plane: the lab's nodes
(lab.kube.nodes) and the load balancers of LoadBalancer Services (lab.kube.balancers),
with one event log and one process registry. `lab cluster up` starts them before it
says the cluster is ready, and stops them before the control plane."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from lab.events import EventLog
from lab.images import ImageMap
from lab.kube.balancers import Balancers
from lab.kube.nodes import Agents, AgentsConfig, NodeState
from lab.lag import Lag
from lab.procs import Registry


@dataclass
class Workers:
    api: Any  # kubernetes.client.ApiClient
    out: Path
    nodes: int
    image_map: ImageMap
    lag: Lag
    runtime: str = "process"
    seed: int | None = None
    # An experiment's own event log, process registry and namespace; by default the
    # workers keep their own in `out`.
    events: EventLog | None = None
    registry: Registry | None = None
    home_namespace: str = "default"
    agents: Agents | None = None
    balancers: Balancers | None = None
    _sink: IO[str] | None = None

    async def start(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        if self.events is None:
            self._sink = (self.out / "events.jsonl").open("a")
            self.events = EventLog(sink=self._sink)
        events = self.events
        if self.registry is None:
            self.registry = Registry(self.out / "pids.txt", die_with_parent=True)
        self.agents = Agents(
            self.api,
            AgentsConfig(
                self.nodes,
                self.out,
                self.image_map,
                self.runtime,
                self.seed,
                self.home_namespace,
            ),
            events,
            self.registry,
        )
        await self.agents.start()
        self.balancers = Balancers(
            self.api, self.agents, self.out, self.registry, events, self.lag, self.seed
        )
        self.balancers.start()

    @property
    def node_states(self) -> list[NodeState]:
        return self.agents.nodes if self.agents is not None else []

    async def stop(self) -> None:
        """Every step runs, whatever failed before it; the registry's forced kill last."""
        try:
            if self.balancers is not None:
                await self.balancers.stop()
        finally:
            try:
                if self.agents is not None:
                    await self.agents.stop()
            finally:
                if self.registry is not None:
                    await self.registry.kill_all()
                if self._sink is not None:
                    with contextlib.suppress(OSError):
                        self._sink.close()
