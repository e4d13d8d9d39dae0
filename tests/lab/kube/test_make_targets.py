"""The original demo's Kubernetes make targets, as a user runs them, against `lab cluster
up`: KUBECONFIG set to the kubeconfig it writes and the kubectl it built on the PATH."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from lab.kube import bins
from tests.deploy.deploy_helpers import run_make, scratch_copy
from tests.lab.kube.kubekit import kubectl, running
from tests.support import REPO


@pytest.fixture
def scratch_repo(tmp_path: Path) -> Path:
    """The Makefiles and manifests in a scratch dir, so .calc-url is the test's own; its
    .venv is the project's."""
    root = scratch_copy(tmp_path / "repo")
    (root / ".venv").symlink_to(REPO / ".venv")
    return root


@pytest.mark.timeout(420)
def test_k8s_targets_work_against_lab_cluster_up(tmp_path: Path, scratch_repo: Path) -> None:
    """1. `lab cluster up`; KUBECONFIG=<its kubeconfig>, its kubectl first on the PATH.
    2. `make k8s-deploy v=latest version=v10` applies calc v10 (13 replicas, image
       calc:latest), waits for the rollout and writes the LoadBalancer's address to
       .calc-url; `make k8s-test` gets {"result": 10} through it.
    3. `make k8s-scale replicas=2`, then `make k8s-redeploy`: the rollout restarts and
       finishes; `make k8s-test` still answers.
    4. `make k8s-delete` removes the Deployment, the Service and the budget."""
    found = bins.find()
    with running(tmp_path / "state", tmp_path / "logs") as up:
        state = up.wait_ready()
        env = {
            "KUBECONFIG": state.kubeconfig,
            "PATH": f"{found.directory}{os.pathsep}{os.environ['PATH']}",
            "REGISTRY": "",
        }

        def make(*args: str, timeout: float = 60) -> str:
            result = run_make(*args, cwd=scratch_repo, env=env, timeout=timeout)
            assert result.returncode == 0, f"make {' '.join(args)}:\n{result.stderr[-3000:]}"
            return result.stdout

        make("k8s-deploy", "v=latest", "version=v10", "LB_TIMEOUT=60", timeout=300)
        url = (scratch_repo / ".calc-url").read_text().strip()
        assert url.startswith("http://127.")
        assert json.loads(make("k8s-test").strip()) == {"result": 10}
        make("k8s-scale", "replicas=2", timeout=120)
        make("k8s-redeploy", timeout=180)
        assert json.loads(make("k8s-test").strip()) == {"result": 10}
        make("k8s-delete")
        left = kubectl(state, tmp_path / "cache", "get", "deployment,service,pdb", "-o", "name")
        assert left.stdout.split() == ["service/kubernetes"], left.stdout
        assert not (scratch_repo / ".calc-url").exists()
