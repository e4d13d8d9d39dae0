"""The lab's kubelet as the nodes of the real control plane (`lab cluster up --nodes 2`):
calc v10's manifest applied with the built kubectl, rolled out, scaled and put through a
node failure by the real Deployment, ReplicaSet, EndpointSlice and node-lifecycle
controllers and the real scheduler.

One cluster for the module, with short node timers (said in `OPTIONS`); the tests run
in file order on one namespace, the node failure last.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from lab.kube import bins
from lab.kube.state import ClusterState
from tests.deploy.deploy_helpers import alive
from tests.lab.kube.kubekit import (
    Recorder,
    Up,
    accepts,
    assert_all_gone,
    kubectl,
    lab_cluster,
    node_events,
    running,
)
from tests.support import REPO, wait_until

NS = "v10"
EDGE = "edge"
REPLICAS, MAX_SURGE = 3, 3  # v10's strategy: maxSurge 3, maxUnavailable 0
GRACE = 20  # --node-monitor-grace-period: a lease renewed every 10 s stays fresh
TOLERATION = 5  # --unreachable-toleration and --not-ready-toleration
OPTIONS = (
    "--nodes",
    "2",
    "--node-monitor-grace-period",
    str(GRACE),
    "--unreachable-toleration",
    str(TOLERATION),
    "--not-ready-toleration",
    str(TOLERATION),
)


def v10_manifest(replicas: int = REPLICAS) -> str:
    """deploy/k8s/v10 as it is, with fewer replicas for a 2-core machine."""
    docs = list(yaml.safe_load_all((REPO / "deploy/k8s/v10/calc.yml").read_text()))
    for doc in docs:
        if doc and doc["kind"] == "Deployment":
            doc["spec"]["replicas"] = replicas
    return yaml.safe_dump_all(docs)


class Cluster:
    def __init__(self, up: Up, state: ClusterState, cache: Path) -> None:
        self.up, self.state, self.cache = up, state, cache

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        result = kubectl(self.state, self.cache, *args, stdin=stdin)
        assert result.returncode == 0, f"kubectl {' '.join(args)}: {result.stderr}"
        return result.stdout

    def get(self, *args: str) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.kubectl("get", *args, "-o", "json"))
        return out

    def pods(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.get("pods", "-n", NS)["items"]
        return items


def events_of(state_dir: Path, pods: set[str]) -> list[dict[str, Any]]:
    """The nodes' events about these pods of the namespace, named as the API names them
    (the lab's events name a pod outside `default` as NAMESPACE_NAME)."""
    out = []
    for event in node_events(state_dir):
        namespace, _, name = event["pod"].partition("_")
        if namespace == NS and name in pods:
            out.append({**event, "pod": name})
    return out


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    bins.find()
    base = tmp_path_factory.mktemp("nodes-cluster")
    with running(base / "state", base / "logs", *OPTIONS) as up:
        state = up.wait_ready()
        c = Cluster(up, state, base / "kubectl-cache")
        c.kubectl("create", "namespace", NS)
        c.kubectl("create", "namespace", EDGE)  # for the single pods of the edge cases
        c.kubectl("apply", "-n", NS, "-f", "-", stdin=v10_manifest())
        c.kubectl("rollout", "status", "-n", NS, "deployment/calc", "--timeout=120s")
        yield c


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _endpoints(slices: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Pod name -> its endpoint in the Service's slices."""
    return {
        e["targetRef"]["name"]: e
        for s in slices
        for e in s.get("endpoints") or []
        if (s["metadata"].get("labels") or {}).get("kubernetes.io/service-name") == "calc"
    }


@pytest.mark.timeout(300)  # cluster and v10 start-ups (20 s probe delay)
def test_v10_runs_ready_on_the_lab_nodes_behind_its_endpointslice(cluster: Cluster) -> None:
    """1. `kubectl apply` deploy/k8s/v10 (3 replicas) and wait for its rollout (fixture).
    2. Every pod is Running and Ready, bound by the real scheduler to a lab node, its IP
       in that node's podCIDR (allocated by the real node IPAM).
    3. The Service's EndpointSlice lists exactly those IPs, each ready and serving.
    4. The LoadBalancer's EXTERNAL-IP answers POST /sum through the nodes' proxies."""
    pods = cluster.pods()
    assert len(pods) == REPLICAS
    cidrs = {
        n["metadata"]["name"]: ipaddress.ip_network(n["spec"]["podCIDR"])
        for n in cluster.get("nodes")["items"]
    }
    assert set(cidrs) == {"lab-node-0", "lab-node-1"}
    for pod in pods:
        status = pod["status"]
        assert status["phase"] == "Running" and _ready(pod), status
        assert ipaddress.ip_address(status["podIP"]) in cidrs[pod["spec"]["nodeName"]]
        assert status["containerStatuses"][0]["state"].keys() == {"running"}
    wanted = {
        p["metadata"]["name"]: (
            [p["status"]["podIP"]],
            {"ready": True, "serving": True, "terminating": False},
        )
        for p in pods
    }

    def listed() -> bool:
        # The EndpointSlice controller follows the pods a moment after kubectl saw them.
        endpoints = _endpoints(cluster.get("endpointslices", "-n", NS)["items"])
        return {n: (e["addresses"], e["conditions"]) for n, e in endpoints.items()} == wanted

    wait_until(listed, 15, interval=0.2, what=f"the EndpointSlice to list {wanted}")
    ip = wait_until(
        lambda: cluster.get("service", "-n", NS, "calc")["status"]["loadBalancer"]["ingress"][0][
            "ip"
        ],
        30,
        what="the Service's EXTERNAL-IP",
    )
    answer = wait_until(
        lambda: httpx.post(f"http://{ip}/sum", json={"numbers": [1, 2, 3, 4]}, timeout=5),
        30,
        what="the load balancer to answer",
    )
    assert answer.json() == {"result": 10}


def _replay(
    history: list[tuple[float, str, dict[str, Any]]],
) -> Iterator[dict[str, dict[str, Any]]]:
    """The namespace's pods after each watch event, by name."""
    pods: dict[str, dict[str, Any]] = {}
    for _, kind, obj in history:
        name = obj["metadata"]["name"]
        if kind == "DELETED":
            pods.pop(name, None)
        else:
            pods[name] = obj
        yield pods


@pytest.mark.timeout(300)  # cluster and v10 start-ups (20 s probe delay)
def test_rollout_restart_by_the_real_deployment_controller(cluster: Cluster) -> None:
    """1. Watch the namespace's Pods and EndpointSlices; `kubectl rollout restart`.
    2. Wait until only new pods are left, all Ready.
    3. From the watched history: never more than replicas + maxSurge pods, never fewer
       than replicas ready and not terminating (maxUnavailable 0).
    4. Each old pod went through preStop, SIGTERM and its exit on the lab's node, and
       while its preStop ran its endpoint was seen serving, terminating, not ready."""
    old = {p["metadata"]["name"] for p in cluster.pods()}
    recorder = Recorder(cluster.state.kubeconfig, NS)
    try:
        wait_until(lambda: len(recorder.of("Pod")) >= REPLICAS, 10, what="the watch's list")
        cluster.kubectl("rollout", "restart", "-n", NS, "deployment/calc")
        cluster.kubectl("rollout", "status", "-n", NS, "deployment/calc", "--timeout=150s")
        wait_until(
            lambda: not old & {p["metadata"]["name"] for p in cluster.pods()},
            60,
            what="the old pods to be deleted",
        )
    finally:
        recorder.stop()
    pods_history = recorder.of("Pod")
    for pods in _replay(pods_history):
        if old - set(pods) and not set(pods) - old:
            continue  # the watch's first list, still arriving one pod at a time
        assert len(pods) <= REPLICAS + MAX_SURGE, sorted(pods)
        available = [
            p for p in pods.values() if _ready(p) and not p["metadata"].get("deletionTimestamp")
        ]
        assert len(available) >= REPLICAS, sorted(pods)
    events = events_of(cluster.up.state_dir, old)
    slices = recorder.of("EndpointSlice")
    for name in old:
        kinds = [e["kind"] for e in events if e["pod"] == name]
        order = [
            k for k in kinds if k in ("prestop-started", "prestop-finished", "sigterm", "gone")
        ]
        assert order == ["prestop-started", "prestop-finished", "sigterm", "gone"], kinds
        began = next(
            e["wall"] for e in events if e["pod"] == name and e["kind"] == "prestop-started"
        )
        ended = next(
            e["wall"] for e in events if e["pod"] == name and e["kind"] == "prestop-finished"
        )
        # The slice in effect when the preStop began (the EndpointSlice controller may
        # mark the endpoint terminating before the node starts the hook), and every
        # change the watch saw while it ran.
        before = [obj for t, _, obj in slices if t < began and name in _endpoints([obj])]
        during = [obj for t, _, obj in slices if began <= t <= ended]
        seen = [
            _endpoints([obj]).get(name, {}).get("conditions") for obj in [*before[-1:], *during]
        ]
        assert {"ready": False, "serving": True, "terminating": True} in seen, (name, seen)


def test_scale_down_victims_are_the_replicaset_controllers(cluster: Cluster) -> None:
    """1. Watch the namespace; `kubectl scale --replicas 2`.
    2. The pod the real ReplicaSet controller marked for deletion (deletionTimestamp) is
       the only one the lab's node terminated: preStop (5 s sleep), then SIGTERM, then
       its exit, within the 30 s grace period; then the final delete removed it."""
    before = {p["metadata"]["name"] for p in cluster.pods()}
    recorder = Recorder(cluster.state.kubeconfig, NS)
    try:
        wait_until(lambda: len(recorder.of("Pod")) >= len(before), 10, what="the watch's list")
        cluster.kubectl("scale", "-n", NS, "deployment/calc", "--replicas", "2")
        wait_until(lambda: len(cluster.pods()) == 2, 60, what="2 pods left")
    finally:
        recorder.stop()
    marked = {
        obj["metadata"]["name"]
        for _, _, obj in recorder.of("Pod")
        if obj["metadata"].get("deletionTimestamp")
    }
    assert len(marked) == 1 and marked <= before
    (victim,) = marked
    assert victim not in {p["metadata"]["name"] for p in cluster.pods()}
    events = events_of(cluster.up.state_dir, before)
    terminated = {e["pod"] for e in events if e["kind"] == "sigterm"}
    assert terminated == {victim}
    times = {e["kind"]: e["wall"] for e in events if e["pod"] == victim}
    assert times["sigterm"] - times["prestop-started"] >= 5.0
    assert times["gone"] - times["deleted"] < 30.0
    assert times["pod-deleted"] >= times["gone"]


def _bare_pod(name: str, image: str = "calc:latest", **spec: Any) -> dict[str, Any]:
    container = {"name": "app", "image": image, **spec.pop("container", {})}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": EDGE},
        "spec": {"containers": [container], "terminationGracePeriodSeconds": 5, **spec},
    }


def _waiting(cluster: Cluster, name: str) -> dict[str, Any] | None:
    pod = cluster.get("pod", "-n", EDGE, name)
    statuses = pod["status"].get("containerStatuses") or []
    found: dict[str, Any] | None = statuses[0]["state"].get("waiting") if statuses else None
    return found if found and found.get("reason") == "CreateContainerConfigError" else None


def _pid_of(cluster: Cluster, name: str) -> int:
    lines = (cluster.up.state_dir / "nodes" / "pids.txt").read_text().splitlines()
    return [int(line.split()[0]) for line in lines if line.endswith(f" pod {EDGE}_{name}")][-1]


def test_pods_the_lab_cannot_run_are_reported_never_run(cluster: Cluster) -> None:
    """1. Bind three pods the lab cannot run: an image not in the image map, an init
       container, an env value from a ConfigMap that does not exist.
    2. Each stays Pending with its container waiting in CreateContainerConfigError, the
       message naming the cause (as the kubelet reports a pod it cannot start), and no
       process of theirs runs."""
    pods = [
        _bare_pod("unmapped", image="nginx:1.27"),
        _bare_pod("init", initContainers=[{"name": "setup", "image": "calc:latest"}]),
        _bare_pod(
            "missing-config",
            container={
                "env": [
                    {
                        "name": "CALC_PROFILE",
                        "valueFrom": {"configMapKeyRef": {"name": "absent", "key": "profile"}},
                    }
                ]
            },
        ),
    ]
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(pods))
    expected = {
        "unmapped": "'nginx:1.27' is not in the image map",
        "init": "init containers",
        "missing-config": "ConfigMap 'absent' is not in namespace 'edge'",
    }
    for name, cause in expected.items():
        waiting = wait_until(functools.partial(_waiting, cluster, name), 30, what=name)
        assert cause in waiting["message"], waiting
        assert cluster.get("pod", "-n", EDGE, name)["status"]["phase"] == "Pending"
    lines = (cluster.up.state_dir / "nodes" / "pids.txt").read_text()
    assert not any(f" pod {EDGE}_{name}" in lines for name in expected)


