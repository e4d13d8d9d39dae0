"""`lab cluster up --kubelet real` runs the project's image: calc:latest taken from the
Docker engine into the node's containerd, a manifest naming `calc:latest` (pull policy
Always by the API's defaults) run without a pull through the cluster's
MutatingAdmissionPolicy, each pod a real container whose PID 1 is calc, Ready on its
probes, its logs through the API server, its Service's NodePort answering at the node's
address through kube-proxy."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from lab.kube.node_images import POLICY
from lab.manifest import raw_documents
from tests.lab.kube.kubekit import kubectl, lab_cluster, running
from tests.support import REPO, wait_until

pytestmark = [
    pytest.mark.alone,
    pytest.mark.timeout(400),
]  # a real node: machine-wide state, one per machine

REPLICAS = 3
POD_TIMEOUT = 120.0  # v10's probes start 20 s after the container


def _v10(replicas: int) -> list[dict[str, Any]]:
    """deploy/k8s/v10 as it is, but for its replicas (its Service named calc gives the
    pods CALC_PORT=tcp://CLUSTER-IP:80, Kubernetes' service link: calc passes it over)."""
    docs = [doc for _, doc in raw_documents([REPO / "deploy/k8s/v10/calc.yml"])]
    for doc in docs:
        if doc["kind"] == "Deployment":
            doc["spec"]["replicas"] = replicas
    return docs


def test_the_projects_image_runs_on_the_real_kubelet(tmp_path: Path) -> None:
    state_dir, cache = tmp_path / "cluster", tmp_path / "kc"
    with running(state_dir, tmp_path / "logs", "--kubelet", "real") as up:
        state = up.wait_ready()

        def k(*args: str, stdin: str | None = None) -> str:
            result = kubectl(state, cache, *args, stdin=stdin)
            assert result.returncode == 0, (args, result.stderr)
            return result.stdout

        assert "calc:latest imported from the Docker engine" in up.stderr()
        assert f"MutatingAdmissionPolicy {POLICY}" in up.stderr()
        applied = time.monotonic()
        k("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": _v10(REPLICAS)}))  # fmt: skip

        def ready_pods() -> list[dict[str, Any]] | None:
            pods = json.loads(k("get", "pods", "-l", "app=calc", "-o", "json"))["items"]
            ready = [
                p
                for p in pods
                if any(
                    c["type"] == "Ready" and c["status"] == "True"
                    for c in p["status"].get("conditions", [])
                )
            ]
            return ready if len(ready) == REPLICAS else None

        pods = wait_until(ready_pods, POD_TIMEOUT, 0.5, "calc v10's pods Ready")
        ready_after = time.monotonic() - applied
        name = pods[0]["metadata"]["name"]
        logs = k("logs", name)
        pid1 = k("exec", name, "--", "cat", "/proc/1/cmdline").replace("\0", " ")
        node = json.loads(k("get", "node", "lab-real-0", "-o", "json"))
        address = next(a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP")  # fmt: skip
        service = json.loads(k("get", "service", "calc", "-o", "json"))
        node_port = service["spec"]["ports"][0]["nodePort"]
        url = f"http://{address}:{node_port}/health"

        def health() -> bytes | None:
            try:
                with urllib.request.urlopen(url, timeout=2) as answer:
                    return bytes(answer.read())
            except OSError:
                return None

        answer = wait_until(health, 30, 0.2, f"{url} through kube-proxy")
        down = lab_cluster("down", "--state-dir", str(state_dir), timeout=120)
        assert down.returncode == 0, down.stderr
        assert up.wait_exit() == 0, up.stderr()[-3000:]
    print(f"{REPLICAS} calc v10 pods Ready {ready_after:.1f} s after apply")
    for pod in pods:
        (container,) = pod["spec"]["containers"]
        assert container["image"] == "calc:latest"
        assert container["imagePullPolicy"] == "IfNotPresent"  # the policy's, not Always
        (status,) = pod["status"]["containerStatuses"]
        assert status["imageID"].startswith("sha256:") and status["restartCount"] == 0
        assert status["containerID"].startswith("containerd://")
    assert "calc v10 on 0.0.0.0:4000" in logs, logs[-2000:]
    assert pid1.split()[1:] == ["/opt/venv/bin/calc", "serve"], pid1
    assert json.loads(answer) == {"status": "healthy"}
