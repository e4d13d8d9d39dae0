"""The lab's kubelet as a real control plane's nodes (the pattern of virtual-kubelet and
kwok, with the pods run for real by lab.pods.Kubelet on the lab's runtime).

Per node, what a kubelet does for the controllers (pkg/kubelet/kubelet_node_status.go,
pkg/kubelet/nodelease, pkg/kubelet/status/status_manager.go):
- register a Node (Ready, an InternalIP, allocatable cpu, memory and pods, the standard
  labels) and renew its Lease in `kube-node-lease` every 10 s (a 40 s lease);
- run the pods the scheduler binds to it, and report their status through
  `pods/status` (lab.kube.podstatus);
- at a pod's deletionTimestamp: preStop, SIGTERM, the grace period from
  `deletionGracePeriodSeconds`, SIGKILL; then the terminal phase, and the final delete
  with grace 0 and a UID precondition.

Pod addresses: the process runtime's pods listen on loopback addresses, which the API
server refuses in an EndpointSlice (ValidateEndpointIP, pkg/apis/core/validation). Each
pod's status names instead the address of the same host number in its node's podCIDR
(allocated by the controller manager's node IPAM, as a CNI's host-local plugin would);
the lab's node proxies map it back (`Agents.local_address`). No packet is ever sent to
a podCIDR address.

A node failure (`fail`) is asked for through the API: `kubectl annotate node NAME
lab.graceful-calc/fault=node-failure`. The node's agent then stops renewing its Lease
and reporting, and its pods die with their addresses dropping packets, as a powered-off
machine's would; the real node-lifecycle controller and taint manager do the rest.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import os
import platform
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client

from lab import blackhole
from lab.blackhole import Blackhole
from lab.container_config import Configs, from_pod_spec
from lab.docker_runtime import DockerRuntime
from lab.events import EventLog
from lab.images import ImageMap
from lab.influx import INFLUX_SERVICE, InfluxServer, uses_influx
from lab.kube import leftovers
from lab.kube.api import Informer, WatchEvent, call, call_json, status_of
from lab.kube.podspec import strip_api_additions, template_of
from lab.kube.podstatus import Observed, pod_status
from lab.manifest import ManifestError
from lab.pods import AddressPool, Kubelet, Pod
from lab.procs import Registry
from lab.runtime import ProcessRuntime, Runtime, StartError
from lab.waits import stop_task, wait_event

NODE_PREFIX = "lab-node-"
FAULT_ANNOTATION = "lab.graceful-calc/fault"
# The kubelet's defaults: nodeLeaseDurationSeconds 40, renewed every quarter of it
# (pkg/kubelet/kubelet.go, NodeLeaseRenewIntervalFraction 0.25).
LEASE_SECONDS = 40
LEASE_RENEW = 10.0
PODS_PER_NODE = 110  # the kubelet's default maxPods
STATUS_TICK = 0.1  # how often pod status is compared with what was last written


def node_name(index: int) -> str:
    return f"{NODE_PREFIX}{index}"


def micro_time(wall: float) -> str:
    """metav1.MicroTime: RFC 3339 with microseconds."""
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _memory_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1])
    return 0


@dataclass(eq=False)
class Tracked:
    """One API pod this agent runs."""

    uid: str
    namespace: str
    name: str
    node: int
    pod: Pod | None  # None when the lab cannot run it (`problem` says why)
    seen: Observed
    image: str
    container: str
    problem: str = ""
    deleting: bool = False
    grace: float = 30.0  # the deletion's grace period, once deleting
    finished: bool = False  # the final delete is done: nothing more to report
    sent: dict[str, Any] | None = None


@dataclass
class NodeState:
    index: int
    name: str
    address: str  # its InternalIP: a loopback address of its own, for its proxy
    pod_cidr: ipaddress.IPv4Network | None = None
    failed: bool = False
    lease_task: asyncio.Task[None] | None = None
    informer: Informer | None = None
    node_informer: Informer | None = None


@dataclass
class AgentsConfig:
    nodes: int
    out: Path  # pods/, events.jsonl and influxdb/ go here
    image_map: ImageMap
    runtime: str = "process"
    seed: int | None = None
    # Pods of this namespace keep their own name in the events and files; others get
    # NAMESPACE_NAME (an experiment's own namespace is its home).
    home_namespace: str = "default"


@dataclass
class Agents:
    """Every lab node of one cluster, on one Kubelet and one runtime."""

    api: client.ApiClient
    config: AgentsConfig
    events: EventLog
    registry: Registry
    addresses: AddressPool = field(default_factory=AddressPool)
    nodes: list[NodeState] = field(default_factory=list)
    tracked: dict[str, Tracked] = field(default_factory=dict)  # uid -> pod
    kubelet: Kubelet | None = None
    influx: InfluxServer | None = None
    dead: Blackhole | None = None
    # The docker runtime's container settings per pod template, and where its pods
    # reach the host (the network's gateway); the process runtime's pods use loopback.
    configs: Configs = field(default_factory=Configs)
    influx_host: str = "127.0.0.1"
    on_pod_change: Callable[[], None] | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _influx_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _errors: list[str] = field(default_factory=list)

    # -- start and stop ------------------------------------------------------------------

    async def start(self, timeout: float = 30.0) -> None:
        self.core = client.CoreV1Api(self.api)
        self.coordination = client.CoordinationV1Api(self.api)
        self.kube_version = str((await call(client.VersionApi(self.api).get_code)).git_version)
        pods_dir = self.config.out / "pods"
        base_env = dict(os.environ)
        runtime: Runtime
        if self.config.runtime == "docker":
            # Pods as containers on a Docker network of the cluster's own (lab.docker_runtime):
            # real bridge IPs, which the pods' status names as they are.
            docker = DockerRuntime(pods_dir, self.configs.of, self._rewrite)
            if blackhole.available() is None:
                docker.dead = Blackhole()
            leftovers.record(
                self.config.out, docker.run_id, docker.dead.table if docker.dead else None
            )
            await docker.open()
            self.dead, self.influx_host, runtime = docker.dead, docker.gateway, docker
        else:
            if blackhole.available() is None:
                self.dead = Blackhole()
            leftovers.record(self.config.out, None, self.dead.table if self.dead else None)
            runtime = ProcessRuntime(
                self.registry, pods_dir, base_env, self._rewrite, self.addresses, self.dead
            )
        self.kubelet = Kubelet(
            self.events,
            self.registry,
            pods_dir,
            base_env,
            self._rewrite,
            random.Random(self.config.seed),
            on_change=self._wake.set,
            runtime=runtime,
            nodes=self.config.nodes,
        )
        for index in range(self.config.nodes):
            self.nodes.append(NodeState(index, node_name(index), self.addresses.take()))
        async with asyncio.timeout(timeout):
            for node in self.nodes:
                await self._register(node)
            for node in self.nodes:
                await self._wait_pod_cidr(node)
        for node in self.nodes:
            node.lease_task = self._spawn(self._renew_lease(node), f"lease {node.name}")
            node.informer = Informer(
                f"pods on {node.name}",
                self.core.list_pod_for_all_namespaces,
                functools.partial(self._on_pod, node),
                self._error,
                field_selector=f"spec.nodeName={node.name}",
            )
            node.node_informer = Informer(
                f"node {node.name}",
                self.core.list_node,
                functools.partial(self._on_node, node),
                self._error,
                field_selector=f"metadata.name={node.name}",
            )
            node.informer.start()
            node.node_informer.start()
        self._spawn(self._sync_status(), "pod status")
        for node in self.nodes:
            assert node.informer is not None
            async with asyncio.timeout(timeout):
                await node.informer.synced.wait()

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[None]:
        """A task kept until it ends; an error that ends it becomes an event."""
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._error(f"{task.get_name()} failed: {task.exception()!r}")

    async def stop(self, timeout: float = 10.0) -> None:
        """The cluster is going away: stop watching, kill every pod (there is no API left
        to report to), remove the nodes' dead-address table and the InfluxDB."""
        for node in self.nodes:
            for informer in (node.informer, node.node_informer):
                if informer is not None:
                    await informer.stop()
        for task in list(self._tasks):
            await stop_task(task)
        if self.kubelet is not None:
            await self.kubelet.shutdown(timeout)
            await self.kubelet.runtime.close()
            leftovers.forget(self.config.out)
        if self.influx is not None:
            await asyncio.to_thread(self.influx.close)

    def _error(self, message: str) -> None:
        self._errors.append(message)
        self.events.add("", "api-error", message)

    # -- the node ------------------------------------------------------------------------

    def _node_body(self, node: NodeState) -> dict[str, Any]:
        now = micro_time(time.time())
        memory = f"{_memory_kib()}Ki"
        resources = {
            "cpu": str(os.cpu_count() or 1),
            "memory": memory,
            "pods": str(PODS_PER_NODE),
            "ephemeral-storage": "100Gi",
        }

        def condition(kind: str, status: str, reason: str, message: str) -> dict[str, str]:
            return {
                "type": kind,
                "status": status,
                "reason": reason,
                "message": message,
                "lastHeartbeatTime": now[:19] + "Z",
                "lastTransitionTime": now[:19] + "Z",
            }

        return {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": node.name,
                "labels": {
                    "kubernetes.io/hostname": node.name,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                    "beta.kubernetes.io/os": "linux",
                    "beta.kubernetes.io/arch": "amd64",
                    "node.kubernetes.io/instance-type": "lab",
                },
            },
            "spec": {},
            "status": {
                "capacity": resources,
                "allocatable": resources,
                "conditions": [
                    condition("MemoryPressure", "False", "KubeletHasSufficientMemory", ""),
                    condition("DiskPressure", "False", "KubeletHasNoDiskPressure", ""),
                    condition("PIDPressure", "False", "KubeletHasSufficientPID", ""),
                    condition("Ready", "True", "KubeletReady", "the lab's kubelet is posting"),
                ],
                "addresses": [
                    {"type": "InternalIP", "address": node.address},
                    {"type": "Hostname", "address": node.name},
                ],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
                "nodeInfo": {
                    "machineID": node.name,
                    "systemUUID": node.name,
                    "bootID": f"{node.name}-{os.getpid()}",
                    "kernelVersion": platform.release(),
                    "osImage": "lab",
                    "containerRuntimeVersion": f"lab://{self.config.runtime}",
                    # The kubelet is as new as the API server (version skew 0).
                    "kubeletVersion": self.kube_version,
                    "kubeProxyVersion": "",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                },
            },
        }

    async def _register(self, node: NodeState) -> None:
        """Create the Node, or take over one of that name a previous agent left
        (the kubelet's tryRegisterWithAPIServer), then write its status."""
        body = self._node_body(node)
        try:
            await call(self.core.create_node, body)
        except Exception as exc:
            if status_of(exc) != 409:
                raise
        await call(self.core.patch_node_status, node.name, {"status": body["status"]})
        self.events.add(node.name, "node-registered", f"InternalIP {node.address}")

    async def _wait_pod_cidr(self, node: NodeState) -> None:
        """The controller manager's node IPAM gives each new Node a podCIDR."""
        while True:
            found = await call_json(self.core.read_node, node.name)
            cidr = (found.get("spec") or {}).get("podCIDR")
            if cidr:
                node.pod_cidr = ipaddress.IPv4Network(cidr)
                self.events.add(node.name, "pod-cidr", cidr)
                return
            await asyncio.sleep(0.1)

    async def _renew_lease(self, node: NodeState) -> None:
        """The node's heartbeat: its Lease in kube-node-lease, renewed every 10 s
        (pkg/kubelet/nodelease via k8s.io/component-helpers/apimachinery/lease)."""
        while not node.failed:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": node.name, "namespace": "kube-node-lease"},
                "spec": {
                    "holderIdentity": node.name,
                    "leaseDurationSeconds": LEASE_SECONDS,
                    "renewTime": micro_time(time.time()),
                },
            }
            try:
                await call(
                    self.coordination.patch_namespaced_lease, node.name, "kube-node-lease", body
                )
            except Exception as exc:
                if status_of(exc) == 404:
                    try:
                        await call(
                            self.coordination.create_namespaced_lease, "kube-node-lease", body
                        )
                    except Exception as again:
                        self._error(f"lease {node.name}: {again}")
                else:
                    self._error(f"lease {node.name}: {exc}")
            await asyncio.sleep(LEASE_RENEW)

    def _on_node(self, node: NodeState, event: WatchEvent) -> None:
        annotations = (event.obj.get("metadata") or {}).get("annotations") or {}
        if annotations.get(FAULT_ANNOTATION) == "node-failure" and not node.failed:
            self._spawn(self.fail(node.index), f"fail {node.name}")

    async def fail(self, index: int) -> None:
        """The node stops: no more lease, no status, its pods' containers die, and their
        addresses and the node's own drop every packet."""
        node = self.nodes[index]
        node.failed = True
        self.events.add(node.name, "node-failed", "lease renewal and status reports stop")
        if node.lease_task is not None:
            await stop_task(node.lease_task)
        assert self.kubelet is not None
        lost = [
            t.pod
            for t in self.tracked.values()
            if t.node == index and t.pod is not None and not t.pod.gone
        ]
        if self.dead is not None:
            # Packets first, so that not even the killed sockets' RSTs get out: a node
            # that is off answers nothing (the pods' addresses stay dead, lab.blackhole).
            for pod in lost:
                await self.kubelet.runtime.drop_address(pod)
        for pod in lost:
            self.kubelet.lose_node(pod)
        if self.dead is not None:
            await self.dead.drop(node.address)

    # -- pods ----------------------------------------------------------------------------

    def _on_pod(self, node: NodeState, event: WatchEvent) -> None:
        if event.kind == "SYNCED" or node.failed:
            return
        meta = event.obj["metadata"]
        uid = meta["uid"]
        tracked = self.tracked.get(uid)
        if event.kind == "DELETED":
            if tracked is not None and not (tracked.pod is not None and tracked.pod.gone):
                # Deleted with grace 0 (a force delete): the kubelet still kills the
                # containers, with its 2 s minimum (minimumGracePeriodInSeconds,
                # pkg/kubelet/kuberuntime/kuberuntime_container.go). A pod still being
                # admitted is killed as soon as it exists.
                self._delete(tracked, 0.0)
            if tracked is not None:
                tracked.finished = True
            return
        phase = (event.obj.get("status") or {}).get("phase")
        if tracked is None:
            if phase in ("Succeeded", "Failed"):
                return  # a pod a previous agent finished: nothing to run
            placeholder = Tracked(
                uid,
                meta.get("namespace", "default"),
                meta["name"],
                node.index,
                None,
                Observed(created_wall=time.time()),
                "",
                "",
            )
            self.tracked[uid] = placeholder
            self._spawn(self._admit(node, placeholder, event.obj), f"admit {meta['name']}")
            return
        if meta.get("deletionTimestamp") and not tracked.deleting:
            grace = meta.get("deletionGracePeriodSeconds")
            self._delete(tracked, float(grace) if grace is not None else 30.0)

    def _delete(self, tracked: Tracked, grace: float) -> None:
        tracked.deleting, tracked.grace = True, grace
        pod = tracked.pod
        if pod is None:
            self._wake.set()
            return
        assert self.kubelet is not None
        # The grace period counts from when the kubelet sees the deletion, with the
        # seconds the API server gave it (deletionGracePeriodSeconds).
        pod.template = dataclasses.replace(pod.template, termination_grace=grace)
        self.kubelet.delete_pod(pod)

    async def _admit(self, node: NodeState, tracked: Tracked, obj: dict[str, Any]) -> None:
        assert self.kubelet is not None
        spec = obj.get("spec") or {}
        containers = spec.get("containers") or [{}]
        tracked.container = str(containers[0].get("name", ""))
        tracked.image = str(containers[0].get("image", ""))
        notes: list[str] = []
        try:
            template = await template_of(obj, self._read_config_map, self._read_secret, notes)
            image = self.config.image_map.image(template.container.image)
            if isinstance(self.kubelet.runtime, DockerRuntime):
                where = f"pod {tracked.namespace}/{tracked.name}: spec"
                spec = strip_api_additions(obj).get("spec") or {}
                self.configs.add(template.container, from_pod_spec(spec, where))
                await self.kubelet.runtime.check_images([template.container.image])
            if uses_influx(template.container):
                await self.ensure_influx()
            lab_name = self.lab_name(tracked.namespace, tracked.name)
            hash_label = template.labels.get("pod-template-hash", "")
            revision = int(hash_label, 36) % 1000 if hash_label.isalnum() else 0
            tracked.pod = self.kubelet.create_pod(
                lab_name, template, image, revision, node=node.index
            )
        except (ManifestError, OSError, ValueError, RuntimeError, StartError) as exc:
            # The kubelet reports such a pod as waiting with the reason, and never runs it.
            tracked.problem = str(exc)
            self.events.add(self.lab_name(tracked.namespace, tracked.name), "cannot-run", str(exc))
        meta = obj.get("metadata") or {}
        if tracked.deleting:  # deleted while it was being admitted
            self._delete(tracked, tracked.grace)
        elif meta.get("deletionTimestamp"):
            grace = meta.get("deletionGracePeriodSeconds")
            self._delete(tracked, float(grace) if grace is not None else 0.0)
        self._wake.set()

    async def _read_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._read(self.core.read_namespaced_config_map, namespace, name)

    async def _read_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self._read(self.core.read_namespaced_secret, namespace, name)

    async def _read(
        self, fn: Callable[..., Any], namespace: str, name: str
    ) -> dict[str, Any] | None:
        try:
            return await call_json(fn, name, namespace)
        except Exception as exc:
            if status_of(exc) == 404:
                return None
            raise

    def lab_name(self, namespace: str, name: str) -> str:
        """The pod's name in the lab's events and files: its own in the home namespace,
        else with its namespace (`_` cannot be in either, so names stay unique)."""
        return name if namespace in (self.config.home_namespace, "") else f"{namespace}_{name}"

    def local_address(self, api_ip: str) -> str | None:
        """The loopback address a pod listens on, for the address its status names."""
        for tracked in self.tracked.values():
            if tracked.pod is not None and self._api_ip(tracked) == api_ip:
                return tracked.pod.ip
        return None

    def _api_ip(self, tracked: Tracked) -> str:
        assert tracked.pod is not None
        if self.config.runtime == "docker":
            return tracked.pod.ip  # a container's own address on the cluster's network
        cidr = self.nodes[tracked.node].pod_cidr
        assert cidr is not None
        host = int(tracked.pod.ip.rsplit(".", 1)[1])
        return str(cidr.network_address + host)

    async def _sync_status(self) -> None:
        """Write each pod's status when it changed (the status manager's syncPod), and
        delete pods whose containers have stopped after their deletion."""
        while True:
            await wait_event(self._wake, STATUS_TICK)
            self._wake.clear()
            work = [
                self._sync_one(t)
                for t in list(self.tracked.values())
                if not t.finished and not self.nodes[t.node].failed
            ]
            for failed in await asyncio.gather(*work, return_exceptions=True):
                if isinstance(failed, Exception):  # the next tick tries that pod again
                    self._error(f"pod status: {failed!r}")
            if self.on_pod_change is not None:
                self.on_pod_change()

    async def _sync_one(self, tracked: Tracked) -> None:
        node = self.nodes[tracked.node]
        if tracked.pod is None:
            status: dict[str, Any] = {
                "phase": "Pending",
                "containerStatuses": [
                    {
                        "name": tracked.container,
                        "image": tracked.image,
                        "imageID": "",
                        "ready": False,
                        "started": False,
                        "restartCount": 0,
                        "state": {
                            "waiting": {
                                "reason": "CreateContainerConfigError",
                                "message": tracked.problem[:1000],
                            }
                        },
                    }
                ],
            }
        else:
            status = pod_status(
                tracked.pod,
                tracked.seen,
                tracked.container,
                tracked.image,
                self._api_ip(tracked),
                node.address,
                tracked.uid,
                time.time(),
            )
        if status != tracked.sent:
            await self._patch_status(tracked, status)
        if (
            tracked.deleting
            and (tracked.pod is None or tracked.pod.gone)
            and tracked.sent == status
        ):
            await self._final_delete(tracked)

    async def _patch_status(self, tracked: Tracked, status: dict[str, Any]) -> None:
        body = {"metadata": {"uid": tracked.uid}, "status": _with_nulls(status)}
        try:
            await call(
                self.core.patch_namespaced_pod_status,
                tracked.name,
                tracked.namespace,
                body,
                _content_type="application/strategic-merge-patch+json",
            )
            tracked.sent = status
        except Exception as exc:
            if status_of(exc) in (404, 409):
                tracked.finished = True  # gone from the API, or another pod of that name
            else:
                self._error(f"status of {tracked.namespace}/{tracked.name}: {exc}")

    async def _final_delete(self, tracked: Tracked) -> None:
        """The status manager's last step once the containers are gone: delete with grace
        0 and a UID precondition, so a new pod of the same name is never deleted
        (pkg/kubelet/status/status_manager.go, syncPod)."""
        options = client.V1DeleteOptions(
            grace_period_seconds=0, preconditions=client.V1Preconditions(uid=tracked.uid)
        )
        try:
            await call(
                self.core.delete_namespaced_pod, tracked.name, tracked.namespace, body=options
            )
        except Exception as exc:
            if status_of(exc) not in (404, 409):
                self._error(f"delete {tracked.namespace}/{tracked.name}: {exc}")
                return
        tracked.finished = True
        self.events.add(
            self.lab_name(tracked.namespace, tracked.name),
            "pod-deleted",
            "final delete with grace 0",
        )

    # -- the lab's InfluxDB stands in for the cluster's --------------------------------

    async def ensure_influx(self, database: str = "calc") -> None:
        """Start the lab's InfluxDB (once) with `database` in it."""
        async with self._influx_lock:
            if self.influx is not None:
                await asyncio.to_thread(self.influx.create_database, database)
                return
            # Started from a worker thread, which lives as long as the event loop's
            # executor: the kernel kills influxd when the lab dies, not before.
            influx = InfluxServer(
                host=self.influx_host,
                data_dir=self.config.out / "influxdb",
                log_path=self.config.out / "influxd.log",
                die_with_parent=True,
            )
            await asyncio.to_thread(influx.start)
            self.influx = influx
            assert influx.pid is not None
            self.registry.record(influx.pid, "influxd")
            await asyncio.to_thread(influx.create_database, database)
            self.events.add("", "influxdb", f"{influx.url} stands in for influxdb:8086")

    def _rewrite(self, value: str) -> str:
        if self.influx is not None:
            value = INFLUX_SERVICE.sub(f"{self.influx.host}:{self.influx.port}", value)
        return value


def _with_nulls(status: dict[str, Any]) -> dict[str, Any]:
    """A strategic merge patch keeps map keys it is not told to remove: a container
    state that was `running` and is now `terminated` needs `running: null`."""
    out = dict(status)
    containers = []
    for container in status.get("containerStatuses") or []:
        container = dict(container)
        for key in ("state", "lastState"):
            value = dict(container.get(key) or {})
            for kind in ("waiting", "running", "terminated"):
                value.setdefault(kind, None)
            container[key] = value
        containers.append(container)
    if containers:
        out["containerStatuses"] = containers
    return out