def test_env_from_the_apis_configmap_and_secret_and_a_forced_delete(cluster: Cluster) -> None:
    """1. Create a ConfigMap and a Secret through the API; bind a calc pod whose env
       takes one value from each.
    2. The pod runs Ready with both values in its process's environment.
    3. `kubectl delete --grace-period=0 --force`: the pod is gone from the API at once,
       and the lab's node still kills its process (within the kubelet's 2 s minimum)."""
    cluster.kubectl("create", "configmap", "-n", EDGE, "settings", "--from-literal=profile=v9")
    cluster.kubectl(
        "create", "secret", "generic", "-n", EDGE, "creds", "--from-literal=token=s3cr3t"
    )
    pod = _bare_pod(
        "configured",
        container={
            "env": [
                {
                    "name": "CALC_PROFILE",
                    "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "profile"}},
                },
                {
                    "name": "API_TOKEN",
                    "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}},
                },
            ]
        },
    )
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(pod))
    wait_until(lambda: _ready(cluster.get("pod", "-n", EDGE, "configured")), 60, what="Ready")
    pid = _pid_of(cluster, "configured")
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert b"CALC_PROFILE=v9" in environ and b"API_TOKEN=s3cr3t" in environ
    cluster.kubectl("delete", "pod", "-n", EDGE, "configured", "--grace-period=0", "--force")
    wait_until(lambda: not alive(pid), 15, what="the force-deleted pod's process to die")


