"""`lab run --cluster kubeconfig[:CONTEXT]`: the experiment on a cluster reached only
through its kubeconfig. The outside cluster here is `lab cluster up` started on its own:
the run is given its kubeconfig and context, nothing else."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from lab.influx import InfluxServer
from lab.kube import bins
from lab.kube.remote import CONNECT_TIMEOUT
from lab.matrix import rewrite_manifests
from tests.lab.kube.kubekit import kubectl, running
from tests.support import REPO, VENV_BIN


def _lab_run(out: Path, *options: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    manifests = rewrite_manifests(REPO / "deploy" / "k8s" / "v10", out / "manifests", quick=True)
    argv = [str(VENV_BIN / "lab"), "run", "--manifests", str(manifests), "--quiet"]
    argv += ["--vus", "10", "--warmup", "2", "--cooldown", "2", "--out", str(out / "run")]
    return subprocess.run(
        [*argv, *options],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
    )


def _kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "far", "cluster": {"server": server, "insecure-skip-tls-verify": True}}
                ],
                "users": [{"name": "someone", "user": {"token": "t"}}],
                "contexts": [
                    {"name": "alpha", "context": {"cluster": "far", "user": "someone"}},
                    {"name": "beta", "context": {"cluster": "far", "user": "someone"}},
                ],
                "current-context": "alpha",
            }
        )
    )
    return path


def _run_namespaces(state: Any, cache: Path) -> list[str]:
    found = kubectl(state, cache, "get", "namespaces", "-o", "name")
    assert found.returncode == 0, found.stderr
    return [n for n in found.stdout.split() if n.startswith("namespace/lab-")]


@pytest.mark.timeout(480)
def test_v10_through_the_kubeconfig_of_lab_cluster_up(tmp_path: Path) -> None:
    """1. `lab cluster up` on its own; an InfluxDB on loopback that its pods and this
       machine both reach (the process runtime's pods have no address the API server
       can dial, so the operation log cannot be read through it: --influx-url).
    2. `lab run --cluster kubeconfig:lab --kubeconfig <its file>` of calc v10 (2
       replicas) with a rollout restart: 4 pods created, every request answered, 0 lost
       and 0 orphan operations accounted by id; the timeline holds the API's view
       (deleted, gone, endpoints published and withdrawn) and no SIGTERM, which the
       report says was not observed.
    3. The run's namespace is gone afterwards.
    4. A run that fails (a ready deadline of 0.5 s) deletes its namespace too.
    5. Without --influx-url, InfluxDB is applied in the run's namespace; read through
       the API server, which cannot dial a process runtime pod: the run fails by its
       deadline saying so, and deletes its namespace."""
    bins.find()
    cache = tmp_path / "kubectl-cache"
    with running(tmp_path / "state", tmp_path / "logs") as up:
        state = up.wait_ready()
        with InfluxServer(data_dir=tmp_path / "influx") as influx:
            target = ["--cluster", "kubeconfig:lab", "--kubeconfig", state.kubeconfig]
            target += ["--influx-url", influx.url]
            result = _lab_run(
                tmp_path / "ok", *target, "--scenario", "rollout-restart", "--replicas", "2"
            )
            assert result.returncode == 0, result.stderr[-3000:]
            report = json.loads((tmp_path / "ok" / "run" / "report.json").read_text())
            assert report["action_completed"], report["notes"]
            assert report["pods_created"] == 4
            assert report["requests"] > 100
            assert (
                report["failed_total"],
                report["lost_operations"],
                report["orphan_operations"],
            ) == (0, 0, 0), report["error_examples"]
            assert report["ops_method"] == "by id"
            kinds = {e["kind"] for e in report["events"]}
            assert {"deleted", "gone", "endpoint-published", "endpoint-withdrawn"} <= kinds
            assert not kinds & {"sigterm", "prestop-started", "lb-added", "lb-removed"}
            notes = " ".join(report["notes"])
            assert "not observed" in notes and "SIGTERM" in notes
            assert "a cluster reached through its kubeconfig" in notes
            assert _run_namespaces(state, cache) == []

            started = time.monotonic()
            failed = _lab_run(tmp_path / "fails", *target, "--ready-timeout", "0.5")
            assert failed.returncode == 1, failed.stderr[-3000:]
            assert "lab: failed: the Deployment calc was not rolled out" in failed.stderr
            assert time.monotonic() - started < 120
            assert _run_namespaces(state, cache) == []

        # Without --influx-url: deploy/k8s/influxdb.yml applied in the run's namespace
        # and read through the API server's service proxy, which cannot reach a process
        # runtime pod: the run says so by its deadline and deletes its namespace.
        no_influx = ["--cluster", "kubeconfig:lab", "--kubeconfig", state.kubeconfig]
        failed = _lab_run(tmp_path / "no-influx", *no_influx, "--ready-timeout", "5")
        assert failed.returncode == 1, failed.stderr[-3000:]
        assert "lab: failed: InfluxDB did not answer within 5 s" in failed.stderr
        assert "use --influx-url" in failed.stderr
        events = (tmp_path / "no-influx" / "run" / "events.jsonl").read_text()
        assert "Deployment/influxdb, Service/influxdb" in events
        assert _run_namespaces(state, cache) == []


@pytest.mark.parametrize(
    ("cluster", "options", "message"),
    [
        (
            "kubeconfig:gamma",
            [],
            "has no context 'gamma' (it has: alpha, beta)",
        ),
        (
            "kubeconfig:beta",
            ["--fault", "container-crash@1"],
            "--fault container-crash@1: refused with --cluster kubeconfig:beta: it kills the "
            "container's process on its node",
        ),
        (
            "kubeconfig",
            ["--fault", "influx-down@1:2"],
            "--fault influx-down@1:2: refused with --cluster kubeconfig: it stops and restarts "
            "the InfluxDB process",
        ),
        ("kubeconfig", ["--nodes", "2"], "--nodes: not with --cluster kubeconfig"),
    ],
)
def test_what_a_kubeconfig_run_cannot_do_is_refused_before_anything_starts(
    tmp_path: Path, cluster: str, options: list[str], message: str
) -> None:
    """1. A kubeconfig with contexts alpha and beta (an API server nobody serves).
    2. A context it does not have, or what needs the cluster's nodes: exit 2 with one
       `lab: error:` line that says why (the file and its contexts; the fault's reason).
    3. Nothing started: no output dir."""
    kubeconfig = _kubeconfig(tmp_path / "kubeconfig", "https://127.0.0.1:9")
    result = _lab_run(
        tmp_path, "--cluster", cluster, "--kubeconfig", str(kubeconfig), *options, timeout=60
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lab: error: "), result.stderr
    assert message in lines[0]
    if "context" in message:
        assert str(kubeconfig) in lines[0]
    assert not (tmp_path / "run").exists()


@pytest.mark.timeout(120)
def test_an_api_server_that_never_answers_fails_the_run_within_its_deadline(
    tmp_path: Path,
) -> None:
    """1. A kubeconfig whose server accepts connections and never answers (a listening
       socket nobody reads).
    2. `lab run --cluster kubeconfig` fails with one `lab: failed:` line naming the
       server, the context and the file, within the connect deadline and a margin."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        server = f"https://127.0.0.1:{silent.getsockname()[1]}"
        kubeconfig = _kubeconfig(tmp_path / "kubeconfig", server)
        started = time.monotonic()
        result = _lab_run(tmp_path, "--cluster", "kubeconfig", "--kubeconfig", str(kubeconfig))
        took = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("lab: ")]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(
        f"lab: failed: the API server {server} (context alpha of {kubeconfig}) did not answer "
        f"within {CONNECT_TIMEOUT:g} s"
    ), lines[0]
    assert CONNECT_TIMEOUT - 1 < took < CONNECT_TIMEOUT + 20
