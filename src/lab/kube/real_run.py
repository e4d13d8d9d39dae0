"""`lab run --cluster local --kubelet real`: the experiment on a control plane of its own
whose nodes are real kubelets with their containerd (lab.kube.real_nodes), the pods real
containers of the project's image, the Service's traffic through the real kube-proxy.

What the lab adds around them, as a cloud and a cluster's add-ons would:
- the load balancer: an L4 HAProxy on loopback in front of the Service's NodePort on
  every node's address (kube-proxy forwards it to a Ready endpoint);
- the operation log: the lab's InfluxDB on the first node's address, which the pods
  reach through their bridge's gateway. There is no cluster DNS, so the lab points
  `influxdb:8086` in the env of what it applies in its own namespace at it;
- `imagePullPolicy: IfNotPresent` on containers naming an image it imported, by the
  cluster's MutatingAdmissionPolicy (lab.kube.node_images).
The real kubelet's side is its own: a pod's preStop and SIGTERM times and kube-proxy's
syncs are not observed (the report says so); faults are refused for now.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import urllib.request
from typing import Any

from lab.experiment import FRONT_CHECKS, LabError, OperationLog
from lab.haproxy import HAProxy
from lab.influx import INFLUX_SERVICE, InfluxServer, free_port
from lab.kube import node_images
from lab.kube.controlplane import ClusterConfig, ControlPlane
from lab.kube.experiment import KubeLab
from lab.kube.leftovers import NODES_DIR
from lab.kube.real_nodes import RealNodes, hold_machine

NOT_OBSERVED = (
    "not observed on the real kubelet: a pod's preStop and SIGTERM times (the kubelet's) "
    "and kube-proxy applying an endpoint change; the timeline shows the API's view"
)
HEALTH_TIMEOUT = 2.0


class RealKubeLab(KubeLab):
    """KubeLab with real nodes in place of the lab's kubelet, node proxies and balancers."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.real: RealNodes | None = None
        self.machine: int | None = None  # the machine's real-node lock
        self.influx: InfluxServer | None = None
        self.front: HAProxy | None = None
        self.front_ready = False

    def _where(self) -> str:
        return "on a real control plane with the real kubelet"

    async def _up(self) -> None:
        config = self.config
        self.machine = hold_machine()
        plane = self.plane = ControlPlane(
            ClusterConfig(
                state_dir=self.out / "cluster",
                nodes=config.nodes,
                kubelet="real",
                node_monitor_grace=config.node_monitor_grace,
                unreachable_toleration=int(config.unreachable_toleration),
                seed=config.seed,
            ),
            progress=self._cluster_progress,
        )
        await plane.start()
        plane.mark_ready()
        self.api = plane.client()
        state_dir = self.out / "cluster"
        self.real = RealNodes(
            self.api,
            plane.api_url,
            state_dir / "pki",
            state_dir / NODES_DIR,
            config.nodes,
            self._cluster_progress,
            images=tuple(node_images.references(self.p.images.images)),
        )
        await self.real.start()
        address = self.real.plans[0].address
        if self.p.uses_influx:
            influx = InfluxServer(
                host=address,
                data_dir=self.out / "influxdb",
                log_path=self.out / "influxd.log",
                die_with_parent=True,
            )
            await asyncio.to_thread(influx.start)
            self.influx = influx
            assert influx.pid is not None
            self.registry.record(influx.pid, "influxd")
            await asyncio.to_thread(influx.create_database, self.p.influx_db)
            self.events.add("", "influxdb", f"{influx.url} stands in for influxdb:8086")
        self.front = HAProxy(
            self.out / "haproxy-lb", free_port(), mode="tcp", health_checks=FRONT_CHECKS
        )
        await self.front.start(self.registry)
        self.events.phase("cluster", f"{plane.api_url}, namespace {self.namespace}")

    def _documents(self) -> list[dict[str, Any]]:
        docs = super()._documents()
        out = []
        for doc in docs:
            if doc.get("kind") == "Deployment":
                template = doc["spec"]["template"]
                spec = dict(template["spec"])
                spec["containers"] = [self._rewrite(c) for c in spec.get("containers") or []]
                doc = {**doc, "spec": {**doc["spec"], "template": {**template, "spec": spec}}}
            out.append(doc)
        return out

    def _rewrite(self, container: dict[str, Any]) -> dict[str, Any]:
        if self.influx is None:
            return container
        target = f"{self.influx.host}:{self.influx.port}"
        env = [
            {**e, "value": INFLUX_SERVICE.sub(target, e["value"])} if "value" in e else e
            for e in container.get("env") or []
        ]
        return {**container, "env": env}

    async def _wait_deployed(self) -> str:
        timeout = self.config.ready_timeout
        if not await self._until(self._deployed, timeout):
            raise LabError(
                f"the Deployment {self.deployment} was not rolled out and answering through "
                f"its NodePort within {timeout:g} s; see {self.out}/cluster/nodes/real/"
            )
        assert self.front is not None
        return f"http://{self.front.host}:{self.front.port}"

    def _deployed(self) -> bool:
        if not self._rolled_out(1) or self.front is None or self.real is None:
            return False
        if not self.front_ready:
            from kubernetes import client

            service = self.p.manifests.service
            if service is None:
                raise LabError("--kubelet real: the manifests have no Service to send load to")
            got = client.CoreV1Api(self.api).read_namespaced_service(service.name, self.namespace)
            node_port = got.spec.ports[0].node_port
            if not node_port:
                raise LabError(f"--kubelet real: the Service {service.name} has no NodePort")
            for plan in self.real.plans:
                self.front.add_server(plan.name, plan.address, int(node_port))
            self.front_ready = True
            nodes = len(self.real.plans)
            where = f"{self.front.url} -> NodePort {node_port} on {nodes} node(s)"
            self.events.add("", "load-balancer", where)
        try:
            with urllib.request.urlopen(f"{self.front.url}/health", timeout=HEALTH_TIMEOUT):
                return True
        except OSError:
            return False

    def _operation_log(self) -> OperationLog | None:
        return self.influx

    def _cluster_notes(self) -> tuple[str, ...]:
        return (
            "a real control plane and the real kubelet (--cluster local --kubelet real): "
            "kubelet, containerd, runc, the CNI bridge and kube-proxy (nftables) built from "
            "their modules; the load balancer to the Service's NodePort is the lab's",
            "the lab applied the Deployment with influxdb:8086 pointed at its InfluxDB (no "
            "cluster DNS); imagePullPolicy IfNotPresent on the imported images by the "
            f"cluster's MutatingAdmissionPolicy {node_images.POLICY}",
            f"endpoint lag: kube-proxy's own (not set by the lab); {NOT_OBSERVED}",
        )

    async def cleanup(self) -> None:
        try:
            if self.informer is not None:
                await self.informer.stop()
            if self.front is not None:
                await self.front.stop()
            if self.influx is not None:
                try:
                    await asyncio.to_thread(self.influx.stop)
                except Exception as exc:  # said; the nodes and the control plane go anyway
                    self._cluster_progress(f"stopping InfluxDB failed: {exc!r}")
            if self.real is not None:
                for line in await self.real.stop():
                    self._cluster_progress(line)
        finally:
            try:
                if self.plane is not None:
                    await self.plane.stop()
                if self.api is not None:
                    with contextlib.suppress(Exception):
                        self.api.close()
            finally:
                if self.machine is not None:
                    os.close(self.machine)
                    self.machine = None