def test_a_crashing_container_is_reported_with_its_exit_code(cluster: Cluster) -> None:
    """1. Bind a calc pod whose CALC_PROFILE does not exist: calc exits 2 at start.
    2. The lab's node restarts it (at once, then with back-off) and reports it as the
       kubelet does: restartCount counts the restarts and lastState.terminated holds
       the crashed container's own exit code 2 (reason Error), never 0."""
    pod = _bare_pod("crashing", container={"env": [{"name": "CALC_PROFILE", "value": "bogus"}]})
    cluster.kubectl("apply", "-f", "-", stdin=yaml.safe_dump(pod))

    def crashed() -> dict[str, Any] | None:
        found = cluster.get("pod", "-n", EDGE, "crashing")
        statuses = found["status"].get("containerStatuses") or []
        status: dict[str, Any] | None = statuses[0] if statuses else None
        return status if status and status["restartCount"] >= 2 else None

    status = wait_until(crashed, 60, interval=0.5, what="two restarts of the crashing pod")
    assert status["lastState"]["terminated"]["exitCode"] == 2, status
    assert status["lastState"]["terminated"]["reason"] == "Error"
    assert status["ready"] is False
    cluster.kubectl("delete", "pod", "-n", EDGE, "crashing", "--wait=false")


def _node_condition(cluster: Cluster, node: str) -> str:
    found = cluster.get("node", node)
    return str(next(c["status"] for c in found["status"]["conditions"] if c["type"] == "Ready"))


