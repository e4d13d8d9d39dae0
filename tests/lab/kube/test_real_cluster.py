"""`lab cluster up --kubelet real`: its node is a real kubelet with its containerd, a
Ready Node at an address of its own; a Deployment of the pause image runs there, with
`kubectl logs` and `kubectl exec`; `lab cluster down`, after a graceful stop or a SIGKILL
of `up`, leaves nothing of it on the machine."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from lab.kube import host_changes, node_bins
from lab.kube.containerd import MASQUERADE_TABLE, mounts_under
from lab.kube.real_kubelet import CGROUP_V1, cgroup_root
from lab.kube.real_nodes import REAL_DIR, RUN_ROOT, node_name
from lab.kube.state import ClusterState
from lab.leftovers import start_time
from tests.lab.kube.kubekit import kubectl, lab_cluster, running
from tests.support import wait_until

# The real kubelet sets machine-wide kernel tunables and iptables chains while it runs, and
# these tests compare the machine before and after: another real node beside them would
# change what they see.
pytestmark = [pytest.mark.alone]

NODE = node_name(0)
POD_TIMEOUT = 90.0
REPLICAS = 2


def _deployment(image: str) -> dict[str, Any]:
    labels = {"app": "real-pause"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "real-pause"},
        "spec": {
            "replicas": REPLICAS,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "pause", "image": image}]},
            },
        },
    }


def _links() -> set[str]:
    """The links a real node makes (its bridge, the nodes' address link); others of
    the machine's come and go with other runs. The pods' veths go with their network
    namespaces, checked apart."""
    return {n for n in os.listdir("/sys/class/net") if n.startswith(("lab-cni", "labkn"))}


def _nft_tables() -> str:
    return subprocess.run(
        ["nft", "list", "tables"], capture_output=True, text=True, timeout=10, check=False
    ).stdout


def _machine() -> dict[str, Any]:
    """What the cluster must leave as it found it."""
    return {
        "host": host_changes.state(),
        "links": _links(),
        "run_dirs": sorted(p.name for p in RUN_ROOT.glob("labkn*")),  # the nodes' sockets
        "mounts": [m for m in mounts_under(Path("/")) if m.startswith(str(RUN_ROOT / "labkn"))],
    }


def _net_namespaces_in_use() -> set[str]:
    found = set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                found.add(os.readlink(f"/proc/{entry.name}/ns/net"))
            except OSError:
                continue
    return found


def _run_the_deployment(state: ClusterState, cache: Path) -> dict[str, Any]:
    """Node Ready at its own address; the Deployment Running and Ready; logs and exec."""

    def k(*args: str, stdin: str | None = None) -> str:
        result = kubectl(state, cache, *args, stdin=stdin)
        assert result.returncode == 0, (args, result.stderr)
        return result.stdout

    seen: dict[str, Any] = {"node": json.loads(k("get", "node", NODE, "-o", "json"))}
    image = node_bins.find().pause_image
    applied = time.monotonic()
    k("apply", "-f", "-", stdin=json.dumps(_deployment(image)))

    def ready_pods() -> list[dict[str, Any]] | None:
        pods = json.loads(k("get", "pods", "-l", "app=real-pause", "-o", "json"))["items"]
        ready = [
            p
            for p in pods
            if p["status"].get("phase") == "Running"
            and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p["status"].get("conditions", [])
            )
        ]
        return ready if len(ready) == REPLICAS else None

    seen["pods"] = wait_until(ready_pods, POD_TIMEOUT, 0.2, "the Deployment's pods Ready")
    seen["all_ready_after"] = time.monotonic() - applied
    name = seen["pods"][0]["metadata"]["name"]
    logs = kubectl(state, cache, "logs", name)
    seen["logs"] = (logs.returncode, logs.stderr)
    seen["exec"] = k("exec", name, "--", "/pause", "-v")
    # The containers' processes, from the node's cgroups, and their network namespaces.
    procs = CGROUP_V1 / "memory" / cgroup_root(NODE).lstrip("/")
    pids = {int(p) for f in procs.rglob("cgroup.procs") for p in f.read_text().split()}
    seen["pids"] = {pid: start_time(pid) for pid in pids}
    seen["netns"] = {os.readlink(f"/proc/{pid}/ns/net") for pid in pids}
    return seen


def _reach_a_cluster_ip(state: ClusterState, cache: Path, node_ip: str) -> dict[str, Any]:
    """A Service whose EndpointSlice names a listener of this test's at the node's
    address: a connection to the ClusterIP from the host reaches it, through
    kube-proxy's nftables rules. The seconds from the apply to the first answer are the
    real propagation lag (the EndpointSlice, kube-proxy's watch and sync)."""
    with socket.socket() as listener:
        listener.bind((node_ip, 0))
        listener.listen()
        listener.settimeout(5)
        port = listener.getsockname()[1]
        service = {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "host-listener"},
            "spec": {"ports": [{"port": 80, "targetPort": port, "protocol": "TCP"}]},
        }
        endpoints = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "host-listener-1",
                "labels": {"kubernetes.io/service-name": "host-listener"},
            },
            "addressType": "IPv4",
            "ports": [{"port": port, "protocol": "TCP", "name": ""}],
            "endpoints": [{"addresses": [node_ip], "conditions": {"ready": True}}],
        }
        applied = time.monotonic()
        for thing in (service, endpoints):
            result = kubectl(state, cache, "apply", "-f", "-", stdin=json.dumps(thing))
            assert result.returncode == 0, result.stderr
        got = kubectl(state, cache, "get", "service", "host-listener", "-o", "json")
        cluster_ip = json.loads(got.stdout)["spec"]["clusterIP"]

        def answered() -> bytes | None:
            try:
                with socket.create_connection((cluster_ip, 80), timeout=1) as client:
                    conn, _ = listener.accept()
                    with conn:
                        conn.sendall(b"through kube-proxy\n")
                    return client.recv(100)
            except OSError:
                return None

        answer = wait_until(answered, POD_TIMEOUT, 0.05, f"{cluster_ip}:80 to answer")
        tables = _nft_tables()
    return {
        "answer": answer,
        "lag": time.monotonic() - applied,
        "tables": tables,
        "cluster_ip": cluster_ip,
    }


