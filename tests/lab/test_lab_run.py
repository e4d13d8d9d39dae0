"""`lab run` end to end, as a subprocess: real HAProxy, InfluxDB, k6 and tiny-app pods."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lab.influx import free_port
from tests.lab.labkit import READY_PROBE, TINY_IMAGES, tiny_manifest
from tests.support import REPO, VENV_BIN, wait_until


def _lab(out: Path, manifest: Path, *options: str) -> list[str]:
    return [
        str(VENV_BIN / "lab"),
        "run",
        "--manifests",
        str(manifest),
        "--image-map",
        str(TINY_IMAGES),
        "--out",
        str(out),
        "--seed",
        "1",
        *options,
    ]


def _pids(out: Path) -> dict[int, str]:
    path = out / "pids.txt"
    if not path.exists():
        return {}
    pids = {}
    for line in path.read_text().splitlines():
        pid, _, name = line.partition(" ")
        pids[int(pid)] = name
    return pids


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _assert_all_gone(out: Path) -> None:
    pids = _pids(out)
    assert pids, "the lab logged no PIDs"
    # A killed orphan (a wrapper's child) is reaped by init a moment after the lab exits.
    wait_until(lambda: not any(_alive(p) for p in pids), 5, what="every logged group gone")


def _kill_leftovers(out: Path) -> None:
    """The test's own forced path: whatever the lab left, its groups get SIGKILL."""
    for pid in _pids(out):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def _run(out: Path, manifest: Path, *options: str, timeout: float = 90) -> dict[str, Any]:
    """Run `lab run` to the end. If it overruns `timeout`: dump its stacks (SIGUSR1), stop
    it with SIGINT, and fail with its last output and events."""
    lab = subprocess.Popen(
        _lab(out, manifest, *options),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        stdout, stderr = lab.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        lab.send_signal(signal.SIGUSR1)
        time.sleep(1)
        lab.send_signal(signal.SIGINT)
        try:
            stdout, stderr = lab.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            lab.kill()
            stdout, stderr = lab.communicate()
        _kill_leftovers(out)
        events = (
            (out / "events.jsonl").read_text()[-3000:] if (out / "events.jsonl").exists() else ""
        )
        pytest.fail(f"lab run overran {timeout} s\n{stderr[-6000:]}\nlast events:\n{events}")
    try:
        _assert_all_gone(out)
    finally:
        _kill_leftovers(out)
    assert lab.returncode == 0, stderr[-3000:]
    assert "lost operations" in stdout and "requests" in stdout
    report: dict[str, Any] = json.loads((out / "report.json").read_text())
    assert (out / "timeline.png").stat().st_size > 10_000
    return report


def test_rollout_with_prestop_loses_nothing_but_the_dropped_operation(tmp_path: Path) -> None:
    """Two tiny-app pods logging to `influxdb:8086`, readiness probe, 1 s preStop sleep,
    propagation lag 0.2 s; the app drops the point of request -1-3 (VU 1, iteration 3).
    1. `lab run --scenario rollout-restart` with 5 VUs, 2 s warm-up, 1 s cool-down.
    2. No failed request; exactly one lost operation, that id; no orphans.
    3. report.json has the fields and the pod events; every process it started is gone."""
    manifest = tiny_manifest(
        tmp_path / "m.yml",
        port=free_port(),
        replicas=2,
        args=["--ready-after", "0.5", "--drop-id=-1-3"],
        readiness=READY_PROBE,
        pre_stop={"sleep": {"seconds": 1}},
        grace=5,
        env=[{"name": "INFLUXDB_BASE_URL", "value": "http://influxdb:8086"}],
    )
    out = tmp_path / "out"
    report = _run(
        out, manifest, "--scenario", "rollout-restart", "--vus", "5", "--warmup", "2",
        "--cooldown", "1", "--endpoint-lag", "0.2",
    )  # fmt: skip
    for key in ("manifests", "scenario", "lb", "requests", "ok", "failed", "lost_operations",
                "orphan_operations", "duration_s", "events", "achieved_rps", "ideal_rps"):  # fmt: skip
        assert key in report
    assert report["failed"] == {} and report["ok"] == report["requests"] > 50
    assert report["lost_operations"] == 1 and report["lost_ids"][0].endswith("-1-3")
    assert report["orphan_operations"] == 0 and report["unmatched_points"] == 0
    assert report["action_completed"] and report["pods_created"] == 4
    # 25 % of 2 replicas: maxSurge rounds up to 1, maxUnavailable down to 0.
    assert report["peak_pods"] == 3 and report["fewest_available"] == 2
    kinds = {e["kind"] for e in report["events"]}
    assert {"created", "ready", "lb-added", "lb-removed", "prestop-started", "sigterm"} <= kinds
    # The ideal: 5 VUs / the warm-up's median answer time (the app's 50 ms and more).
    assert report["achieved_rps"] > 0 and report["median_ms"] >= 50
    assert report["ideal_rps"] == pytest.approx(5000 / report["median_ms"], rel=0.01)


def test_rollout_without_prestop_fails_requests(tmp_path: Path) -> None:
    """The v3 situation with the tiny app: no preStop, the app stops listening on SIGTERM
    at once, and the load balancer learns of it 1 s later.
    1. `lab run --scenario rollout-restart --lb http` with 10 VUs.
    2. Requests failed while HAProxy still sent to the stopped pods (HTTP 503 from HAProxy,
       as `retries 0`), and the report counts them by kind."""
    manifest = tiny_manifest(
        tmp_path / "m.yml",
        port=free_port(),
        replicas=2,
        args=["--ready-after", "0.5"],
        readiness=READY_PROBE,
        grace=5,
    )
    out = tmp_path / "out"
    report = _run(
        out, manifest, "--scenario", "rollout-restart", "--vus", "10", "--warmup", "2",
        "--cooldown", "1", "--endpoint-lag", "1", "--lb", "http",
    )  # fmt: skip
    assert report["failed_total"] > 0
    assert set(report["failed"]) <= {"http_503", "http_502", "refused", "eof", "reset"}
    assert report["lost_operations"] is None  # no InfluxDB in these manifests


def _events(out: Path) -> list[dict[str, Any]]:
    path = out / "events.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _phases(out: Path) -> list[str]:
    return [str(e["detail"]) for e in _events(out) if e["kind"] == "phase"]


def _start_steady(tmp_path: Path, manifest: Path, log_name: str) -> subprocess.Popen[bytes]:
    out = tmp_path / "out"
    log = (tmp_path / log_name).open("wb")
    lab = subprocess.Popen(
        _lab(out, manifest, "--scenario", "steady", "--duration", "300", "--vus", "2"),
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    log.close()
    return lab


def test_second_sigint_skips_the_graceful_teardown_and_kills_everything(tmp_path: Path) -> None:
    """`lab run --scenario steady` for a long time, with pods that ignore SIGTERM (grace
    30 s), HAProxy, InfluxDB and k6 up.
    1. Wait until k6 and both pods are logged as started.
    2. Send SIGINT (Ctrl-C): the graceful teardown starts (the pods get SIGTERM and would
       take their 30 s grace period).
    3. Send SIGINT again: it exits 130 within seconds, every PID it logged is gone, and
       the event log says the teardown was forced."""
    manifest = tiny_manifest(
        tmp_path / "m.yml",
        port=free_port(),
        replicas=2,
        args=["--ignore-sigterm"],
        grace=30,
        env=[{"name": "INFLUXDB_BASE_URL", "value": "http://influxdb:8086"}],
    )
    out = tmp_path / "out"
    lab = _start_steady(tmp_path, manifest, "lab.log")
    try:
        wait_until(
            lambda: (
                "k6" in _pids(out).values()
                and sum(n.startswith("pod ") for n in _pids(out).values()) == 2
            ),
            30,
            what="k6 and two pods started",
        )
        assert {"influxd", "haproxy"} <= set(_pids(out).values())
        lab.send_signal(signal.SIGINT)
        wait_until(
            lambda: len([e for e in _events(out) if e["kind"] == "sigterm"]) == 2,
            20,
            what="both pods sent SIGTERM by the graceful teardown",
        )
        assert lab.poll() is None  # still waiting for the grace period
        lab.send_signal(signal.SIGINT)
        assert lab.wait(20) == 130
    finally:
        if lab.poll() is None:
            lab.kill()
            lab.wait(10)
        _kill_leftovers(out)
    _assert_all_gone(out)
    assert "interrupted by SIGINT" in (tmp_path / "lab.log").read_text()
    assert any(p.startswith("teardown-forced SIGINT") for p in _phases(out)), _phases(out)
    assert not (out / "report.json").exists()  # a forced stop writes no report


def test_sigterm_tears_down_gracefully_and_exits_143(tmp_path: Path) -> None:
    """`lab run --scenario steady` with two pods that have a 1 s preStop sleep.
    1. Once k6 has sent some requests (the app drops the point of request -1-3), send
       SIGTERM once.
    2. The load stops, then each pod goes through preStop and SIGTERM and exits on its
       own (no SIGKILL); the lab exits 143 and every PID it logged is gone.
    3. It prints and writes the report of the run so far, marked interrupted: the
       requests k6 recorded, exactly the one lost operation, the timeline."""
    manifest = tiny_manifest(
        tmp_path / "m.yml",
        port=free_port(),
        replicas=2,
        args=["--drop-id=-1-3"],
        readiness=READY_PROBE,
        pre_stop={"sleep": {"seconds": 1}},
        grace=10,
        env=[{"name": "INFLUXDB_BASE_URL", "value": "http://influxdb:8086"}],
    )
    out = tmp_path / "out"
    lab = _start_steady(tmp_path, manifest, "lab.log")
    csv = out / "k6.csv"
    try:
        wait_until(
            lambda: csv.exists() and csv.read_text().count("http_req_duration") > 20,
            30,
            what="k6 sent 20 requests",
        )
        lab.send_signal(signal.SIGTERM)
        assert lab.wait(30) == 143
    finally:
        if lab.poll() is None:
            lab.kill()
            lab.wait(10)
        _kill_leftovers(out)
    _assert_all_gone(out)
    events = _events(out)
    kinds = [e["kind"] for e in events]
    assert kinds.count("prestop-finished") == 2 and kinds.count("exited") == 2
    assert "sigkilled" not in kinds
    phases = _phases(out)
    assert any(p.startswith("interrupted SIGTERM") for p in phases)
    assert not any(p.startswith("teardown-forced") for p in phases)
    log = (tmp_path / "lab.log").read_text()
    assert "interrupted by SIGTERM" in log
    assert "INTERRUPTED (SIGTERM at" in log and "partial report:" in log, log[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["requests"] > 20 and report["ok"] > 20
    assert report["lost_operations"] == 1 and report["lost_ids"][0].endswith("-1-3"), report
    assert report["notes"][0].startswith("INTERRUPTED (SIGTERM at")
    assert (out / "timeline.png").stat().st_size > 10_000


def test_sigterm_while_pods_start_stops_before_the_load(tmp_path: Path) -> None:
    """`lab run` with two pods that become ready only after 30 s.
    1. While they start (listening, not ready, no load yet), send SIGTERM.
    2. The lab exits 143 within seconds, k6 never started, and every PID it logged is
       gone."""
    manifest = tiny_manifest(
        tmp_path / "m.yml",
        port=free_port(),
        replicas=2,
        args=["--ready-after", "30"],
        readiness=READY_PROBE,
        grace=5,
    )
    out = tmp_path / "out"
    lab = _start_steady(tmp_path, manifest, "lab.log")
    try:
        # Both apps listening (their /ready answers 503), so their SIGTERM handler is in.
        wait_until(
            lambda: len({e["pod"] for e in _events(out) if "HTTP 503" in e["detail"]}) == 2,
            30,
            what="two pods started and not ready",
        )
        lab.send_signal(signal.SIGTERM)
        assert lab.wait(30) == 143
    finally:
        if lab.poll() is None:
            lab.kill()
            lab.wait(10)
        _kill_leftovers(out)
    _assert_all_gone(out)
    assert "k6" not in _pids(out).values()
    kinds = [e["kind"] for e in _events(out)]
    assert kinds.count("exited") == 2 and "sigkilled" not in kinds


def test_cli_help_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lab.cli", "run", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "--endpoint-lag" in result.stdout


def test_scale_scenario_over_http_lb(tmp_path: Path) -> None:
    """One tiny-app pod behind HAProxy in http mode (pooled keep-alive to the pods).
    1. `lab run --scenario scale --to 3` with 5 VUs and 0.2 s lag.
    2. Two pods were added, each joined HAProxy, and no request failed."""
    manifest = tiny_manifest(
        tmp_path / "m.yml",
        port=free_port(),
        replicas=1,
        args=["--ready-after", "0.3"],
        readiness=READY_PROBE,
        grace=2,
    )
    out = tmp_path / "out"
    report = _run(
        out, manifest, "--scenario", "scale", "--to", "3", "--vus", "5", "--warmup", "1",
        "--cooldown", "1", "--endpoint-lag", "0.2", "--lb", "http",
    )  # fmt: skip
    assert report["scenario"] == "scale to 3" and report["lb"] == "http"
    assert report["pods_created"] == 3 and report["action_completed"]
    assert sum(e["kind"] == "lb-added" for e in report["events"]) == 3
    assert report["failed"] == {} and report["requests"] > 20


def test_h2_load_balancer_terminates_tls_and_speaks_http2(tmp_path: Path) -> None:
    """Two tiny-app pods behind HAProxy with TLS (the lab's self-signed certificate) and
    HTTP/2 offered through ALPN; the pods get HTTP/1.1.
    1. `lab run --scenario steady --lb h2` for 2 s with 5 VUs.
    2. Every request succeeded over HTTP/2.0, and k6's protocol check never failed."""
    manifest = tiny_manifest(
        tmp_path / "m.yml", port=free_port(), replicas=2, readiness=READY_PROBE, grace=2
    )
    out = tmp_path / "out"
    report = _run(
        out, manifest, "--scenario", "steady", "--duration", "2", "--vus", "5", "--warmup", "1",
        "--cooldown", "0", "--endpoint-lag", "0.2", "--lb", "h2",
    )  # fmt: skip
    assert report["failed"] == {} and report["requests"] > 20
    assert report["protocols"] == {"HTTP/2.0": report["requests"]}
    assert report["failed_checks"] == {}
    assert (out / "haproxy" / "lb.pem").exists()


def test_error_mid_run_still_cleans_up(tmp_path: Path) -> None:
    """Pods that never become ready, and a 2 s deadline for the first deployment.
    1. `lab run` fails with exit code 1 and a message naming the deadline.
    2. Every process it had started (HAProxy, pods) is gone."""
    manifest = tiny_manifest(
        tmp_path / "m.yml",
        port=free_port(),
        replicas=2,
        args=["--ready-after", "600"],
        readiness=READY_PROBE,
    )
    out = tmp_path / "out"
    result = subprocess.run(
        _lab(out, manifest, "--ready-timeout", "2"),
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "not ready within 2 s" in result.stderr
    assert sum(n.startswith("pod ") for n in _pids(out).values()) == 2
    _assert_all_gone(out)


def test_update_scenario_rolls_out_the_new_template(tmp_path: Path) -> None:
    """Two tiny-app pods from manifest A; manifest B changes the container's args.
    1. `lab run --scenario update --update-to B` with 5 VUs.
    2. Revision 2's pods run B's command line, revision 1's ran A's; nothing failed."""
    port = free_port()
    common: dict[str, Any] = {
        "port": port,
        "replicas": 2,
        "readiness": READY_PROBE,
        "grace": 3,
        "pre_stop": {"sleep": {"seconds": 1}},
    }
    first = tiny_manifest(tmp_path / "a.yml", args=["--ready-after", "0.3"], **common)
    second = tiny_manifest(tmp_path / "b.yml", args=["--delay", "0.02"], **common)
    out = tmp_path / "out"
    report = _run(
        out, first, "--scenario", "update", "--update-to", str(second), "--vus", "5",
        "--warmup", "1", "--cooldown", "1", "--endpoint-lag", "0.2",
    )  # fmt: skip
    started = [e for e in report["events"] if e["kind"] == "started"]
    new = [e for e in started if "-r2-" in e["pod"]]
    old = [e for e in started if "-r1-" in e["pod"]]
    assert len(new) == 2 and all("--delay 0.02" in e["detail"] for e in new)
    assert len(old) == 2 and all("--ready-after 0.3" in e["detail"] for e in old)
    assert report["failed"] == {} and report["scenario"].startswith("update to")
