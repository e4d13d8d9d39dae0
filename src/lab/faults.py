"""Fault injection: `--fault KIND@WHEN[:SECONDS]`, each one background task of the run.

WHEN counts from the start of the action (the scenario's rollout, scale, update or steady
time). Every fault's start and end is a `fault` event in the event log, so it shows in
report.json and on the timeline. Pod faults act through the container runtime's interface
(lab.runtime), so each exists once for process groups and Docker containers. Kinds:

- `influx-down:S`  stop influxd, start it again on the same data dir and port after S s
- `influx-stall:S` SIGSTOP influxd, SIGCONT after S s
- `container-crash` SIGKILL a ready pod's container (every process of it): the kubelet
                   restarts it in the same pod (same address, same emptyDir), with the
                   usual back-off
- `node-failure`   a ready pod's node stops: its address drops every packet at once
                   (lab.blackhole) and its containers die; the pod stays Ready until the
                   node-monitor grace period, and is replaced only once the unreachable
                   toleration has run out after that
- `pod-hang`       SIGSTOP every process of a ready pod's container: liveness fails and
                   the kubelet restarts the container (SIGTERM stays pending, SIGKILL at
                   the end of the grace)
- `lb-restart`     stop HAProxy and start it again with the same config, then add the
                   servers that were in rotation back through the runtime API (the
                   endpoints controller waits meanwhile); not a seamless reload, see
                   src/lab/README.md

On a real control plane (`--cluster local`, lab.kube.experiment) the pod and InfluxDB
faults act on the nodes' kubelet and InfluxDB as here; node-failure (`fail_node`) fails
the node through the API and leaves the rest to the real controllers, and lb-restart
(`restart_lb`) restarts the Service's load balancer.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable

from lab.config import NODE_MONITOR_GRACE, UNREACHABLE_TOLERATION, Fault
from lab.endpoints import EndpointsController
from lab.events import EventLog
from lab.haproxy import HAProxy
from lab.influx import InfluxServer
from lab.pods import Kubelet, Pod
from lab.procs import Registry
from lab.runtime import RuntimeContainer

UNDO_TIMEOUT = 30.0  # for each step of stop()'s undo


class Faults:
    """Runs the configured faults as kept tasks; `stop` cancels and undoes what is left."""

    def __init__(
        self,
        faults: tuple[Fault, ...],
        events: EventLog,
        registry: Registry,
        kubelet: Kubelet,
        influx: InfluxServer | None,
        pods: Callable[[], list[Pod]],
        haproxy: HAProxy | None = None,
        endpoints: EndpointsController | None = None,
        node_monitor_grace: float = NODE_MONITOR_GRACE,
        unreachable_toleration: float = UNREACHABLE_TOLERATION,
        node_down: Callable[[int], Awaitable[str]] | None = None,
        fail_node: Callable[[Pod], Awaitable[str]] | None = None,
        restart_lb: Callable[[], Awaitable[str]] | None = None,
    ) -> None:
        # On a real control plane: stops and starts the Service's load balancer, says
        # what it brought back.
        self.restart_lb = restart_lb
        # On a real control plane: fails the pod's node through the API, says what it
        # did; the node-lifecycle controller and taint manager do the rest.
        self.fail_node = fail_node
        # With --nodes: takes a failed node's proxy down with it, says what it did.
        self.node_down = node_down
        self.node_monitor_grace = node_monitor_grace
        self.unreachable_toleration = unreachable_toleration
        self.haproxy = haproxy
        self.endpoints = endpoints
        self.faults = faults
        self.events = events
        self.registry = registry
        self.kubelet = kubelet
        self.influx = influx
        self.pods = pods  # the Deployment's current pods
        self.tasks: list[asyncio.Task[None]] = []
        self.hung: list[tuple[RuntimeContainer, asyncio.Future[None]]] = []
        self.influx_paused = False
        self.influx_restart: asyncio.Future[None] | None = None
        self.lb_restart: asyncio.Future[None] | None = None

    def start(self) -> None:
        for fault in self.faults:
            self.tasks.append(asyncio.create_task(self._run(fault), name=f"fault {fault}"))

    async def _run(self, fault: Fault) -> None:
        try:
            if fault.on is not None:
                await self._wait_for_event(fault.on)
            await asyncio.sleep(fault.at)
        except asyncio.CancelledError:
            self._event(fault, "not-reached", "the run ended first")
            raise
        try:
            if fault.kind == "influx-down":
                await self._influx_down(fault)
            elif fault.kind == "influx-stall":
                await self._influx_stall(fault)
            elif fault.kind == "lb-restart":
                await self._lb_restart(fault)
            elif fault.kind == "container-crash":
                await self._container_crash(fault)
            elif fault.kind == "node-failure":
                await self._node_failure(fault)
            else:
                await self._pod_hang(fault)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a fault that cannot act is recorded, not fatal
            self._event(fault, "failed", repr(exc))

    async def _wait_for_event(self, kind: str) -> None:
        """Until a pod event of this kind is logged after the faults started; ends with
        the run (cancelled at the end of the cool-down)."""
        seen = len(self.events.events)
        for _ in itertools.count():
            if any(e.kind == kind and e.pod for e in self.events.events[seen:]):
                return
            await asyncio.sleep(0.02)

    def _event(self, fault: Fault, what: str, detail: str = "", pod: str = "") -> None:
        self.events.add(pod, "fault", f"{fault.kind} {what}{(' ' + detail) if detail else ''}")

    def _victim(self) -> Pod | None:
        """The oldest ready pod whose container runs."""
        for pod in self.pods():
            running = pod.running is not None and pod.running.returncode is None
            alive = not pod.terminating and not pod.gone and not pod.node_lost
            if pod.ready and alive and running:
                return pod
        return None

    async def _influx_down(self, fault: Fault) -> None:
        influx = self.influx
        if influx is None:
            self._event(fault, "skipped", "no InfluxDB in this run")
            return
        self._event(fault, "start", f"influxd stopped for {fault.seconds:g} s")
        stopping = asyncio.ensure_future(asyncio.to_thread(influx.stop))
        try:
            await asyncio.shield(stopping)
            await asyncio.sleep(fault.seconds)
        finally:
            with contextlib.suppress(Exception):
                await asyncio.shield(stopping)  # never start while the stop still runs
            # A thread cannot be cancelled: keep the start's future for the clean-up.
            self.influx_restart = asyncio.ensure_future(asyncio.to_thread(influx.start))
            await asyncio.shield(self.influx_restart)
            if influx.pid is not None:
                self.registry.record(influx.pid, "influxd")
            self._event(fault, "end", f"influxd started again, pid {influx.pid}")

    async def _influx_stall(self, fault: Fault) -> None:
        influx = self.influx
        if influx is None:
            self._event(fault, "skipped", "no InfluxDB in this run")
            return
        influx.pause()
        self.influx_paused = True
        self._event(fault, "start", f"influxd stopped (SIGSTOP) for {fault.seconds:g} s")
        try:
            await asyncio.sleep(fault.seconds)
        finally:
            influx.resume()
            self.influx_paused = False
            self._event(fault, "end", "influxd resumed (SIGCONT)")

    async def _container_crash(self, fault: Fault) -> None:
        pod = self._victim()
        if pod is None or pod.running is None:
            self._event(fault, "skipped", "no ready pod")
            return
        container = pod.running
        self._event(fault, "start", f"SIGKILL to {container.group}", pod.name)
        container.kill()
        # The kubelet sees the container exit and restarts it in the same pod, with
        # restartPolicy Always and the CrashLoopBackOff delays (pkg/kubelet/
        # kuberuntime/kuberuntime_manager.go computePodActions); the pod keeps its IP
        # and its emptyDir volumes, which live as long as the pod
        # (https://kubernetes.io/docs/concepts/storage/volumes/#emptydir).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(container.wait(), 10)
        self._event(fault, "end", f"container exited ({container.returncode})", pod.name)

    async def _node_failure(self, fault: Fault) -> None:
        pod = self._victim()
        if pod is None or pod.running is None:
            self._event(fault, "skipped", "no ready pod")
            return
        if self.fail_node is not None:
            self._event(fault, "start", await self.fail_node(pod), pod.name)
            return
        runtime = self.kubelet.runtime
        if not runtime.drops_addresses:
            self._event(fault, "skipped", "no nftables to make the node's address dead")
            return
        # With --nodes every pod bound to the victim's node goes with it (supporting
        # Deployments' too); with one node, the failed node holds the victim only.
        lost = [pod]
        if self.kubelet.nodes > 1:
            lost += [
                p
                for p in self.kubelet.pods
                if p is not pod and p.node == pod.node and not p.gone and not p.node_lost
            ]
        for victim in lost:
            victim.node_lost = True  # claimed before any await: no other fault takes it
        for victim in lost:
            # Packets first, so that not even the killed sockets' RSTs get out: a node
            # that is off answers nothing, and clients wait for their own timeouts. The
            # address stays dead for the rest of the run (lab.blackhole).
            await runtime.drop_address(victim)
            self.kubelet.lose_node(victim)
            if victim.running is not None and victim.running.returncode is None:
                victim.running.kill()
        where = f"node{pod.node}" if self.kubelet.nodes > 1 else "node"
        proxy = f"; {await self.node_down(pod.node)}" if self.node_down is not None else ""
        self._event(
            fault,
            "start",
            f"{where} down: {', '.join(v.ip for v in lost)} drop packets, "
            f"{len(lost)} pod{'s' if len(lost) != 1 else ''} killed{proxy}",
            pod.name,
        )
        grace = self.node_monitor_grace
        # The node controller marks the node's Ready condition Unknown, and its pods not
        # ready, once no status came for node-monitor-grace-period: 40 s, 50 s since
        # 1.32 (https://kubernetes.io/docs/reference/command-line-tools-reference/
        # kube-controller-manager/, pkg/controller/nodelifecycle/
        # node_lifecycle_controller.go). Until then the endpoint stays ready.
        await asyncio.sleep(grace)
        for victim in lost:
            self.kubelet.node_not_ready(victim, f"no node status for {grace:g} s")
        toleration = self.unreachable_toleration
        # The node gets the node.kubernetes.io/unreachable:NoExecute taint; every pod
        # tolerates it for 300 s by default (plugin/pkg/admission/
        # defaulttolerationseconds/admission.go), then the taint manager deletes it
        # (pkg/controller/tainteviction/taint_eviction.go) and the ReplicaSet, which
        # does not count a pod being deleted, creates a replacement.
        await asyncio.sleep(toleration)
        self._event(fault, "end", f"evicted after the {toleration:g} s toleration", pod.name)
        for victim in lost:
            self.kubelet.delete_pod(victim)

    async def _pod_hang(self, fault: Fault) -> None:
        pod = self._victim()
        if pod is None or pod.running is None:
            self._event(fault, "skipped", "no ready pod")
            return
        container = pod.running
        # Kept before the first await, with the freeze itself: stop() waits for a freeze
        # still under way (a thread on docker) before it thaws the container.
        freezing = asyncio.ensure_future(container.freeze())
        self.hung.append((container, freezing))
        await asyncio.shield(freezing)
        self._event(fault, "start", f"SIGSTOP to {container.group}", pod.name)
        # Ends when the kubelet has killed the hung container (liveness) or the pod went.
        await container.wait()
        self._event(fault, "end", f"hung container gone ({container.returncode})", pod.name)

    async def _lb_restart(self, fault: Fault) -> None:
        if self.restart_lb is not None:
            self.lb_restart = asyncio.ensure_future(self._restart_lb(fault, self.restart_lb))
            await asyncio.shield(self.lb_restart)
            return
        if self.haproxy is None or self.endpoints is None:
            self._event(fault, "skipped", "no load balancer")
            return
        # Shielded and kept: a cancellation at teardown must not leave HAProxy down.
        self.lb_restart = asyncio.ensure_future(
            self._restart_haproxy(fault, self.haproxy, self.endpoints)
        )
        await asyncio.shield(self.lb_restart)

    async def _restart_lb(self, fault: Fault, restart: Callable[[], Awaitable[str]]) -> None:
        self._event(fault, "start", "the Service's load balancer stopped")
        self._event(fault, "end", await restart())

    async def _restart_haproxy(
        self, fault: Fault, haproxy: HAProxy, endpoints: EndpointsController
    ) -> None:
        # The endpoints controller talks to HAProxy's socket: it pauses while HAProxy
        # is away, and puts the servers in rotation back once it is there again.
        async with endpoints.proxy_restarting() as servers:
            self._event(fault, "start", f"HAProxy stopped with {len(servers)} servers")
            await haproxy.stop()
            await haproxy.start(self.registry)
        self._event(fault, "end", f"HAProxy started again, {len(servers)} servers re-added")

    async def stop(self) -> None:
        """Cancel every fault and undo what it left: nothing stays stopped or down (a
        failed node's address stays dead until the runtime closes)."""
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        for container, freezing in self.hung:
            with contextlib.suppress(Exception):  # the undo must not stop the others
                await asyncio.wait_for(asyncio.shield(freezing), UNDO_TIMEOUT)
            if container.returncode is None:
                try:
                    await asyncio.wait_for(container.thaw(), UNDO_TIMEOUT)
                except Exception as exc:  # said, and the teardown's SIGKILL still ends it
                    self.events.add("", "fault", f"pod-hang undo failed: {exc!r}")
        if self.lb_restart is not None and not self.lb_restart.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self.lb_restart), UNDO_TIMEOUT)
        if self.influx_restart is not None and not self.influx_restart.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(self.influx_restart), UNDO_TIMEOUT)
        if self.influx_paused and self.influx is not None:
            self.influx.resume()
            self.influx_paused = False
