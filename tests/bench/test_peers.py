"""bench/peers: the peer apps start and answer under each server, and each piece of the
run script works on a tiny load with real servers, real k6 and the real lab."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

from bench.peers import rollouts, shutdown, throughput
from bench.peers.servers import (
    IMAGES,
    PEER_BY_NAME,
    PEERS,
    Server,
    launch,
    manifest_path,
    process_tree,
)
from bench.throughput import free_port
from lab import manifest
from lab.images import ImageMap
from tests.support import REPO, Processes, http_ok, wait_until


def test_manifests_name_images_of_the_map() -> None:
    """1. Load every target's two manifests with the lab's parser. 2. Each is a Deployment
    of 5 replicas with readiness and liveness probes whose image is in bench/peers/images.yml.
    3. The -prestop one sleeps 5 s in preStop; the -nostop one has no preStop."""
    images = ImageMap.load(IMAGES)
    for peer in PEERS:
        for prestop in (True, False):
            deployment = manifest.load(manifest_path(peer, prestop)).deployment
            container = deployment.template.container
            assert deployment.replicas == 5
            assert images.image(container.image)
            assert container.readiness is not None and container.liveness is not None
            if prestop:
                assert container.pre_stop is not None
                assert container.pre_stop.command == ("sleep", "5")
            else:
                assert container.pre_stop is None


def test_every_target_starts_and_answers(processes: Processes, tmp_path: Path) -> None:
    """1. Start every target (calc v10 and the four peers) on its own loopback port, from
    its manifest and image-map entry. 2. Each answers /health, and POST /sum with
    [1, 2, 3, 4] gives 200 {"result": 10}. 3. SIGTERM each main process: each exits."""
    started = []
    for peer in PEERS:
        port = free_port()
        spec = launch(peer, "127.0.0.1", port, pod_dir=tmp_path)
        process = processes.start(spec.argv, env=spec.env, name=peer.name, cwd=spec.cwd)
        started.append((peer, port, process))
    for peer, port, process in started:
        url = f"http://127.0.0.1:{port}"
        health = f"{url}/health"
        wait_until(functools.partial(http_ok, health), 30, what=f"{peer.name} /health")
        response = httpx.post(f"{url}/sum", json={"numbers": [1, 2, 3, 4]}, timeout=5)
        assert response.status_code == 200, (peer.name, Processes.output(process))
        assert response.json() == {"result": 10}
    for _, _, process in started:
        process.terminate()
    for _, _, process in started:
        process.wait(15)  # raises if it does not exit


def test_throughput_counts_the_whole_process_tree(tmp_path: Path) -> None:
    """1. gunicorn (a master and a worker): the process tree has both. 2. One throughput
    sample, 5 VUs for 2 s without connection reuse. 3. Requests all 200, rps and latency
    measured, and CPU time counted (the worker does the work, so the tree's sum is > 0)."""
    gunicorn = PEER_BY_NAME["gunicorn"]
    with Server(gunicorn, "127.0.0.1", free_port(), tmp_path / "g.log") as server:
        server.wait_healthy()
        assert len(process_tree(server.pid)) >= 2
    sample = throughput.measure(gunicorn, 1, 5, 2.0, False, tmp_path)
    assert sample.requests > 20 and sample.failed == 0
    assert sample.rps > 10 and 100 <= sample.p50_ms < 1000
    assert sample.cpu_s > 0 and sample.peak_rss_mib > 10


def test_shutdown_times_exit_and_counts_answers(tmp_path: Path) -> None:
    """1. uvicorn idle: SIGTERM, it exits within a few seconds. 2. uvicorn with 10 requests
    in flight: SIGTERM 50 ms after they were sent; uvicorn drains, so all 10 get 200."""
    uvicorn = PEER_BY_NAME["uvicorn"]
    idle = shutdown.measure(uvicorn, 1, 0, 10.0, tmp_path)
    assert idle.exit_s is not None and idle.exit_s < 5 and idle.outcomes == {}
    busy = shutdown.measure(uvicorn, 1, 10, 10.0, tmp_path)
    assert busy.exit_s is not None and busy.exit_s < 5
    assert busy.outcomes == {"200": 10}


@pytest.mark.timeout(60)
def test_rollout_runs_the_lab_and_reads_its_report() -> None:
    """1. `lab run` rollout-restart of uvicorn without preStop, 1 replica, 5 VUs, 1 s of
    load before and after. 2. The lab exits 0 and the row carries its report's requests,
    failures by kind and rollout time."""
    opts = rollouts.RolloutOptions(vus=5, warmup=1, cooldown=1, replicas=1, timeout=50)
    # A short dir: HAProxy's stats socket path (under the lab's out dir) must fit the
    # 108-byte limit of a Unix socket address, which pytest's tmp_path can exceed.
    with tempfile.TemporaryDirectory(prefix="peers-", dir="/tmp") as short:
        row = rollouts.measure(PEER_BY_NAME["uvicorn"], "tcp", False, Path(short), opts)
    assert "error" not in row, row
    assert row["lab_exit"] == 0 and row["action_completed"]
    assert row["requests"] > 0 and row["ok"] + row["failed_total"] == row["requests"]
    assert "uvicorn | none | tcp" in rollouts.render([row], opts)


def test_run_script_writes_tables_and_json(tmp_path: Path) -> None:
    """1. bench/peers/run --parts shutdown for uvicorn, 1 round, 5 in flight. 2. It exits
    0, prints the shutdown table and writes peers.json with the row."""
    options = ["--parts", "shutdown", "--targets", "uvicorn", "--rounds", "1", "--inflight", "5"]
    result = subprocess.run(
        [sys.executable, str(REPO / "bench/peers/run"), *options, "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "| uvicorn |" in result.stdout
    data = json.loads((tmp_path / "peers.json").read_text())
    (row,) = data["shutdown"]
    assert row["target"] == "uvicorn" and row["busy_ok_min"] == 5
