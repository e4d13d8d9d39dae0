"""The operation log against a real InfluxDB: which profiles lose operations at SIGTERM,
the line protocol, and `calc ops count|clear`."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from calc.points import PointFormatter, escape_string_field, escape_tag
from calc.sinks import InfluxSink
from graceful import BatchWriter
from lab.influx import InfluxServer
from tests.calc_support import CalcProcess, StartCalc
from tests.support import VENV_BIN, wait_until

REQUESTS = 20


def send_sums(calc: CalcProcess, prefix: str, n: int = REQUESTS) -> list[str]:
    """n concurrent /sum requests, each with its own id; all must answer 200."""
    ids = [f"{prefix}-{i}" for i in range(n)]

    def one(rid: str) -> int:
        response = httpx.post(
            f"{calc.url}/sum", json={"numbers": [1, 2]}, headers={"x-request-id": rid}, timeout=10
        )
        return response.status_code

    with ThreadPoolExecutor(n) as pool:
        assert list(pool.map(one, ids)) == [200] * n
    return ids


def logged_ids(influx: InfluxServer, db: str) -> list[str]:
    return [str(v) for v in influx.field_values(db, "operation", "id")]


@pytest.mark.parametrize(
    ("profile", "env", "lost", "log_line"),
    [
        ("v6", {"CALC_TASK_DELAY": "2"}, True, "Cancelled 20 operation-log task(s)"),
        ("v7", {"CALC_TASK_DELAY": "1"}, False, "All operation-log tasks done"),
        ("v8", {}, True, "Lost 20 operations (shutdown: writer does not flush on shutdown)"),
        ("v9", {}, False, "Operations logged"),
        ("v10", {}, False, "Operations logged"),
    ],
)
def test_profiles_lose_or_keep_operations_at_sigterm(
    start_calc: StartCalc,
    influx_server: InfluxServer,
    influx_db: str,
    profile: str,
    env: dict[str, str],
    lost: bool,
    log_line: str,
) -> None:
    """1. Start the profile writing to a real InfluxDB (batch interval 30 s, so nothing is
    written before the signal). 2. 20 sums answered 200. 3. SIGTERM at once. 4. After
    exit, v6 and v8 have lost every point (and say so in the log); v7, v9 and v10 have
    every request's id in InfluxDB, exactly once."""
    calc = start_calc(
        profile,
        INFLUXDB_BASE_URL=influx_server.url,
        INFLUXDB_DB=influx_db,
        CALC_QUIET_PERIOD="0",
        **env,
    )
    ids = send_sums(calc, profile)
    calc.terminate()
    assert calc.wait_exit(15) == 0
    stored = logged_ids(influx_server, influx_db)
    if lost:
        assert len(stored) < len(ids)
        assert stored == []
    else:
        assert sorted(stored) == sorted(ids)
    assert log_line in calc.log
    assert f"{REQUESTS} operations recorded" in calc.log


def test_v10_loses_nothing_when_influxdb_is_down_around_the_flush(
    start_calc: StartCalc, tmp_path: Path
) -> None:
    """1. v10 writing to its own InfluxDB; 20 sums buffered. 2. InfluxDB stops. 3. SIGTERM:
    the shutdown flush fails and retries with backoff. 4. InfluxDB comes back 2 s later on
    the same port and data. 5. calc exits 0 and all 20 points are stored."""
    influx = InfluxServer(data_dir=tmp_path / "influx")
    influx.start()
    try:
        influx.create_database("calc")
        calc = start_calc("v10", INFLUXDB_BASE_URL=influx.url, CALC_QUIET_PERIOD="0")
        ids = send_sums(calc, "down")
        influx.stop()
        down_at = time.monotonic()
        calc.terminate()
        wait_until(lambda: "will retry" in calc.log, 5, what="a failed flush")
        time.sleep(max(0.0, 2.0 - (time.monotonic() - down_at)))  # the outage lasts 2 s
        influx.start()
        assert calc.wait_exit(10) == 0
        assert sorted(logged_ids(influx, "calc")) == sorted(ids)
        assert "0 lost" in calc.log
    finally:
        influx.close()


