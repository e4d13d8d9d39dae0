"""Faults on `lab run --cluster local`: they act where a real cluster's would (the lab's
kubelet that runs the pods, the lab's InfluxDB), the real controllers and the pods'
status show them, and calc v10 loses no operation, as on the lab's own cluster
(docs/failure-modes.md, the fault table)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from lab.kube import bins
from tests.lab.kube.test_kube_run import _leftovers, _run


def _events(run: Path) -> list[dict[str, Any]]:
    lines = (run / "events.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _steady_with(out: Path, fault: str) -> tuple[dict[str, Any], list[dict[str, Any]], Path]:
    result, run = _run(
        out,
        "v10",
        "--scenario",
        "steady",
        "--duration",
        "8",
        "--replicas",
        "2",
        "--fault",
        fault,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report: dict[str, Any] = json.loads((run / "report.json").read_text())
    return report, _events(run), run


@pytest.mark.timeout(300)
def test_container_crash_restarts_the_container_in_its_pod(tmp_path: Path) -> None:
    """1. `lab run --cluster local --scenario steady --fault container-crash@2`, calc v10,
       2 replicas.
    2. The fault SIGKILLs one pod's container on the lab's kubelet: the kubelet restarts
       it in the same pod, and the API's pod status says restartCount 1; the
       ReplicaSet controller creates no pod (2 in all).
    3. v10 loses no operation: the restarted container replays its emptyDir spool.
    4. Nothing the run started is left running."""
    bins.find()
    report, events, run = _steady_with(tmp_path, "container-crash@2")
    faults = [e for e in events if e["kind"] == "fault"]
    assert [f["detail"].split()[1] for f in faults] == ["start", "end"], faults
    victim = faults[0]["pod"]
    restarts = [e for e in events if e["kind"] == "restart-count"]
    assert [(e["pod"], e["detail"]) for e in restarts] == [(victim, "1 in the pod's status")]
    assert restarts[0]["t"] > faults[0]["t"]
    assert report["pods_created"] == 2
    assert report["requests"] > 100
    assert (report["lost_operations"], report["orphan_operations"]) == (0, 0), report
    assert not _leftovers(run)


@pytest.mark.timeout(300)
def test_influx_down_loses_no_operation(tmp_path: Path) -> None:
    """1. `lab run --cluster local --scenario steady --fault influx-down@1:3`, calc v10.
    2. The lab's InfluxDB, which stands in for the cluster's, stops for 3 s and starts
       again as another process on the same data and port.
    3. Every request answered, every operation stored: v10's points wait in its buffer
       and are written once InfluxDB is back.
    4. Nothing the run started is left running."""
    bins.find()
    report, events, run = _steady_with(tmp_path, "influx-down@1:3")
    faults = [e for e in events if e["kind"] == "fault"]
    assert [f["detail"].split()[1] for f in faults] == ["start", "end"], faults
    assert faults[1]["t"] - faults[0]["t"] >= 3
    assert "started again, pid" in faults[1]["detail"]
    assert (report["failed_total"], report["lost_operations"], report["orphan_operations"]) == (
        0,
        0,
        0,
    ), report["error_examples"]
    assert report["ops_method"] == "by id"
    assert not _leftovers(run)
