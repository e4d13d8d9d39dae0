"""The cluster's worker side, on a healthy control plane: the lab's nodes
(lab.kube.nodes) and the load balancers of LoadBalancer Services (lab.kube.balancers),
with one event log and one process registry. `lab cluster up` starts them before it
says the cluster is ready, and stops them before the control plane."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from lab.events import EventLog
from lab.images import ImageMap
from lab.kube.balancers import Balancers
from lab.kube.nodes import Agents, AgentsConfig, NodeState
from lab.lag import Lag
from lab.procs import Registry

NODES_DIR = "nodes"  # in the state directory: pods/, events.jsonl, pids.txt, influxdb/


@dataclass
class Workers:
    api: Any  # kubernetes.client.ApiClient
    out: Path
    nodes: int
    image_map: ImageMap
    lag: Lag
    runtime: str = "process"
    seed: int | None = None
    agents: Agents | None = None
    balancers: Balancers | None = None
    registry: Registry | None = None
    _sink: IO[str] | None = None
    _started: list[str] = field(default_factory=list)

    async def start(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        self._sink = (self.out / "events.jsonl").open("a")
        events = EventLog(sink=self._sink)
        self.registry = Registry(self.out / "pids.txt", die_with_parent=True)
        self.agents = Agents(
            self.api,
            AgentsConfig(self.nodes, self.out, self.image_map, self.runtime, self.seed),
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