@pytest.mark.timeout(300)  # cluster and v10 start-ups (20 s probe delay)
def test_node_failure_by_the_real_node_lifecycle_controller(cluster: Cluster) -> None:
    """1. Fail a node that runs a calc pod (`kubectl annotate node ...
       lab.graceful-calc/fault=node-failure`): its lease stops, its pods die.
    2. Its Ready condition becomes Unknown after the node-monitor grace period (20 s
       here; the lease was renewed up to 10 s before the failure).
    3. Its pods' endpoints become not ready (the controller marks the pods not ready).
    4. After the 5 s toleration the taint manager evicts them (deletionTimestamp), and
       the Deployment is whole again on the other node."""
    pods = cluster.pods()
    node = pods[0]["spec"]["nodeName"]
    on_node = {p["metadata"]["name"] for p in pods if p["spec"]["nodeName"] == node}
    began = time.monotonic()
    cluster.kubectl("annotate", "node", node, "lab.graceful-calc/fault=node-failure")
    wait_until(lambda: _node_condition(cluster, node) == "Unknown", GRACE + 30, interval=0.5)
    took = time.monotonic() - began
    assert GRACE - 10 - 1 <= took <= GRACE + 15, took

    def not_ready() -> bool:
        endpoints = _endpoints(cluster.get("endpointslices", "-n", NS)["items"])
        return all(endpoints[n]["conditions"]["ready"] is False for n in on_node if n in endpoints)

    wait_until(not_ready, 30, interval=0.5, what="the failed node's endpoints not ready")

    def evicted() -> bool:
        found = {p["metadata"]["name"]: p for p in cluster.pods()}
        return all(found[n]["metadata"].get("deletionTimestamp") for n in on_node if n in found)

    wait_until(evicted, TOLERATION + 30, interval=0.5, what="the taint manager's eviction")
    cluster.kubectl("rollout", "status", "-n", NS, "deployment/calc", "--timeout=120s")
    healthy = [
        p for p in cluster.pods() if not p["metadata"].get("deletionTimestamp") and _ready(p)
    ]
    assert len(healthy) == 2 and {p["spec"]["nodeName"] for p in healthy} == {
        "lab-node-0",
        "lab-node-1",
    } - {node}