def _assert_ran(seen: dict[str, Any]) -> None:
    node = seen["node"]
    internal = [a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"]
    assert len(internal) == 1 and not ipaddress.ip_address(internal[0]).is_loopback, internal
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://2.")
    assert all(p["spec"]["nodeName"] == NODE for p in seen["pods"])
    assert seen["logs"] == (0, "")  # the pause image writes nothing; the call succeeds
    assert seen["exec"].startswith("pause.c"), seen["exec"]
    assert len(seen["pids"]) == 2 * REPLICAS  # a sandbox and a container per pod
    assert len(seen["netns"]) == REPLICAS
    assert os.readlink("/proc/self/ns/net") not in seen["netns"]


def _assert_nothing_left(state_dir: Path, before: dict[str, Any], seen: dict[str, Any]) -> None:
    for pid, started in seen["pids"].items():
        assert start_time(pid) != started, f"container process {pid} survived"
    assert not (seen["netns"] & _net_namespaces_in_use())
    assert not any((h / cgroup_root(NODE).lstrip("/")).exists() for h in CGROUP_V1.iterdir())
    assert f"inet {MASQUERADE_TABLE}" not in _nft_tables()
    assert "table ip kube-proxy" not in _nft_tables()
    assert "table ip6 kube-proxy" not in _nft_tables()
    assert _machine() == before
    assert mounts_under(state_dir) == []
    node_dir = state_dir / "nodes" / REAL_DIR / NODE
    for made in ("containerd/root", "containerd/state"):
        assert not (node_dir / made).exists(), made


def test_cluster_up_kubelet_real_runs_a_deployment_and_a_service_and_down_leaves_nothing(
    tmp_path: Path,
) -> None:
    """`up --kubelet real`; a Deployment of the pause image, logs and exec; a Service's
    ClusterIP reachable from the host through kube-proxy (nftables mode, its tables
    `ip kube-proxy` and `ip6 kube-proxy`); `down`: nothing left."""
    state_dir = tmp_path / "cluster"
    before = _machine()
    with running(state_dir, tmp_path / "logs", "--kubelet", "real") as up:
        began = time.monotonic()
        state = up.wait_ready()
        up_after = time.monotonic() - began
        seen = _run_the_deployment(state, tmp_path / "kc")
        node_ip = next(
            a["address"] for a in seen["node"]["status"]["addresses"] if a["type"] == "InternalIP"
        )
        service = _reach_a_cluster_ip(state, tmp_path / "kc", node_ip)
        # A second real cluster on the machine is refused before it starts anything: the
        # kube-proxy tables and the kubelet's kernel settings are the machine's.
        links = _links()
        second = lab_cluster("up", "--kubelet", "real", "--state-dir", str(tmp_path / "2"))
        assert second.returncode == 2, second.stderr
        assert "another lab cluster with real nodes runs on this machine" in second.stderr
        assert f"(PID {up.process.pid})" in second.stderr, second.stderr
        assert _links() == links
        down = lab_cluster("down", "--state-dir", str(state_dir), timeout=120)
        assert down.returncode == 0, down.stderr
        assert up.wait_exit() == 0, up.stderr()[-3000:]
    print(f"up with 1 Ready real node: {up_after:.1f} s; {REPLICAS} pods Ready "
          f"{seen['all_ready_after']:.1f} s after apply; ClusterIP answered "
          f"{service['lag']:.2f} s after apply")  # fmt: skip
    _assert_ran(seen)
    assert service["answer"] == b"through kube-proxy\n"
    assert "table ip kube-proxy" in service["tables"]
    _assert_nothing_left(state_dir, before, seen)


def test_down_after_a_sigkill_of_up_leaves_nothing_of_the_real_node(tmp_path: Path) -> None:
    """SIGKILL of `lab cluster up`: the kubelet and containerd die with it (the parent
    death signal), the containers, mounts, cgroups, bridge, masquerade rules, link and
    the kubelet's changes to the machine stay, until `lab cluster down` sweeps them."""
    state_dir = tmp_path / "cluster"
    before = _machine()
    with running(state_dir, tmp_path / "logs", "--kubelet", "real") as up:
        state = up.wait_ready()
        seen = _run_the_deployment(state, tmp_path / "kc")
        os.killpg(up.process.pid, signal.SIGKILL)
        up.process.wait(10)
        down = lab_cluster("down", "--state-dir", str(state_dir), timeout=120)
        assert down.returncode == 0, down.stderr
        assert "cleaned up after a dead one" in down.stdout, down.stdout
        assert (
            "set kernel.panic back" in down.stdout
            or before["host"]["sysctls"]["kernel.panic"] == "10"
        ), down.stdout
    _assert_ran(seen)
    _assert_nothing_left(state_dir, before, seen)
