"""What the report says about the load: the ideal rate from the measured answer time,
k6's exit after the lab stops it, and a ClusterIP Service as the load's entry. Real k6,
real tiny-app processes, the lab's own accounting and report."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from lab import accounting, report
from lab.influx import free_port
from lab.k6 import K6, describe_exit
from lab.lag import Lag
from lab.procs import Registry
from tests.lab.labkit import HERE, run, tiny_manifest, until
from tests.lab.test_lab_run import _run

SCRIPT = HERE.parents[1] / "deploy" / "k6" / "load-test.js"


def test_ideal_rate_comes_from_the_measured_answer_time(tmp_path: Path) -> None:
    """Scenario: 1. a service that answers in about 20 ms (the tiny app, --delay 0.02),
    not calc's 100 ms; 2. 4 VUs of the project's k6 script for about 3 s, stopped through
    k6's REST API as the lab stops it; 3. k6 exits 103 and that reads as the normal end;
    4. the report's ideal is 4 VUs / the window's median answer time (>= 20 ms), and the
    achieved rate is at most that ideal (no 400 % from a fixed 0.1 s)."""
    port = free_port()
    registry = Registry(tmp_path / "pids.txt")
    vus = 4

    async def scenario() -> tuple[report.Report, int | None]:
        try:
            app = HERE / "apps" / "tinyapp.py"
            await registry.start(
                [sys.executable, str(app), "--port", str(port), "--delay", "0.02"],
                "tinyapp",
                log=tmp_path / "tinyapp.log",
            )

            def answers() -> bool:
                try:
                    return httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).is_success
                except httpx.HTTPError:
                    return False

            await until(answers, 10, "the app answering")
            k6 = K6(
                SCRIPT,
                f"http://127.0.0.1:{port}",
                vus,
                "ideal",
                tmp_path / "k6.csv",
                free_port(),
                120,
                tmp_path / "k6.log",
            )
            started = time.time()
            await k6.start(registry, dict(os.environ))
            await asyncio.sleep(3)  # the load's length: nothing to wait for
            stopping = time.time()
            code = await k6.stop()
        finally:
            await registry.kill_all()
        requests, _ = accounting.read_csv(tmp_path / "k6.csv")
        the_report = report.build(
            manifests="tiny",
            scenario="steady",
            lb="tcp",
            lb_retries=0,
            endpoint_lag=Lag.fixed(0),
            vus=vus,
            replicas=1,
            accounting=accounting.account(requests, None),
            requests=requests,
            events=[],
            duration_s=stopping - started,
            steady_ms=(int((started + 1) * 1000), int(stopping * 1000)),
            action_completed=True,
            action_s=None,
            notes=[],
        )
        return the_report, code

    the_report, code = run(scenario(), 60)
    assert code == 103
    assert describe_exit(code) == "k6 stopped through its REST API, as asked (exit code 103)"
    assert the_report.ok > 100 and the_report.failed_total == 0
    assert the_report.median_ms is not None and the_report.median_ms >= 20
    assert the_report.ideal_rps == pytest.approx(vus / (the_report.median_ms / 1000), rel=0.01)
    ratio = the_report.steady_ratio
    assert ratio is not None and 0.3 < ratio <= 1.0, the_report.table()
    assert f"ideal = {vus} VUs / {the_report.median_ms:.1f} ms" in the_report.table()


def test_cluster_ip_entry_is_noted_and_k6_stop_is_not_an_error(tmp_path: Path) -> None:
    """Scenario: 1. the tiny app behind a ClusterIP Service (its only one); 2. `lab run
    --scenario steady`, 2 VUs, 1 s warm-up, 2 s steady; 3. the progress line says k6 was
    stopped through its REST API as asked, not a bare exit code 103; 4. the report's notes
    say the Service is ClusterIP and what the load stands in for; 5. report.json carries
    the median answer time its ideal comes from."""
    manifest = tiny_manifest(tmp_path / "m.yml", port=free_port())
    deployment, service = yaml.safe_load_all(manifest.read_text())
    service["spec"]["type"] = "ClusterIP"
    manifest.write_text(yaml.safe_dump_all([deployment, service], sort_keys=False))
    out = tmp_path / "out"
    the_report = _run(
        out, manifest, "--scenario", "steady", "--vus", "2", "--warmup", "1", "--duration", "2",
    )  # fmt: skip
    lines = [e["detail"] for e in the_report["events"] if e["kind"] == "phase"]
    assert "load-stopped k6 stopped through its REST API, as asked (exit code 103)" in lines
    (note,) = [n for n in the_report["notes"] if "ClusterIP" in n]
    assert note.startswith("Service tiny is type ClusterIP: only pods in the cluster reach it")
    assert "through one node's proxy" in note
    median = the_report["median_ms"]
    assert median is not None and median >= 50  # the tiny app's default 50 ms answer
    assert the_report["ideal_rps"] == pytest.approx(2 / (median / 1000), rel=0.01)


def test_the_table_names_the_script_the_request_and_the_expected_status() -> None:
    """1. Requests expecting 201 that got 200 (two) and 201 (one), from the lab's script
       with `--request 'GET /health'`, operations not measured for it.
    2. The table's rows: the script, the request, ok (201), the http_200 failures with
       the status expected, and why lost and orphan operations are not measured."""
    requests = [
        accounting.Request(t_ms=1000 + i, rid=f"r{i}", status=status, error_code="", error="",
                           expected_status=201)
        for i, status in enumerate((200, 200, 201))
    ]  # fmt: skip
    built = report.build(
        manifests="k8s/",
        scenario="steady",
        lb="tcp",
        lb_retries=0,
        endpoint_lag=Lag.fixed(1.0),
        vus=1,
        replicas=1,
        accounting=accounting.account(requests, None),
        requests=requests,
        events=[],
        duration_s=1.0,
        steady_ms=(None, None),
        action_completed=True,
        action_s=None,
        notes=[],
        k6_script="deploy/k6/load-test.js (the lab's)",
        request="GET /health",
        expect_status=201,
        operations_unmeasured="not measured: the request is not calc's /sum",
    )
    rows = [" ".join(line.split()) for line in built.table().splitlines()]
    for row in (
        "k6 script deploy/k6/load-test.js (the lab's)",
        "request GET /health",
        "ok (201) 1",
        "http_200 2 (expected 201)",
        "lost operations not measured: the request is not calc's /sum",
        "orphan operations not measured: the request is not calc's /sum",
    ):
        assert row in rows, built.table()
