"""The real kubelet on the lab's control plane: registered as a node, running a pod in
a real container (containerd, runc, the CNI bridge) and leaving nothing behind.

The first piece of `lab cluster up --kubelet real`: the kubelet and containerd are
started here by lab.kube.real_kubelet and lab.kube.containerd, beside a `lab cluster up`
with one lab node."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import leftovers
from lab.kube import host_changes, node_bins
from lab.kube.containerd import (
    BRIDGE,
    MASQUERADE_TABLE,
    Containerd,
    mounts_under,
    processes_in_mount_namespace,
)
from lab.kube.controlplane import free_ports
from lab.kube.real_kubelet import CGROUP_V1, KubeletPorts, RealKubelet, cgroup_root, sweep_node
from tests.lab.kube.kubekit import kubectl, running
from tests.support import REPO, wait_until

# The real kubelet sets machine-wide kernel tunables and iptables chains while it runs, and
# these tests compare the machine before and after: another real node beside them would
# change what they see.
pytestmark = [pytest.mark.alone]

NODE = "lab-real-0"
POD_TIMEOUT = 90.0

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "real-pause"},
    "spec": {
        "nodeName": NODE,
        "containers": [{"name": "pause", "imagePullPolicy": "Never"}],
    },
}


@pytest.fixture
def sockets() -> Iterator[Path]:
    """A short directory for the node's unix sockets and the kubelet's root directory:
    a unix socket's path has at most 108 bytes, and a tmp_path under pytest-xdist can
    be too long for containerd's (`containerd.sock.ttrpc`)."""
    path = Path(tempfile.mkdtemp(prefix="labkt-", dir="/tmp"))
    try:
        yield path
    finally:
        for point in mounts_under(path):
            subprocess.run(["umount", "--lazy", point], check=False, timeout=30)
        shutil.rmtree(path, ignore_errors=True)


def _poll(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """wait_until for a coroutine's world: blocking, in a thread of its own."""
    return asyncio.to_thread(wait_until, check, timeout, 0.5, what)


def test_real_kubelet_runs_a_pod_in_a_container_and_leaves_nothing(
    tmp_path: Path, sockets: Path
) -> None:
    """1. `lab cluster up --nodes 1`; start containerd (the CNI network a template for
       the node's podCIDR) and the real kubelet as node lab-real-0.
    2. The Node registers and turns Ready with containerd://2.x as its runtime and a
       podCIDR from the real node IPAM.
    3. A pod of the pause image bound to it runs: Running, its IP in the node's
       podCIDR, its process in PID and network namespaces of its own.
    4. Delete the pod, stop the kubelet and containerd, remove the bridge and the
       kubelet's cgroup root: no process in containerd's namespace, no mount under the
       node's directory, no bridge, no cgroup; and the machine as before: the kernel
       tunables the kubelet set (kernel.panic 10, ...), its iptables chains and paths
       put back (lab.kube.host_changes)."""
    found = node_bins.find()
    host_before = host_changes.state()
    node_dir = tmp_path / "node"
    with running(tmp_path / "cluster", tmp_path / "logs", "--nodes", "1") as up:
        state = up.wait_ready()
        cache = tmp_path / "kubectl-cache"

        def k(*args: str, stdin: str | None = None) -> str:
            result = kubectl(state, cache, *args, stdin=stdin)
            assert result.returncode == 0, result.stderr
            return result.stdout

        def get(*args: str) -> dict[str, Any]:
            result = kubectl(state, cache, "get", *args, "-o", "json")
            return json.loads(result.stdout) if result.returncode == 0 else {}

        containerd = Containerd(node_dir / "containerd", found, subnet=None, socket_dir=sockets)
        secure, read_only, healthz = free_ports(3, set())
        kubelet = RealKubelet(
            NODE,
            node_dir / "kubelet",
            found,
            containerd.socket,
            state.api_url,
            tmp_path / "cluster" / "pki",
            KubeletPorts(secure, read_only, healthz),
            root_dir=sockets / "kubelet",
        )

        async def scenario() -> dict[str, Any]:
            seen: dict[str, Any] = {}
            try:
                await containerd.start()
                await containerd.import_image(found.pause_tarball, found.pause_image)
                await kubelet.start()

                def ready() -> dict[str, Any] | None:
                    node = get("node", NODE)
                    conditions = node.get("status", {}).get("conditions", [])
                    up_ = any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)
                    return node if up_ else None

                seen["node"] = await _poll(ready, POD_TIMEOUT, f"{NODE} Ready")
                seen["host_during"] = host_changes.state()
                pod = {**POD}
                pod["spec"]["containers"][0]["image"] = found.pause_image  # type: ignore[index]
                k("apply", "-f", "-", stdin=json.dumps(pod))

                def running_pod() -> dict[str, Any] | None:
                    got = get("pod", "real-pause")
                    return got if got.get("status", {}).get("phase") == "Running" else None

                seen["pod"] = await _poll(running_pod, POD_TIMEOUT, "the pod Running")
                tasks = await containerd.ctr("tasks", "ls")
                seen["pids"] = [
                    int(row.split()[1])
                    for row in tasks.splitlines()[1:]
                    if row.split() and row.split()[-1] == "RUNNING"
                ]
                seen["pid_namespaces"] = {
                    os.readlink(f"/proc/{pid}/ns/pid") for pid in seen["pids"]
                }
                seen["net_namespaces"] = {
                    os.readlink(f"/proc/{pid}/ns/net") for pid in seen["pids"]
                }
                k("delete", "pod", "real-pause", "--wait=true", "--timeout=60s")
            finally:
                seen["kubelet_stop"] = await kubelet.stop()
                seen["containerd_stop"] = await containerd.stop()
                seen["network"] = await containerd.remove_network()
                seen["cgroups_left"] = kubelet.remove_cgroups()
                seen["host_restored"] = kubelet.restore_host()
            return seen

        seen = asyncio.run(scenario())

    node = seen["node"]
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://2.")
    assert node["status"]["nodeInfo"]["kubeletVersion"] == found.versions["kubernetes"]
    cidr = node["spec"]["podCIDR"]
    prefix = cidr.rsplit(".", 2)[0] + "."  # a /24 of 10.244.0.0/16
    assert seen["pod"]["status"]["podIP"].startswith(prefix), (seen["pod"]["status"], cidr)
    # The sandbox and the container: each a process of its own, in the pod's namespaces,
    # none of them the machine's.
    assert len(seen["pids"]) == 2
    assert os.readlink("/proc/self/ns/pid") not in seen["pid_namespaces"]
    assert len(seen["net_namespaces"]) == 1
    assert os.readlink("/proc/self/ns/net") not in seen["net_namespaces"]
    assert seen["kubelet_stop"] == [] and seen["containerd_stop"] == []
    assert seen["network"][0] == f"removed the bridge {BRIDGE}"
    # The bridge plugin's masquerade table is the machine's, but has no other user here:
    # gone, by the plugin's last teardown or by remove_network.
    tables = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, timeout=10)
    assert f"inet {MASQUERADE_TABLE}" not in tables.stdout
    assert seen["cgroups_left"] == []
    assert not Path(f"/sys/class/net/{BRIDGE}").exists()
    assert mounts_under(node_dir) == [] and mounts_under(sockets) == []
    assert containerd.mount_namespace is not None
    assert processes_in_mount_namespace(containerd.mount_namespace) == []
    assert not any((h / cgroup_root(NODE).lstrip("/")).exists() for h in CGROUP_V1.iterdir())
    for pid in seen["pids"]:
        assert leftovers.start_time(pid) is None
    _assert_kubelet_changed_then_restored(host_before, seen["host_during"], seen["host_restored"])


