"""`lab run --cluster local`: the experiment on a real control plane.

The run starts its own control plane in `OUT/cluster` (lab.kube.controlplane) with the
lab's kubelet as its nodes and a balancer per LoadBalancer Service (lab.kube.workers),
applies the manifests with server-side apply in a namespace of its own, and lets the
real controllers do the rest: the Deployment controller rolls out (`rollout-restart`
patches the pod template's `kubectl.kubernetes.io/restartedAt`, as kubectl does) or
scales (the scale subresource), the ReplicaSet controller picks the victims, the
EndpointSlice controller publishes the endpoints each node's proxy follows. Load,
accounting and the report are the lab's, as with its own cluster (lab.experiment).

Faults (lab.faults) act where a real cluster's would happen: on the lab's kubelet that
runs the pods (container-crash SIGKILLs a container, pod-hang SIGSTOPs it; the kubelet
restarts it and reports the restart through `pods/status`), on the lab's InfluxDB
(influx-down, influx-stall), and on a node through the API (node-failure annotates the
victim's Node as `kubectl annotate node` does: its agent stops renewing the Lease, and the
real node-lifecycle controller and taint manager mark it and evict its pods). lb-restart
stops the Service's load balancer (the cloud's part) and starts it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, dynamic

from lab import report
from lab.experiment import (
    Experiment,
    LabError,
    OperationLog,
    Prepared,
)
from lab.faults import Faults
from lab.k6 import describe_exit
from lab.kube.api import REQUEST_TIMEOUT, Informer, WatchEvent, call
from lab.kube.balancers import Balancer
from lab.kube.controlplane import ClusterConfig, ControlPlane
from lab.kube.leftovers import NODES_DIR
from lab.kube.nodes import FAULT_ANNOTATION
from lab.kube.workers import Workers
from lab.manifest import raw_documents
from lab.pods import Pod

FIELD_MANAGER = "lab"
CLUSTER_DOWN = 180.0  # seconds for the nodes and the control plane to stop
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
POLL = 0.1


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _restarts(pod: dict[str, Any] | None) -> int:
    """The restartCount of the pod's containers, as its status says."""
    statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
    return sum(int(s.get("restartCount") or 0) for s in statuses)