def _nft_tables() -> str:
    return subprocess.run(
        ["nft", "list", "tables"], capture_output=True, text=True, timeout=10, check=True
    ).stdout


def _pod_pids(state_dir: Path) -> list[int]:
    """The long-lived processes of the nodes: pods, proxies, InfluxDB."""
    path = state_dir / "nodes" / "pids.txt"
    lines = path.read_text().splitlines() if path.exists() else []  # none started yet
    names = [line.split(" ", 1) for line in lines]
    return [int(pid) for pid, name in names if name.split()[0] in ("pod", "haproxy", "influxd")]


# Alone: it expects its own `up` to sweep the killed one's table, which any other lab
# starting meanwhile would sweep first (tests/conftest.py).
@pytest.mark.alone
@pytest.mark.timeout(300)  # cluster and v10 start-ups (20 s probe delay)
def test_down_and_sigkill_leave_no_pod_behind(tmp_path: Path) -> None:
    """1. `lab cluster up`; apply v10 with one replica; delete its pod (a gone pod's
       address drops packets: the nodes' nftables table is made) and wait for the new.
    2. SIGKILL `lab cluster up`: the pods, the proxies and the components die with it
       (checked by PID and port); the nftables table outlives it, and the next `up` on
       the state dir removes it and says so.
    3. `lab cluster down` then leaves no component, pod or proxy process and no port."""
    bins.find()
    with running(tmp_path / "state", tmp_path / "logs") as first:
        state = first.wait_ready()
        c = Cluster(first, state, tmp_path / "cache")
        c.kubectl("apply", "-f", "-", stdin=v10_manifest(1))
        c.kubectl("rollout", "status", "deployment/calc", "--timeout=120s")
        c.kubectl("delete", "pod", "-l", "app=calc", "--wait=false")
        c.kubectl("rollout", "status", "deployment/calc", "--timeout=120s")
        record = json.loads((first.state_dir / "nodes" / "resources.json").read_text())
        table = record["nft_table"]
        wait_until(lambda: table in _nft_tables(), 60, what=f"nftables table {table}")
        pids = [p for p in _pod_pids(first.state_dir) if alive(p)]  # the new pod's, ...
        assert len(pids) >= 4  # the pod, the node's proxy, the balancer, InfluxDB
        first.process.send_signal(signal.SIGKILL)
        first.wait_exit()
        assert_all_gone(state)
        wait_until(lambda: not any(alive(p) for p in pids), 15, what=f"{pids} gone")
        assert table in _nft_tables()
        # Any lab's start sweeps a dead owner's table (lab.leftovers): another run on
        # this machine may take it first; then there is nothing left for the next up.
        left = table in _nft_tables()
    with running(tmp_path / "state", tmp_path / "logs") as second:
        again = second.wait_ready()
        assert not left or f"removed leftover nftables table {table}" in second.stderr()
        assert table not in _nft_tables()
        c = Cluster(second, again, tmp_path / "cache")
        c.kubectl("apply", "-f", "-", stdin=v10_manifest(1))
        c.kubectl("rollout", "status", "deployment/calc", "--timeout=120s")
        ip = wait_until(
            lambda: c.get("service", "calc")["status"]["loadBalancer"]["ingress"][0]["ip"], 30
        )
        pids = _pod_pids(second.state_dir)
        down = lab_cluster("down", "--state-dir", str(tmp_path / "state"))
        assert down.returncode == 0, down.stdout + down.stderr
        assert_all_gone(again)
        wait_until(lambda: not any(alive(p) for p in pids), 15, what=f"{pids} gone")
        assert not accepts(80, ip)