def test_150k_distinct_request_ids_write_without_rejection(
    influx_server: InfluxServer, influx_db: str
) -> None:
    """1. Format 150,000 points with distinct request ids (more than InfluxDB's default
    max-values-per-tag of 100,000). 2. Write them in batches of 5,000. 3. No write is
    rejected and all 150,000 are stored: the id is a field, not a tag."""
    points = PointFormatter("pod-a")
    lines = [points.sum_point(f"req-{i}", 4, 10.0) for i in range(150_000)]

    async def write_all() -> None:
        sink = InfluxSink(influx_server.url, influx_db, timeout=30)
        try:
            for start in range(0, len(lines), 5000):
                await sink.write(lines[start : start + 5000])
        finally:
            await sink.aclose()

    asyncio.run(write_all())
    assert InfluxSink(influx_server.url, influx_db).count() == 150_000


def test_id_as_tag_hits_max_values_per_tag_and_our_format_does_not(tmp_path: Path) -> None:
    """The original's trap, shrunk: 1. An InfluxDB with max-values-per-tag 1,000.
    2. Points with the id as a tag, in batches of 500 (the limit is checked against the
    values already stored): the third batch is rejected. 3. The same 1,500 points in our
    format, same batches: all stored."""

    def write_batches(influx: InfluxServer, lines: list[str]) -> list[httpx.Response]:
        return [
            httpx.post(
                f"{influx.url}/write", params={"db": "calc"}, content="\n".join(lines[i : i + 500])
            )
            for i in range(0, len(lines), 500)
        ]

    with InfluxServer(data_dir=tmp_path / "influx", max_values_per_tag=1000) as influx:
        influx.create_database("calc")
        now = time.time_ns()
        as_tag = [f"operation,name=sum,id=r{i} numbers=4,result=10 {now + i}" for i in range(1500)]
        responses = write_batches(influx, as_tag)
        statuses = [r.status_code for r in responses]
        assert statuses == [204, 204, 400]
        assert "max-values-per-tag limit exceeded" in responses[2].text
        influx.query('DROP MEASUREMENT "operation"', db="calc")
        points = PointFormatter("pod-a")
        ours = [points.sum_point(f"r{i}", 4, 10.0) for i in range(1500)]
        assert [r.status_code for r in write_batches(influx, ours)] == [204, 204, 204]
        assert InfluxSink(influx.url, "calc").count() == 1500


def test_a_rejected_point_does_not_poison_its_batch(
    influx_server: InfluxServer, influx_db: str
) -> None:
    """1. A batch of 10 points of which one has `result` as a string (a field type conflict).
    2. The batch writer writes it once: 9 stored, 1 counted lost, no retry loop."""
    points = PointFormatter("pod-b")
    good = [points.sum_point(f"ok-{i}", 1, 1.0) for i in range(9)]
    bad = f'operation,name=sum,pod=pod-b id="bad",numbers=1,result="oops" {time.time_ns()}'

    async def scenario() -> BatchWriter[str]:
        sink = InfluxSink(influx_server.url, influx_db)
        await sink.write([points.sum_point("first", 1, 1.0)])  # fixes the field types
        writer: BatchWriter[str] = BatchWriter(
            sink.write, name="operations", max_batch=10, interval=30
        )
        for line in [*good[:4], bad, *good[4:]]:
            writer.add(line)
        await writer.close(5)
        await sink.aclose()
        return writer

    writer = asyncio.run(scenario())
    assert (writer.written, writer.lost, writer.failed_writes) == (9, 1, 0)
    stored = logged_ids(influx_server, influx_db)
    assert sorted(stored) == sorted(["first", *(f"ok-{i}" for i in range(9))])


