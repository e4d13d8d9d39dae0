"""The lab on the real service: calc's v3 and v5 manifests through a rollout restart.

Smaller than the talk's run (3 replicas instead of 13, 20 VUs) to stay near a minute
each; `make lab-v3-v5` runs the full size."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO, VENV_BIN

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (VENV_BIN / "calc").exists(), reason="calc is not installed"),
]


def _rollout(version: str, out: Path) -> dict[str, Any]:
    manifests = REPO / "deploy" / "k8s" / version
    if not manifests.exists():
        pytest.skip(f"no manifests for {version}")
    argv = [str(VENV_BIN / "lab"), "run", "--manifests", str(manifests)]
    argv += ["--scenario", "rollout-restart", "--replicas", "3", "--vus", "20", "--lb", "tcp"]
    argv += ["--endpoint-lag", "1", "--warmup", "3", "--cooldown", "2", "--out", str(out)]
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=150, cwd=REPO, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    return report


@pytest.mark.timeout(170)
def test_v3_drops_requests_on_rollout(tmp_path: Path) -> None:
    """calc v3 (SIGTERM reaches the app, no preStop), 3 replicas, 20 VUs, tcp LB, 1 s lag.
    1. `lab run --scenario rollout-restart`.
    2. Requests fail: the old pods stop listening while HAProxy still sends to them."""
    report = _rollout("v3", tmp_path / "v3")
    assert report["action_completed"]
    assert report["failed_total"] > 0, report["failed"]


@pytest.mark.timeout(170)
def test_v5_drops_nothing_on_rollout(tmp_path: Path) -> None:
    """calc v5 (preStop sleep 5 s before SIGTERM), same run as v3.
    1. `lab run --scenario rollout-restart`.
    2. No request fails."""
    report = _rollout("v5", tmp_path / "v5")
    assert report["action_completed"]
    assert report["failed"] == {} and report["ok"] == report["requests"] > 100