# Alone: it expects its own `up` to sweep what the killed one left, which any other lab
# starting meanwhile would sweep first (tests/conftest.py).
@pytest.mark.alone
@pytest.mark.timeout(300)
def test_pods_as_containers_on_the_cluster_nodes(tmp_path: Path) -> None:
    """1. `lab cluster up --runtime docker`; apply calc v10 (one replica, the image
       `make image` built).
    2. The pod runs Ready as a container: its status and its EndpointSlice name the
       container's own address on the cluster's Docker network, and the balancer
       answers POST /sum through it.
    3. SIGKILL `lab cluster up`: the containers and the network outlive it (they are
       the engine's, not its children); the next `up` on the state dir removes them and
       says so.
    4. `lab cluster down` removes what that one made."""
    import docker

    from lab.docker_runtime import LABEL

    bins.find()
    engine = docker.from_env()
    with running(tmp_path / "state", tmp_path / "logs", "--runtime", "docker") as up:
        state = up.wait_ready()
        c = Cluster(up, state, tmp_path / "cache")
        c.kubectl("apply", "-f", "-", stdin=v10_manifest(1))
        c.kubectl("rollout", "status", "deployment/calc", "--timeout=120s")
        (pod,) = c.get("pods")["items"]
        # This cluster's containers only: other labs' may run beside it (make pytest runs
        # tests side by side), each labelled with its own run.
        (run,) = {
            container.labels[LABEL]
            for container in engine.containers.list(filters={"label": LABEL})
            for n in container.attrs["NetworkSettings"]["Networks"].values()
            if n["IPAddress"] == pod["status"]["podIP"]
        }
        mine: dict[str, str | list[str] | bool] = {"label": f"{LABEL}={run}"}
        wait_until(
            lambda: (
                [e["addresses"] for e in _endpoints(c.get("endpointslices")["items"]).values()]
                == [[pod["status"]["podIP"]]]
            ),
            15,
            what="the EndpointSlice to name the container's address",
        )
        ip = wait_until(
            lambda: c.get("service", "calc")["status"]["loadBalancer"]["ingress"][0]["ip"], 30
        )
        answer = wait_until(
            lambda: httpx.post(f"http://{ip}/sum", json={"numbers": [1, 2]}, timeout=5), 30
        )
        assert answer.json() == {"result": 3}
        up.process.send_signal(signal.SIGKILL)
        up.wait_exit()
        assert_all_gone(state)
        left = engine.containers.list(all=True, filters=mine)
        assert left
    with running(tmp_path / "state", tmp_path / "logs", "--runtime", "docker") as again:
        state = again.wait_ready()
        swept = again.stderr()
        for container in left:
            assert f"removed leftover container {container.name}" in swept
        assert "removed leftover network lab-" in swept
        assert not engine.containers.list(all=True, filters=mine)
        down = lab_cluster("down", "--state-dir", str(tmp_path / "state"))
        assert down.returncode == 0, down.stdout + down.stderr
        assert_all_gone(state)
        assert not engine.containers.list(all=True, filters=mine)
        assert not [n for n in engine.networks.list(filters=mine)]


