"""`lab run --cluster local --kubelet real`: calc v10's rollout restart on real kubelets,
containerd and kube-proxy, the load through the Service's NodePort, the operation log in
the lab's InfluxDB: no request failed, no operation lost, every one accounted, and the
real node's parts gone afterwards."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lab.kube.real_kubelet import CGROUP_V1, cgroup_root
from lab.kube.real_nodes import node_name
from tests.support import REPO, VENV_BIN

# A real node: machine-wide state (kube-proxy's tables, the kubelet's tunables), one per
# machine, and a few minutes of a 2-core machine.
pytestmark = [pytest.mark.alone, pytest.mark.timeout(600)]


def test_v10_rollout_restart_on_the_real_kubelet_fails_and_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = [str(VENV_BIN / "lab"), "run", "--cluster", "local", "--kubelet", "real", "--quick"]
    argv += ["--manifests", str(REPO / "deploy/k8s/v10"), "--scenario", "rollout-restart"]
    argv += ["--replicas", "3", "--vus", "20", "--quiet", "--out", str(out)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=540, cwd=REPO)
    assert result.returncode == 0, result.stderr[-4000:]
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    assert report["action_completed"], report["notes"]
    assert report["requests"] > 0
    assert report["failed_total"] == 0, report["failed"]
    assert report["lost_operations"] == 0 and report["orphan_operations"] == 0
    assert report["operations_logged"] == report["requests"]  # each through InfluxDB
    notes = " ".join(report["notes"])
    assert "the real kubelet" in notes and "not observed" in notes
    assert "enableServiceLinks" not in notes  # the manifests as they are: calc copes
    assert not any((h / cgroup_root(node_name(0)).lstrip("/")).exists() for h in CGROUP_V1.iterdir())  # fmt: skip


def test_kubelet_real_is_refused_without_a_local_cluster(tmp_path: Path) -> None:
    argv = [str(VENV_BIN / "lab"), "run", "--kubelet", "real", "--manifests", "deploy/k8s/v10"]
    argv += ["--out", str(tmp_path / "o")]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 2, result.stderr
    assert "--kubelet real: only with --cluster local" in result.stderr
    assert not (tmp_path / "o").exists()