class KubeLab(Experiment):
    """One experiment on a control plane of its own: steps with their undos (lab.steps),
    walked by lab.experiment's way out as lab.experiment.Lab's are."""

    def __init__(self, prepared: Prepared) -> None:
        # Kinds the lab's own controllers ignore go to the API server here, as they are.
        notes = [
            note.replace(": ignoring kind ", ": applied to the API server as it is: kind ")
            for note in prepared.notes
        ]
        prepared = dataclasses.replace(prepared, notes=notes)
        super().__init__(prepared, die_with_parent=True)
        self.namespace = f"lab-{int(time.time())}"
        self.deployment = prepared.manifests.deployment.name
        self.plane: ControlPlane | None = None
        self.workers: Workers | None = None
        self.api: Any = None
        # Pods of the Deployment under test, as the API has them (an informer's view).
        self.pods: dict[str, dict[str, Any]] = {}
        self.informer: Informer | None = None
        self.peak_pods = 0
        self.fewest_available: int | None = None
        self.sampling = False
        self._last_deployment: Any = None
        self._dynamic: Any = None  # the dynamic client, made on first use (discovery)

    # -- the run -------------------------------------------------------------------------

    async def run(self) -> report.Report:
        """The run as steps, each undone on the way out (lab.steps): the cluster, the
        Deployment applied and rolled out, the load, the faults; the action under load;
        then the load stops and every pod is deleted gracefully before the report."""
        config, steps = self.config, self.steps
        self.events.phase("start", f"{config.manifests} scenario {config.scenario} {self._where()}")
        for note in self.p.notes:
            self.events.add("", "note", note)
        await steps.do("cluster", self._up, self.cleanup, deadline=CLUSTER_DOWN)
        self.for_report = steps.mark()  # the report reads the cluster's InfluxDB
        # Scaling to 0 is skipped when forced: the nodes' undo kills every pod.
        grace = self.p.manifests.deployment.template.termination_grace + 30 + REQUEST_TIMEOUT
        url = await steps.do(
            "deployment", self._deploy, self._teardown_pods, deadline=grace, forced=0
        )
        under_load = steps.mark()
        await self._load(url)
        assert self.k6 is not None and self.load_start is not None
        self.events.phase("warm-up", f"{config.vus} VUs for {config.warmup:g} s to {url}")
        await self._sleep_under_load(config.warmup)
        self.sampling = True
        await steps.do("faults", self._start_faults, self._stop_faults, deadline=60, forced=15)
        completed, action_s = True, None
        if config.scenario == "steady":
            self.events.phase("steady", f"{config.duration:g} s")
            await self._sleep_under_load(config.duration)
            action_wall = time.time()
        else:
            action_wall = time.time()
            action_start = time.monotonic()
            generation = await self._act()
            self.events.phase("action", config.scenario)
            completed = await self._until(
                lambda: self._rolled_out(generation), config.action_timeout
            )
            action_s = time.monotonic() - action_start
            self.events.phase(
                "action-complete" if completed else "action-timeout", f"{action_s:.1f} s"
            )
        self.sampling = False
        self.events.phase("cool-down", f"{config.cooldown:g} s")
        await self._sleep_under_load(config.cooldown)
        await steps.undo(down_to=under_load + 1)  # the faults end (undone) under load
        stopping = self.events.phase("stop-load")
        code = await self.k6.stop()  # in-flight requests finish: the stop is measured
        self.events.phase("load-stopped", describe_exit(code))
        await steps.undo(down_to=self.for_report)
        return await self._report(
            stopping_wall=stopping.wall,
            steady_window=(self.load_start + 1, action_wall),
            completed=completed,
            action_s=action_s,
        )

    async def _deploy(self) -> str:
        """The manifests applied, rolled out and in the load balancer; the load's URL."""
        self._watch_pods()
        await self._apply()
        self.events.phase("deploy", f"{self._replicas()} replicas")
        return await self._wait_deployed()

    def _where(self) -> str:
        return "on a real control plane"

    async def _up(self) -> None:
        """The control plane and the lab's nodes, in OUT/cluster."""
        config = self.config
        plane = self.plane = ControlPlane(
            ClusterConfig(
                state_dir=self.out / "cluster",
                nodes=config.nodes,
                node_monitor_grace=config.node_monitor_grace,
                unreachable_toleration=int(config.unreachable_toleration),
                image_map=config.image_map_path,
                endpoint_lag=config.endpoint_lag,
                seed=config.seed,
            ),
            progress=self._cluster_progress,
        )
        await plane.start()
        plane.mark_ready()
        self.api = plane.client()
        self.workers = Workers(
            self.api,
            self.out / "cluster" / NODES_DIR,
            config.nodes,
            self.p.images,
            config.endpoint_lag,
            config.runtime,
            seed=config.seed,
            events=self.events,
            registry=self.registry,
            home_namespace=self.namespace,
        )
        await self.workers.start()
        assert self.workers.agents is not None
        if self.p.uses_influx:
            await self.workers.agents.ensure_influx(self.p.influx_db)
        self.events.phase("cluster", f"{plane.api_url}, namespace {self.namespace}")

    async def _wait_deployed(self) -> str:
        """Until the Deployment is rolled out and every node proxy has its pods; the URL
        of the Service's balancer."""
        timeout = self.config.ready_timeout
        if not await self._until(self._deployed, timeout):
            raise LabError(
                f"the Deployment {self.deployment} was not rolled out and in the load "
                f"balancer within {timeout:g} s; see {self.out}/cluster/nodes/pods/"
            )
        balancer = self._balancer()
        assert balancer is not None and balancer.proxies is not None
        return f"http://{balancer.address}:{balancer.port}"

    def _cluster_progress(self, line: str) -> None:
        self.events.add("", "cluster", line)

    def _replicas(self) -> int:
        replicas = self.config.replicas
        return replicas if replicas is not None else self.p.manifests.deployment.replicas

    # -- applying and acting, through the API -------------------------------------------

    def _documents(self) -> list[dict[str, Any]]:
        """Every document of the manifests, but the Deployments the lab's InfluxDB
        replaces (and their Services); the Deployment under test with --replicas."""
        replaced = {s.deployment.name for s in self.p.manifests.supporting if s.replaced_by}
        services = {
            svc.name for s in self.p.manifests.supporting if s.replaced_by for svc in s.services
        }
        docs = []
        for _, doc in raw_documents(list(self.p.manifests.sources)):
            kind, name = doc.get("kind"), (doc.get("metadata") or {}).get("name")
            if (kind == "Deployment" and name in replaced) or (
                kind == "Service" and name in services
            ):
                continue
            if (
                kind == "Deployment"
                and name == self.deployment
                and self.config.replicas is not None
            ):
                doc = {**doc, "spec": {**doc["spec"], "replicas": self.config.replicas}}
            docs.append(doc)
        return docs

    async def _apply(self) -> None:
        core = client.CoreV1Api(self.api)
        await call(core.create_namespace, {"metadata": {"name": self.namespace}})

        def apply_all() -> list[str]:
            return [self._apply_one(doc) for doc in self._documents()]

        applied = await asyncio.to_thread(apply_all)
        self.events.phase("applied", ", ".join(applied))

    def _apply_one(self, doc: dict[str, Any]) -> str:
        """Server-side apply of one document in the run's namespace (blocking)."""
        if self._dynamic is None:
            self._dynamic = dynamic.DynamicClient(self.api)
        resource = self._dynamic.resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
        resource.server_side_apply(
            body=doc,
            namespace=self.namespace if resource.namespaced else None,
            field_manager=FIELD_MANAGER,
            force_conflicts=True,
            _request_timeout=REQUEST_TIMEOUT,
        )
        return f"{doc['kind']}/{doc['metadata']['name']}"

    async def _act(self) -> int:
        """The scenario's action; returns the Deployment generation it made."""
        apps = client.AppsV1Api(self.api)
        if self.config.scenario == "rollout-restart":
            # What `kubectl rollout restart` does (kubectl/pkg/polymorphichelpers/
            # objectrestarter.go): a new annotation on the pod template.
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            body: dict[str, Any] = {
                "spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: stamp}}}}
            }
            done = await call(
                apps.patch_namespaced_deployment, self.deployment, self.namespace, body
            )
        elif self.config.scenario == "update":
            # The other manifests' Deployment of the same name, applied as it is but for
            # its replicas (kept as they are now): the Deployment controller rolls out
            # its pod template.
            assert self.p.update is not None
            now = await call(apps.read_namespaced_deployment, self.deployment, self.namespace)
            (doc,) = [
                d
                for _, d in raw_documents(list(self.p.update.sources))
                if d.get("kind") == "Deployment"
                and (d.get("metadata") or {}).get("name") == self.deployment
            ]
            doc = {**doc, "spec": {**doc["spec"], "replicas": now.spec.replicas}}
            await asyncio.to_thread(self._apply_one, doc)
            done = await call(apps.read_namespaced_deployment, self.deployment, self.namespace)
        else:
            assert self.config.to is not None
            body = {"spec": {"replicas": self.config.to}}
            await call(
                apps.patch_namespaced_deployment_scale, self.deployment, self.namespace, body
            )
            done = await call(apps.read_namespaced_deployment, self.deployment, self.namespace)
        return int(done.metadata.generation)

    # -- faults ----------------------------------------------------------------------------

    async def _start_faults(self) -> None:
        """The run's faults, from the start of the action, on the lab's kubelet and
        InfluxDB and, for a node, through the API."""
        agents = self.workers.agents if self.workers is not None else None
        if not self.config.faults or agents is None or agents.kubelet is None:
            return
        self.faults = Faults(
            self.config.faults,
            self.events,
            self.registry,
            agents.kubelet,
            agents.influx,
            self._lab_pods,
            node_monitor_grace=self.config.node_monitor_grace,
            unreachable_toleration=self.config.unreachable_toleration,
            fail_node=self._fail_node,
            restart_lb=self._restart_balancer,
        )
        self.faults.start()

    def _lab_pods(self) -> list[Pod]:
        """The kubelet's pods of the Deployment under test, in the order the nodes
        admitted them (the oldest first), as the API has them now."""
        if self.workers is None or self.workers.agents is None:
            return []
        return [
            t.pod
            for t in self.workers.agents.tracked.values()
            if t.pod is not None and t.namespace == self.namespace and t.name in self.pods
        ]

    async def _fail_node(self, pod: Pod) -> str:
        """`kubectl annotate node NODE lab.graceful-calc/fault=node-failure` on the
        pod's node; returns once its agent has stopped (lab.kube.nodes.Agents.fail)."""
        assert self.workers is not None and self.workers.agents is not None
        agents = self.workers.agents
        (index,) = [t.node for t in agents.tracked.values() if t.pod is pod]
        node = agents.nodes[index]
        body = {"metadata": {"annotations": {FAULT_ANNOTATION: "node-failure"}}}
        await call(client.CoreV1Api(self.api).patch_node, node.name, body)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REQUEST_TIMEOUT
        while loop.time() < deadline:  # the agent acts on its watch of the Node
            if pod.node_lost:  # its node's pods are all lost at once (Agents.fail)
                break
            await asyncio.sleep(POLL / 10)
        lost = [
            t.name
            for t in agents.tracked.values()
            if t.node == index and t.pod is not None and t.pod.node_lost
        ]
        return (
            f"{node.name} annotated {FAULT_ANNOTATION}=node-failure: no more Lease or status, "
            f"{len(lost)} pod{'s' if len(lost) != 1 else ''} killed, their addresses drop "
            "packets"
        )

    async def _restart_balancer(self) -> str:
        """The Service's load balancer (the cloud's part, lab.kube.balancers) stopped and
        started again on the same address and port, with every node's proxy behind it
        again: a hard restart, as lb-restart on the lab's own cluster."""
        balancer = self._balancer()
        if balancer is None or balancer.proxies is None or balancer.proxies.front is None:
            raise LabError("the Service has no load balancer")
        front = balancer.proxies.front
        await front.stop()
        await front.start(self.registry)
        nodes = self.workers.node_states if self.workers is not None else []
        for node, proxy in zip(nodes, balancer.proxies.proxies, strict=True):
            front.add_server(node.name, proxy.host, proxy.port)
        return f"started again on {front.host}:{front.port}, {len(nodes)} node proxies behind it"

    # -- what the API says ---------------------------------------------------------------

    def _watch_pods(self) -> None:
        core = client.CoreV1Api(self.api)
        selector = ",".join(f"{k}={v}" for k, v in self.p.manifests.deployment.selector.items())
        self.informer = Informer(
            f"pods of {self.deployment}",
            lambda **kw: core.list_namespaced_pod(self.namespace, **kw),
            self._pod_event,
            lambda message: self.events.add("", "api-error", message),
            label_selector=selector,
        )
        self.informer.start()

    def _pod_event(self, event: WatchEvent) -> None:
        if event.kind == "SYNCED":
            return
        name = event.obj["metadata"]["name"]
        if event.kind == "DELETED":
            self.pods.pop(name, None)
        else:
            before = _restarts(self.pods.get(name))
            self.pods[name] = event.obj
            after = _restarts(event.obj)
            if after > before:
                # A container restart as the API shows it (a fault's, or liveness's).
                self.events.add(name, "restart-count", f"{after} in the pod's status")
        if self.sampling:
            # maxSurge and maxUnavailable as the pods show them: the pods not being
            # deleted (terminating pods count toward neither, as the Deployment
            # controller counts them), and those of them Ready.
            active = [p for p in self.pods.values() if not p["metadata"].get("deletionTimestamp")]
            self.peak_pods = max(self.peak_pods, len(active))
            available = len(self._available())
            self.fewest_available = min(self.fewest_available or available, available)

    def _available(self) -> list[dict[str, Any]]:
        return [
            p
            for p in self.pods.values()
            if _ready(p) and not p["metadata"].get("deletionTimestamp")
        ]

    async def _refresh(self) -> None:
        apps = client.AppsV1Api(self.api)
        self._last_deployment = await call(
            apps.read_namespaced_deployment, self.deployment, self.namespace
        )

    def _rolled_out(self, generation: int) -> bool:
        """`kubectl rollout status`'s test (kubectl/pkg/polymorphichelpers/rollout_status.go),
        and every pod the rollout deleted gone: a pod's SIGTERM is when requests and
        operations get dropped, so the load goes on until the last one has exited."""
        d = self._last_deployment
        if d is None or (d.status.observed_generation or 0) < generation:
            return False
        want = d.spec.replicas or 0
        status = d.status
        return (
            (status.updated_replicas or 0) == want
            and (status.replicas or 0) == want
            and (status.available_replicas or 0) == want
            and len(self.pods) == want
        )

    def _balancer(self) -> Balancer | None:
        if self.workers is None or self.workers.balancers is None:
            return None
        service = self.p.manifests.service
        name = service.name if service is not None else ""
        return self.workers.balancers.open.get(f"{self.namespace}/{name}")

    def _deployed(self) -> bool:
        if not self._rolled_out(1):
            return False
        balancer = self._balancer()
        if balancer is None or balancer.proxies is None or not balancer.proxies.controllers:
            return False
        return all(c.in_lb == c.desired() and c.in_lb for c in balancer.proxies.controllers)

    async def _until(self, predicate: Any, timeout: float) -> bool:
        self._last_deployment = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            await self._refresh()
            if predicate():
                return True
            self._check_parts()
            await asyncio.sleep(POLL)
        return False

    def _check_parts(self) -> None:
        if self.k6 is not None and self.k6.process is not None:
            code = self.k6.process.returncode
            if code is not None:
                raise LabError(f"k6 exited early with code {code}; see {self.k6.log_path}")
        if self.plane is not None:
            for component in self.plane.components.values():
                if component.process.returncode is not None:
                    raise LabError(f"{component.name} exited: {component.log_tail()}")

    # -- the end ---------------------------------------------------------------------------

    async def _teardown_pods(self) -> None:
        """Scale the Deployment to 0 through the API: the real controllers delete every
        pod gracefully (preStop, SIGTERM, grace), so their last writes are stored."""
        self.events.phase("teardown", "scaling to 0: every pod deleted gracefully")
        apps = client.AppsV1Api(self.api)
        with contextlib.suppress(Exception):
            await call(
                apps.patch_namespaced_deployment_scale,
                self.deployment,
                self.namespace,
                {"spec": {"replicas": 0}},
            )
        grace = self.p.manifests.deployment.template.termination_grace
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace + 30
        while loop.time() < deadline:
            if not self._pods_to_wait_for():
                break
            await asyncio.sleep(POLL)
        if left := self._pods_to_wait_for():
            self.events.phase("teardown-forced", f"pods still there: {', '.join(sorted(left))}")

    def _pods_to_wait_for(self) -> list[str]:
        """The pods still in the API but those on a failed node: no kubelet is left to
        confirm their end (they stay Terminating, as on a real cluster)."""
        agents = self.workers.agents if self.workers is not None else None
        failed = {n.name for n in agents.nodes if n.failed} if agents is not None else set()
        return [
            name
            for name, pod in self.pods.items()
            if (pod.get("spec") or {}).get("nodeName") not in failed
        ]

    def _operation_log(self) -> OperationLog | None:
        agents = self.workers.agents if self.workers is not None else None
        return agents.influx if agents is not None else None

    def _pod_bounds(self) -> tuple[int, int | None] | None:
        return (self.peak_pods, self.fewest_available)

    def _cluster_notes(self) -> tuple[str, ...]:
        return (
            "a real control plane (--cluster local): etcd, kube-apiserver, "
            "kube-controller-manager and kube-scheduler; the lab's kubelet and node proxies",
        )

    async def cleanup(self) -> None:
        """The cluster step's undo: the watch, the nodes (and every pod on them) and the
        control plane stop. (lab.kube.remote.RemoteLab's deletes its namespace instead.)"""
        if self.informer is not None:
            await self.informer.stop()
        try:
            if self.workers is not None:
                await self.workers.stop()
        finally:
            if self.plane is not None:
                await self.plane.stop()
            if self.api is not None:
                with contextlib.suppress(Exception):
                    self.api.close()