@pytest.mark.timeout(300)
def test_a_signal_while_the_nodes_start_stops_everything(tmp_path: Path) -> None:
    """1. `lab cluster up --nodes 2`; SIGINT the moment the first node is registered
       (the control plane is up, the nodes are starting, the cluster is not ready).
    2. It exits 130 (a signal before ready), every component and node process is gone,
       and the nodes' record of what they made is removed."""
    bins.find()
    with running(tmp_path / "state", tmp_path / "logs", "--nodes", "2") as up:
        wait_until(lambda: "node-registered" in up.stderr(), 90, what="a node registered")
        state = ClusterState.load(up.state_dir)
        assert state is not None
        up.process.send_signal(signal.SIGINT)
        assert up.wait_exit() == 130, up.stderr()[-3000:]
        assert "cluster ready" not in up.stdout()
        assert_all_gone(state)
        assert not [p for p in _pod_pids(up.state_dir) if alive(p)]
        assert not (up.state_dir / "nodes" / "resources.json").exists()


@pytest.mark.timeout(300)
def test_a_stalled_api_server_does_not_hold_the_stop(tmp_path: Path) -> None:
    """1. `lab cluster up` with calc v10 running (one replica).
    2. SIGSTOP the API server: every request the nodes make stalls (lease, status).
    3. SIGINT `lab cluster up`: it still stops within 60 s (each request has its own
       deadline, the stopped API server is killed after its stop timeout) and leaves
       no component, pod or proxy behind."""
    bins.find()
    with running(tmp_path / "state", tmp_path / "logs") as up:
        state = up.wait_ready()
        c = Cluster(up, state, tmp_path / "cache")
        c.kubectl("apply", "-f", "-", stdin=v10_manifest(1))
        c.kubectl("rollout", "status", "deployment/calc", "--timeout=120s")
        pids = [p for p in _pod_pids(up.state_dir) if alive(p)]
        api = next(r for r in state.components if r.name == "kube-apiserver")
        os.kill(api.pid, signal.SIGSTOP)
        try:
            began = time.monotonic()
            up.process.send_signal(signal.SIGINT)
            up.wait_exit(timeout=60)
            took = time.monotonic() - began
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(api.pid, signal.SIGCONT)
        assert took < 60, took
        assert_all_gone(state)
        wait_until(lambda: not any(alive(p) for p in pids), 15, what=f"{pids} gone")
