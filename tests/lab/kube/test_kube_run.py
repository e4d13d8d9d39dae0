"""`lab run --cluster local`: the experiment on a real control plane the run starts,
with the lab's kubelet as its nodes. The rollout, the scaling and the endpoints are the
real controllers'; load, accounting and report are the lab's.

The talk's key comparison, small enough for `make test`: v3 (no preStop) fails requests
on a rollout restart, v10 drops none and loses no operation; probes as the matrix's
--quick (readiness after 2 s every 1 s), 2 replicas, 10 VUs, 1 s endpoint lag."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lab.kube import bins
from lab.matrix import rewrite_manifests
from tests.deploy.deploy_helpers import alive
from tests.support import REPO, VENV_BIN


def _run(out: Path, version: str, *options: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    manifests = rewrite_manifests(REPO / "deploy" / "k8s" / version, out / "manifests", quick=True)
    argv = [str(VENV_BIN / "lab"), "run", "--cluster", "local", "--manifests", str(manifests)]
    argv += ["--vus", "10", "--endpoint-lag", "1", "--warmup", "2", "--cooldown", "2"]
    argv += ["--quiet", "--out", str(out / "run"), *options]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=240, cwd=REPO)
    return result, out / "run"


def _report(out: Path, version: str) -> tuple[dict[str, Any], Path]:
    result, run = _run(out, version, "--scenario", "rollout-restart", "--replicas", "2")
    assert result.returncode == 0, result.stderr[-3000:]
    report: dict[str, Any] = json.loads((run / "report.json").read_text())
    assert report["action_completed"], report["notes"]
    return report, run


def _leftovers(run: Path) -> list[int]:
    """PIDs the run recorded (pods, proxies, k6, InfluxDB, components) still alive."""
    pids = [int(line.split()[0]) for line in (run / "pids.txt").read_text().splitlines()]
    state = (
        json.loads((run / "cluster" / "cluster.json").read_text())
        if (run / "cluster" / "cluster.json").exists()
        else {"components": []}
    )
    pids += [c["pid"] for c in state.get("components", [])]
    return [p for p in pids if alive(p)]


@pytest.mark.timeout(300)
def test_v3_fails_requests_on_the_real_control_plane(tmp_path: Path) -> None:
    """1. `lab run --cluster local` with calc v3 (no preStop): a rollout restart.
    2. The real Deployment controller replaced both pods (4 created, at most
       replicas + maxSurge at once), and requests failed: each old pod stopped
       listening while a node proxy still sent it connections.
    3. Nothing the run started is left running."""
    bins.find()
    report, run = _report(tmp_path, "v3")
    assert report["pods_created"] == 4
    assert report["failed_total"] > 0, report
    assert "a real control plane (--cluster local)" in " ".join(report["notes"])
    assert not _leftovers(run)


@pytest.mark.timeout(300)
def test_v10_drops_nothing_on_the_real_control_plane(tmp_path: Path) -> None:
    """1. `lab run --cluster local` with calc v10 (readiness flip, preStop sleep, drain
       until quiet, flush on shutdown), the lab's InfluxDB standing in for influxdb:8086.
    2. A rollout restart by the real controllers: every request answered 200, every
       answered sum stored (0 failed, 0 lost, 0 orphans, accounted by id), and never
       fewer than 2 pods available.
    3. Nothing the run started is left running."""
    bins.find()
    report, run = _report(tmp_path, "v10")
    assert report["pods_created"] == 4
    assert report["requests"] > 100
    assert (report["failed_total"], report["lost_operations"], report["orphan_operations"]) == (
        0,
        0,
        0,
    ), report["error_examples"]
    assert report["ops_method"] == "by id"
    assert report["fewest_available"] >= 2
    assert not _leftovers(run)


@pytest.mark.parametrize(
    ("options", "refused"),
    [
        (["--lb", "http"], "--lb http"),
        (["--lb-retries", "2"], "--lb-retries"),
    ],
)
def test_what_local_does_not_run_yet_is_refused_before_anything_starts(
    tmp_path: Path, options: list[str], refused: str
) -> None:
    """1. `lab run --cluster local` with an option it does not support yet.
    2. It exits 2 with `lab: error:` naming the option, and starts nothing (no out dir)."""
    result, run = _run(tmp_path, "v10", *options)
    assert result.returncode == 2, result.stderr
    assert f"lab: error: {refused}: not available with --cluster local yet" in result.stderr
    assert not run.exists()


@pytest.mark.timeout(300)
def test_update_and_steady_on_the_real_control_plane(tmp_path: Path) -> None:
    """1. `lab run --cluster local --scenario update`: v5's pods (2 replicas) under load,
       then v10's manifests applied: the real Deployment controller rolls the new pod
       template out (2 new pods, the old 2 gone), with no request failed (v5 has its
       preStop sleep).
    2. `--scenario steady --duration 3` with v10: no action, 2 pods, nothing failed."""
    bins.find()
    new = rewrite_manifests(REPO / "deploy" / "k8s" / "v10", tmp_path / "v10", quick=True)
    result, run = _run(
        tmp_path / "update",
        "v5",
        "--scenario",
        "update",
        "--update-to",
        str(new),
        "--replicas",
        "2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    update = json.loads((run / "report.json").read_text())
    assert update["action_completed"] and update["scenario"].startswith("update to ")
    assert (update["pods_created"], update["failed_total"]) == (4, 0), update["error_examples"]
    assert not _leftovers(run)
    result, run = _run(
        tmp_path / "steady", "v10", "--scenario", "steady", "--duration", "3", "--replicas", "2"
    )
    assert result.returncode == 0, result.stderr[-3000:]
    steady = json.loads((run / "report.json").read_text())
    assert (steady["pods_created"], steady["failed_total"], steady["lost_operations"]) == (2, 0, 0)
    assert steady["requests"] > 50
