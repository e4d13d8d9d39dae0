"""`lab run --fault`: the option's errors, and each fault kind through a real run of the
tiny app (HAProxy, k6, InfluxDB, pods as process groups)."""

from __future__ import annotations

import csv
import re
import statistics
from pathlib import Path
from typing import Any

import pytest
import yaml

from lab import accounting, cli
from lab.config import ConfigError, Fault, parse_fault
from lab.influx import free_port
from lab.matrix import rewrite_manifests
from tests.lab.labkit import READY_PROBE, TINY_IMAGES, tiny_manifest
from tests.lab.test_lab_run import _run
from tests.support import REPO

INFLUX_ENV = [{"name": "INFLUXDB_BASE_URL", "value": "http://influxdb:8086"}]
STEADY = (
    *("--scenario", "steady", "--vus", "5"),
    *("--warmup", "1", "--cooldown", "1", "--endpoint-lag", "0.2"),
)


def test_parse_fault() -> None:
    assert parse_fault("influx-down@2:5") == Fault("influx-down", 2.0, 5.0)
    assert parse_fault("influx-stall@0.5:1.5") == Fault("influx-stall", 0.5, 1.5)
    assert parse_fault("node-failure@3") == Fault("node-failure", 3.0)
    assert str(parse_fault("influx-down@2:5")) == "influx-down@2:5"
    assert parse_fault("container-crash@sigterm") == Fault("container-crash", 0.0, on="sigterm")
    assert parse_fault("influx-down@deleted+0.5:3") == Fault("influx-down", 0.5, 3.0, "deleted")
    assert str(parse_fault("influx-down@deleted+0.5:3")) == "influx-down@deleted+0.5:3"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("influx-down", "KIND@WHEN"),
        ("disk-full@1", "KIND must be one of"),
        ("node-failure@soon", "WHEN must be seconds or one of"),
        ("node-failure@-1", "WHEN must be between"),
        ("influx-down@1", "needs SECONDS"),
        ("influx-stall@1:0", "needs SECONDS"),
        ("influx-down@1:nan", "needs SECONDS"),
        ("pod-hang@1:5", "takes no SECONDS"),
        ("container-crash@reboot", "WHEN must be seconds or one of created"),
        ("container-crash@sigterm+x", "must be numbers"),
    ],
)
def test_bad_fault_is_a_config_error_naming_the_option(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        parse_fault(text)
    assert str(caught.value).startswith("--fault")


def test_cli_rejects_bad_faults_before_anything_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tiny_manifest(tmp_path / "m.yml", port=free_port())
    out = tmp_path / "out"
    base = ["run", "--manifests", str(manifest), "--image-map", str(TINY_IMAGES)]
    assert cli.main([*base, "--out", str(out), "--fault", "node-failure@x"]) == 2
    assert "--fault" in capsys.readouterr().err
    # No InfluxDB in these manifests: an InfluxDB fault has nothing to act on.
    assert cli.main([*base, "--out", str(out), "--fault", "influx-down@1:2"]) == 2
    assert "--fault influx-down@1:2" in capsys.readouterr().err
    assert not out.exists()


def _fault_events(report: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for e in report["events"] if e["kind"] == "fault"]


def _failed(report: dict[str, Any]) -> int:
    return sum(int(n) for n in report["failed"].values())


def _tiny(tmp_path: Path, replicas: int, **options: Any) -> Path:
    """The tiny app, ready 0.3 s after start, behind a readiness probe."""
    return tiny_manifest(
        tmp_path / "m.yml",
        port=free_port(),
        replicas=replicas,
        args=["--ready-after", "0.3"],
        readiness=READY_PROBE,
        **options,
    )


def _started_and_ended(report: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    """The run's fault events, checked to be exactly this fault's start and end."""
    faults = _fault_events(report)
    assert [e["detail"].split()[:2] for e in faults] == [[kind, "start"], [kind, "end"]]
    return faults


def test_pod_hang_is_restarted_by_liveness(tmp_path: Path) -> None:
    """Two pods with a liveness probe (1 s period, 2 failures); one is SIGSTOPped: liveness
    fails, the kubelet's SIGTERM stays pending and SIGKILL ends it after the 2 s grace,
    the container restarts, HAProxy dropped the pod meanwhile; nothing stays stopped."""
    manifest = tiny_manifest(
        tmp_path / "m.yml",
        port=free_port(),
        replicas=2,
        args=["--ready-after", "0.3"],
        readiness=READY_PROBE,
        liveness={
            "httpGet": {"path": "/health", "port": "http"},
            "periodSeconds": 1,
            "failureThreshold": 2,
            "timeoutSeconds": 1,
        },
        grace=2,
    )
    report = _run(tmp_path / "out", manifest, *STEADY, "--duration", "9", "--fault", "pod-hang@1")
    faults = _started_and_ended(report, "pod-hang")
    victim = faults[0]["pod"]
    events = [e for e in report["events"] if e["pod"] == victim]
    kinds = [e["kind"] for e in events]
    hung_at = faults[0]["t"]
    after = [e["kind"] for e in events if e["t"] > hung_at]
    for kind in ("liveness-failed", "not-ready", "lb-removed", "sigterm", "sigkilled"):
        assert kind in after, (kind, after)
    assert "restarting" in after and after.count("ready") >= 1  # back after the restart
    assert kinds.count("started") == 2
    assert report["pods_created"] == 2  # the same pod, its container restarted
    assert report["ok"] > 50
    # _run checked that every process group the lab started is gone, stopped ones too.


def test_influx_down_is_recorded_and_influxdb_comes_back(tmp_path: Path) -> None:
    """One pod writing a point per request; influxd is stopped for 2 s and started again
    on the same data dir: the events show it, and points written before and after the
    outage are all there (the accounting queries the restarted server)."""
    manifest = _tiny(tmp_path, 1, env=INFLUX_ENV)
    report = _run(
        tmp_path / "out", manifest, *STEADY, "--duration", "5", "--fault", "influx-down@1:2"
    )
    faults = _started_and_ended(report, "influx-down")
    assert 1.9 < faults[1]["t"] - faults[0]["t"] < 10
    # The tiny app writes synchronously and fails the request when InfluxDB is down;
    # every request that succeeded has its point, before and after the outage.
    assert report["ok"] > 50 and report["lost_operations"] == 0
    assert _failed(report) > 0


def _calc_v10(tmp_path: Path, batch_interval: str) -> Path:
    """calc v10's own manifests, probes as the matrix's --quick, writing every
    `batch_interval` seconds (30 s in the manifest: longer than these runs)."""
    manifests = rewrite_manifests(REPO / "deploy" / "k8s" / "v10", tmp_path / "v10", quick=True)
    path = manifests / "calc.yml"
    documents = list(yaml.safe_load_all(path.read_text()))
    for document in documents:
        if document.get("kind") == "Deployment":
            container = document["spec"]["template"]["spec"]["containers"][0]
            container["env"].append({"name": "CALC_BATCH_INTERVAL", "value": batch_interval})
    path.write_text(yaml.safe_dump_all(documents, sort_keys=False))
    return manifests


@pytest.mark.slow
def test_calc_v10_retries_its_buffered_points_through_influx_down(tmp_path: Path) -> None:
    """1. calc v10 (one replica, writing every 0.3 s) under a steady 5 VUs.
    2. influxd is stopped 1 s in, for 2.5 s, and started again on the same data dir.
    3. No request fails: the sums do not wait for InfluxDB. The writes during the outage
       fail and are retried (the pod log says so), and after it every answered sum has
       its point: 0 lost, 0 orphans."""
    out = tmp_path / "out"
    report = _run(
        out,
        _calc_v10(tmp_path, "0.3"),
        *STEADY,
        *("--image-map", str(REPO / "deploy" / "lab-images.yml"), "--replicas", "1"),
        *("--duration", "6", "--fault", "influx-down@1:2.5"),
        timeout=120,
    )
    _started_and_ended(report, "influx-down")
    assert report["failed"] == {} and report["ok"] == report["requests"] > 50
    assert report["lost_operations"] == 0 and report["orphan_operations"] == 0
    assert report["operations_logged"] == report["ok"]
    logs = "".join(p.read_text() for p in out.rglob("calc-*.log"))
    assert re.search(r"Writing \d+ operations failed \(.*\); will retry", logs), logs[-3000:]


def test_lb_restart_keeps_the_server_set(tmp_path: Path) -> None:
    """Two pods; HAProxy is stopped and started again 1 s into the load: both servers are
    added back and requests succeed again after the restart."""
    manifest = _tiny(tmp_path, 2)
    out = tmp_path / "out"
    report = _run(out, manifest, *STEADY, "--duration", "4", "--fault", "lb-restart@1")
    faults = _started_and_ended(report, "lb-restart")
    assert "2 servers re-added" in faults[1]["detail"]
    requests, _ = accounting.read_csv(out / "k6.csv")
    restarted_ms = faults[1]["wall"] * 1000
    assert sum(1 for r in requests if r.kind == "ok" and r.t_ms > restarted_ms + 500) > 20


def _durations_ms(k6_csv: Path) -> list[tuple[int, float]]:
    """k6's `http_req_duration` samples: (timestamp in Unix ms, duration in ms)."""
    with k6_csv.open(newline="") as f:
        return [
            (int(float(row["timestamp"])), float(row["metric_value"]))
            for row in csv.DictReader(f)
            if row["metric_name"] == "http_req_duration"
        ]


def test_influx_stall_delays_but_loses_nothing(tmp_path: Path) -> None:
    """1. One tiny-app pod writing a point per request before it answers (5 s timeout).
    2. influxd SIGSTOPped for 2 s, 1 s into a 4 s steady load.
    3. The requests in flight then wait for it: some take most of the 2 s, where
       before the stall they took well under 0.5 s. They go through after SIGCONT: no request
       fails, no operation is lost, nothing stays stopped."""
    out = tmp_path / "out"
    manifest = _tiny(tmp_path, 1, env=INFLUX_ENV)
    report = _run(out, manifest, *STEADY, "--duration", "4", "--fault", "influx-stall@1:2")
    faults = _started_and_ended(report, "influx-stall")
    assert report["failed"] == {} and report["lost_operations"] == 0 and report["ok"] > 30
    stalled_ms = faults[0]["wall"] * 1000
    durations = _durations_ms(out / "k6.csv")
    before = [ms for t, ms in durations if t < stalled_ms]
    # The median, not the max: one slow request on a loaded machine is not the stall.
    assert before and statistics.median(before) < 500, sorted(before)[-5:]
    # Stalled 2 s; allow for the stop and the poll that notices the end.
    assert max(ms for _, ms in durations) > 1500, sorted(ms for _, ms in durations)[-5:]


def test_fault_at_a_rollout_event_fires_after_that_event(tmp_path: Path) -> None:
    """1. A rollout of two tiny-app pods with `--fault lb-restart@sigterm+0.5`. 2. The
    fault starts 0.5 s after the rollout's first SIGTERM, not at a fixed time."""
    manifest = _tiny(tmp_path, 2, grace=5)
    report = _run(
        tmp_path / "out",
        manifest,
        *("--scenario", "rollout-restart", "--vus", "5"),
        *("--warmup", "1", "--cooldown", "1", "--endpoint-lag", "0.2"),
        *("--fault", "lb-restart@sigterm+0.5"),
    )
    action = next(
        e["t"]
        for e in report["events"]
        if e["kind"] == "phase" and e["detail"].startswith("action ")
    )
    first_sigterm = min(
        e["t"] for e in report["events"] if e["kind"] == "sigterm" and e["t"] >= action
    )
    start = next(e for e in _fault_events(report) if "start" in e["detail"])
    assert first_sigterm + 0.5 <= start["t"] < first_sigterm + 1.5