def test_line_protocol_escaping_and_floats_round_trip(
    influx_server: InfluxServer, influx_db: str
) -> None:
    """1. Points with a pod name and request id full of characters the protocol escapes,
    and results in every float form repr() produces. 2. InfluxDB stores each exactly."""
    assert escape_tag("a b,c=d\\") == "a\\ b\\,c\\=d\\\\"
    assert escape_string_field('say "hi" \\o/') == 'say \\"hi\\" \\\\o/'
    points = PointFormatter("pod, with=odd name")
    results = [1e20, 0.1, -0.0, 1e-7, 123456789.125, 1.7976931348623157e308]
    lines = [points.sum_point(f'id "{i}" \\ x', i, r) for i, r in enumerate(results)]
    response = httpx.post(
        f"{influx_server.url}/write", params={"db": influx_db}, content="\n".join(lines)
    )
    assert response.status_code == 204, response.text
    series = influx_server.query('SELECT "id", "result", "pod" FROM "operation"', db=influx_db)
    rows = series[0]["values"]
    assert isinstance(rows, list)
    assert [row[1] for row in rows] == [f'id "{i}" \\ x' for i in range(len(results))]
    assert [row[2] for row in rows] == results
    assert {row[3] for row in rows} == {"pod, with=odd name"}


def run_ops(action: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "calc"), "ops", action],
        env={"PATH": str(VENV_BIN), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_ops_count_and_clear_against_influxdb_and_the_file(
    start_calc: StartCalc, influx_server: InfluxServer, influx_db: str, tmp_path: Path
) -> None:
    """1. v9 writes 20 operations to InfluxDB; `calc ops count` says 20; `clear`; count 0.
    2. The same with no InfluxDB URL: the line-protocol file. 3. An unreachable InfluxDB
    and a missing database give exit 1 and a message naming the problem."""
    influx_env = {"INFLUXDB_BASE_URL": influx_server.url, "INFLUXDB_DB": influx_db}
    calc = start_calc("v9", **influx_env)
    send_sums(calc, "ops")
    calc.terminate()
    assert calc.wait_exit(10) == 0
    assert run_ops("count", influx_env).stdout.strip() == str(REQUESTS)
    assert run_ops("clear", influx_env).returncode == 0
    assert run_ops("count", influx_env).stdout.strip() == "0"

    file_env = {"CALC_OPLOG_FILE": str(tmp_path / "operations.lp")}
    calc = start_calc("v9")
    send_sums(calc, "file")
    calc.terminate()
    assert calc.wait_exit(10) == 0
    assert run_ops("count", file_env).stdout.strip() == str(REQUESTS)
    assert run_ops("clear", file_env).returncode == 0
    assert run_ops("count", file_env).stdout.strip() == "0"

    unreachable = run_ops("count", {"INFLUXDB_BASE_URL": "http://127.0.0.1:9"})
    assert unreachable.returncode == 1
    assert "cannot reach InfluxDB at http://127.0.0.1:9" in unreachable.stderr
    missing = run_ops("count", {**influx_env, "INFLUXDB_DB": "no_such_db"})
    assert missing.returncode == 1
    assert "database not found" in missing.stderr


@pytest.mark.parametrize(("profile", "kept"), [("v10", True), ("v9", False)])
def test_spool_keeps_what_a_sigkill_would_lose(
    start_calc: StartCalc, influx_server: InfluxServer, influx_db: str, profile: str, kept: bool
) -> None:
    """A container killed and restarted in the same pod (same pod name and port, same
    emptyDir): 1. 20 sums buffered. 2. SIGKILL. 3. The container starts again and is
    then stopped with SIGTERM. 4. v10 (spool on) recovered and wrote all 20 points;
    v9 (no spool) lost them."""
    env = {"INFLUXDB_BASE_URL": influx_server.url, "INFLUXDB_DB": influx_db}
    first = start_calc(profile, **env)
    ids = send_sums(first, f"kill-{profile}")
    os.killpg(first.process.pid, signal.SIGKILL)
    first.wait_exit(5)
    second = start_calc(profile, port=first.port, **env)
    second.terminate()
    assert second.wait_exit(15) == 0
    stored = logged_ids(influx_server, influx_db)
    if kept:
        assert sorted(stored) == sorted(ids)
        assert "Recovered 20 spooled lines" in second.log
    else:
        assert stored == []
