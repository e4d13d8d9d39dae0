"""The project's headline through the lab: calc v10's own manifests (deploy/k8s/v10),
rolled out and scaled down under k6 load, with and without the preStop sleep, drop no
request and lose no operation.

Smaller than the matrix of docs/results.md to stay cheap in `make test`: 2 or 3 replicas, 10 VUs,
readiness probes after 2 s every 1 s (the matrix's --quick rewrite), 1 s of load before
and after the action. tests/lab/test_calc_lab.py has v3 failing in the same kind of run,
the control that shows such a run can fail."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from lab.matrix import rewrite_manifests
from tests.support import REPO, VENV_BIN

pytestmark = [pytest.mark.slow]

SCENARIOS = {
    # scenario name -> `lab run` options; scale-down starts from 3 replicas
    "rollout-restart": ["--scenario", "rollout-restart", "--replicas", "2"],
    "scale-down": ["--scenario", "scale", "--replicas", "3", "--to", "1"],
}


def _lab_v10(out: Path, scenario: str, pre_stop: bool) -> dict[str, Any]:
    manifests = rewrite_manifests(
        REPO / "deploy" / "k8s" / "v10",
        out.parent / "manifests",
        quick=True,
        no_prestop=not pre_stop,
    )
    argv = [str(VENV_BIN / "lab"), "run", "--manifests", str(manifests), *SCENARIOS[scenario]]
    argv += ["--vus", "10", "--lb", "tcp", "--endpoint-lag", "1", "--warmup", "1"]
    argv += ["--cooldown", "1", "--quiet", "--out", str(out)]
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=120, cwd=REPO, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    return report


@pytest.mark.timeout(150)
@pytest.mark.parametrize("pre_stop", [True, False], ids=["prestop", "no-prestop"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_v10_drops_nothing_and_loses_nothing(tmp_path: Path, scenario: str, pre_stop: bool) -> None:
    """1. calc v10's manifests (preStop sleep 5 s, or every preStop removed), probes as
    the matrix's --quick; a private InfluxDB stands in for influxdb:8086.
    2. `lab run` under 10 VUs (a new connection per request, tcp, 1 s endpoint lag):
       a rollout restart of 2 replicas, or a scale-down from 3 to 1.
    3. Every request is answered 200 and every answered sum has its point in InfluxDB
       (0 failed, 0 lost, 0 orphans), after pods got SIGTERM with or without a preStop."""
    report = _lab_v10(tmp_path / "out", scenario, pre_stop)
    assert report["action_completed"], report["notes"]
    assert report["failed"] == {}, report["error_examples"]
    assert report["ok"] == report["requests"] > 100
    assert report["lost_operations"] == 0, report["lost_ids"]
    assert report["orphan_operations"] == 0 and report["unmatched_points"] == 0
    assert report["operations_logged"] == report["ok"]
    kinds = [str(e["kind"]) for e in report["events"]]
    # The 2 old pods of the rollout, or the 2 scaled away; and at the end every pod.
    assert kinds.count("sigterm") >= 2, kinds
    assert ("prestop-started" in kinds) is pre_stop
