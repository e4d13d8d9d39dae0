"""`lab cluster status`: what a state directory's cluster is doing, computed apart from
how it is printed."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from lab.kube import health
from lab.kube import state as st


@dataclass(frozen=True)
class ComponentHealth:
    name: str
    pid: int
    where: str
    problem: str | None  # None: healthy

    @property
    def healthy(self) -> bool:
        return self.problem is None


@dataclass
class ClusterStatus:
    state_dir: Path
    state: st.ClusterState | None
    running: bool
    components: list[ComponentHealth] = field(default_factory=list)
    nodes: list[health.NodeStatus] = field(default_factory=list)
    nodes_problem: str | None = None

    @property
    def healthy(self) -> bool:
        return (
            self.running
            and self.state is not None
            and self.state.ready
            and bool(self.components)
            and all(c.healthy for c in self.components)
            and self.nodes_problem is None
        )


async def _check(record: st.ComponentRecord, client: object) -> ComponentHealth:
    if not st.same_process(record.pid, record.start_time):
        return ComponentHealth(record.name, record.pid, "", "not running")
    if record.name == "etcd":
        url = f"http://127.0.0.1:{record.ports['client']}"
        return ComponentHealth(record.name, record.pid, url, await health.etcd_health(url))
    port = record.ports["secure"]
    where = f"https://127.0.0.1:{port}"
    if record.name == "kube-apiserver":
        return ComponentHealth(record.name, record.pid, where, await health.api_readyz(client))
    return ComponentHealth(record.name, record.pid, where, await health.secure_healthz(port))


async def _gather(state: st.ClusterState, result: ClusterStatus) -> None:
    client = health.api_client(Path(state.kubeconfig))
    try:
        result.components = list(
            await asyncio.gather(*(_check(record, client) for record in state.components))
        )
        try:
            result.nodes = await asyncio.to_thread(health.list_nodes, client)
        except Exception as exc:  # the client's errors have no common base
            result.nodes_problem = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
    finally:
        client.close()


def cluster_status(state_dir: Path) -> ClusterStatus:
    state_dir = state_dir.resolve()
    state = st.ClusterState.load(state_dir)
    # The owner's PID with its start time: the lock is not taken here, so a `status`
    # never makes a concurrent `up` think the directory is in use.
    running = state is not None and state.owner_alive()
    result = ClusterStatus(state_dir, state, running)
    if state is not None and running:
        if not Path(state.kubeconfig).exists():
            result.nodes_problem = f"no kubeconfig at {state.kubeconfig} yet"
            return result
        asyncio.run(_gather(state, result))
    return result


def render(status: ClusterStatus) -> str:
    if status.state is None or not status.running:
        return f"no cluster running in {status.state_dir}"
    state = status.state
    readiness = "ready" if state.ready else "starting"
    lines = [
        f"cluster in {status.state_dir}: running ({readiness}), owner pid {state.owner_pid}",
        f"API server: {state.api_url}",
        f"kubeconfig: {state.kubeconfig}",
    ]
    for c in status.components:
        what = "healthy" if c.problem is None else f"UNHEALTHY: {c.problem}"
        lines.append(f"  {c.name:<24} pid {c.pid:<8} {c.where:<24} {what}")
    if status.nodes_problem is not None:
        lines.append(f"nodes: cannot list: {status.nodes_problem}")
    elif not status.nodes:
        lines.append("nodes: none")
    else:
        lines.append("nodes:")
        for node in status.nodes:
            reason = f" ({node.reason})" if node.reason else ""
            lines.append(f"  {node.name:<24} Ready={node.ready}{reason}")
    return "\n".join(lines)