def _assert_kubelet_changed_then_restored(
    before: dict[str, Any], during: dict[str, Any], restored: list[str]
) -> None:
    """While it ran, the kubelet's values and chains (so the test saw it change the
    machine, where the machine's values were not the kubelet's already); after, the
    machine exactly as before."""
    assert during["sysctls"]["kernel.panic"] == "10", during
    assert during["sysctls"]["vm.overcommit_memory"] == "1", during
    assert ["iptables", "filter", "KUBE-FIREWALL"] in during["chains"], during
    assert host_changes.state() == before, restored
    if before["sysctls"]["kernel.panic"] != "10":
        assert any(line.startswith("set kernel.panic back") for line in restored), restored


def test_a_sweep_after_a_sigkill_of_the_owner_puts_the_machine_back(
    tmp_path: Path, sockets: Path
) -> None:
    """A process starts containerd and the real kubelet (tests/lab/kube/real_node_owner.py)
    and is SIGKILLed once the node is Ready, after the kubelet changed the machine: the
    kubelet and containerd die with it (the parent death signal), and the sweep of the
    node's directory (sweep_node) puts back the kernel tunables, chains and paths that
    the record in the node's directory names."""
    node = "lab-real-sweep"
    node_dir = tmp_path / "node"
    host_before = host_changes.state()
    with running(tmp_path / "cluster", tmp_path / "logs", "--nodes", "1") as up:
        state = up.wait_ready()
        out = tmp_path / "owner.out"
        with out.open("wb") as sink:
            owner = subprocess.Popen(
                [sys.executable, "-m", "tests.lab.kube.real_node_owner", node, str(node_dir),
                 state.api_url, str(tmp_path / "cluster" / "pki"), str(sockets)],
                cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        try:
            mark = f"{owner.pid}:{wait_until(lambda: leftovers.start_time(owner.pid), 10)}"

            def started() -> str | None:
                text = out.read_text()
                assert owner.poll() is None, f"the owner exited {owner.returncode}:\n{text[-3000:]}"
                return text if text.startswith("started") else None

            line = wait_until(started, POD_TIMEOUT, what=f"the owner to start the node: {out}")
            pids = [int(p) for p in line.split()[1:3]]
            children = [(p, leftovers.start_time(p) or 0) for p in pids]

            def ready() -> bool:
                got = kubectl(state, tmp_path / "kc", "get", "node", node, "-o", "json")
                conditions = (
                    json.loads(got.stdout).get("status", {}).get("conditions", [])
                    if got.returncode == 0
                    else []
                )
                return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

            wait_until(ready, POD_TIMEOUT, 0.5, f"{node} Ready")
            during = host_changes.state()
        finally:
            os.killpg(owner.pid, signal.SIGKILL)
            owner.wait(10)
        assert leftovers.wait_gone(children, 15) == []  # died with their owner
        leftovers.kill_marked([mark])  # the shims, as the watchdog or the next start do
        restored = sweep_node(node, node_dir / "kubelet", sockets / "kubelet")
    _assert_kubelet_changed_then_restored(host_before, during, restored)
    assert not (node_dir / "kubelet" / host_changes.RECORD).exists()
    assert not any((h / cgroup_root(node).lstrip("/")).exists() for h in CGROUP_V1.iterdir())
