"""calc's ASGI app in the pytest process, built as `calc serve` builds it: POST /sum and
its errors, request ids, /health, /ready, /metrics, /openapi.json, and what each
profile v1..v10 does with an operation, up to the end of its lifespan."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import pytest

from calc.api import MAX_BODY_BYTES
from calc.logs import request_id_var
from calc.openapi import OPENAPI, _json
from graceful import Phase
from tests.calc.app_support import InProcessCalc, config_for, metrics_of, until
from tests.fake_influx import FakeInflux

SUM = b'{"numbers": [1, 2, 3, 4]}'
JSON = "application/json"


def run(scenario: Coroutine[Any, Any, None]) -> None:
    asyncio.run(scenario)


@pytest.mark.parametrize(
    ("body", "status", "answer"),
    [
        (SUM, 200, b'{"result":10}'),
        (b'{"numbers": [1, 2.5]}', 200, b'{"result":3.5}'),
        (b'{"numbers": [1, true, "7", null, {"a": 1}, [2], 3]}', 200, b'{"result":4}'),
        (b'{"numbers": [1, 2', 400, b'{"error":"malformed JSON"}'),
        (b"\xff\xfe", 400, b'{"error":"malformed JSON"}'),
        (b"[1, 2]", 422, b'{"error":"body must be a JSON object"}'),
        (b"{}", 422, b'{"error":"field \'numbers\' is missing"}'),
        (b'{"numbers": "1,2"}', 422, b'{"error":"field \'numbers\' must be a list"}'),
        (b'{"numbers": [NaN]}', 422, b'{"error":"NaN is not a number we can sum"}'),
        (b'{"numbers": [1e999]}', 422, b'{"error":"inf is not a number we can sum"}'),
        (b'{"numbers": [1.7e308, 1.7e308]}', 422, b'{"error":"the sum is too large to log"}'),
        (
            b'{"numbers": [' + b",".join([b"1"] * 100_001) + b"]}",
            413,
            b'{"error":"more than 100000 items"}',
        ),
    ],
)
def test_sum_answers_compact_json_with_the_documented_status(
    tmp_path: Path, body: bytes, status: int, answer: bytes
) -> None:
    """1. v3 in-process. 2. POST /sum with a good or a bad body. 3. The status and the
    exact compact JSON body, as application/json."""

    async def scenario() -> None:
        calc = InProcessCalc(config_for("v3", tmp_path))
        async with calc.running() as client:
            response = await client.post("/sum", content=body)
        assert (response.status_code, response.content) == (status, answer)
        assert response.headers["content-type"] == JSON

    run(scenario())


def edge_bodies() -> tuple[bytes, bytes]:
    """A valid body of exactly MAX_BODY_BYTES, and one byte more."""
    head, tail = b'{"numbers": [', b"]}"
    fits = head + b" " * (MAX_BODY_BYTES - len(head) - len(tail)) + tail
    assert len(fits) == MAX_BODY_BYTES
    return fits, fits[:-2] + b" ]}"


def test_the_body_limit_holds_with_and_without_a_content_length(tmp_path: Path) -> None:
    """1. A body of exactly 1 MiB, with a content-length and streamed in 64 KiB chunks
    with none: both summed. 2. One byte more, both ways: 413 with the limit named."""
    fits, over = edge_bodies()
    too_large = (413, b'{"error":"body larger than 1048576 bytes"}')

    async def chunks(body: bytes) -> AsyncIterator[bytes]:
        for i in range(0, len(body), 65536):
            yield body[i : i + 65536]

    async def scenario() -> None:
        calc = InProcessCalc(config_for("v3", tmp_path))
        async with calc.running() as client:
            for body, expected in ((fits, (200, b'{"result":0}')), (over, too_large)):
                sized = await client.post("/sum", content=body)
                assert (sized.status_code, sized.content) == expected
                streamed = await client.post("/sum", content=chunks(body))
                assert "content-length" not in streamed.request.headers
                assert (streamed.status_code, streamed.content) == expected

    run(scenario())


def test_a_declared_length_over_the_limit_is_refused_before_reading(tmp_path: Path) -> None:
    """1. A request whose content-length says 2,000,000 bytes. 2. 413 at once: the app
    never asks for the body. 3. A content-length that is no number is not trusted: the
    body is read and summed."""

    async def scenario() -> None:
        calc = InProcessCalc(config_for("v3", tmp_path))
        declared = await calc.raw("POST", "/sum", [(b"content-length", b"2000000")])
        assert (declared.status, declared.receives) == (413, 0)
        assert declared.body == b'{"error":"body larger than 1048576 bytes"}'
        odd = await calc.raw(
            "POST",
            "/sum",
            [(b"content-length", b"25x")],
            [{"type": "http.request", "body": SUM}],
        )
        assert (odd.status, odd.body) == (200, b'{"result":10}')

    run(scenario())


def test_request_ids_are_kept_when_sane_else_generated(tmp_path: Path) -> None:
    """1. Sums with a sane x-request-id, one of 128 characters, one of 129, one with a
    space, none, and two ids in one request. 2. Sane ones come back as sent (the first
    of two); the others get a fresh 32-hex id each. 3. Outside a request the log's
    request id is '-' again."""
    long_ok, too_long = "a" * 128, "b" * 129

    async def scenario() -> None:
        calc = InProcessCalc(config_for("v3", tmp_path))
        async with calc.running() as client:

            async def rid(*ids: str) -> str:
                headers = [("x-request-id", i) for i in ids]
                response = await client.post("/sum", content=SUM, headers=headers)
                assert response.status_code == 200
                assert request_id_var.get() == "-"
                return response.headers["x-request-id"]

            assert await rid("req-42.a:b_C") == "req-42.a:b_C"
            assert await rid(long_ok) == long_ok
            assert await rid("first", "second") == "first"
            generated = [await rid(too_long), await rid("bad id"), await rid()]
            assert all(re.fullmatch(r"[0-9a-f]{32}", g) for g in generated), generated
            assert len(set(generated)) == 3

    run(scenario())


def point_ids(path: Path) -> list[str]:
    if not path.exists():
        return []
    return re.findall(r' id="([^"]*)"', path.read_text())


POINT = re.compile(
    r'^operation,name=sum,pod=pod-a,port=4000 id="rid-1",numbers=4\.0,result=10\.0 \d{19}$'
)


@pytest.mark.parametrize(
    ("profile", "changes", "written", "stopped", "flips"),
    [
        ("v1", {}, False, "0 operations recorded, 0 written, 0 lost, 0 left in the spool", False),
        ("v2", {}, False, "0 operations recorded, 0 written, 0 lost, 0 left in the spool", False),
        ("v3", {}, False, "0 operations recorded, 0 written, 0 lost, 0 left in the spool", False),
        ("v4", {}, False, "0 operations recorded, 0 written, 0 lost, 0 left in the spool", False),
        ("v5", {}, False, "0 operations recorded, 0 written, 0 lost, 0 left in the spool", False),
        ("v6", {}, False, "1 operations recorded, 0 written, 1 lost, 0 left in the spool", False),
        (
            "v7",
            {"task_delay": 0.05},
            True,
            "1 operations recorded, 1 written, 0 lost, 0 left in the spool",
            False,
        ),
        ("v8", {}, False, "1 operations recorded, 0 written, 1 lost, 0 left in the spool", False),
        ("v9", {}, True, "1 operations recorded, 1 written, 0 lost, 0 left in the spool", False),
        ("v10", {}, True, "1 operations recorded, 1 written, 0 lost, 0 left in the spool", True),
    ],
)
def test_each_profile_from_start_to_stop(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    profile: str,
    changes: dict[str, float],
    written: bool,
    stopped: str,
    flips: bool,
) -> None:
    """1. The profile in-process, writing to its line-protocol file. 2. /health and
    /ready answer 200; one sum with id rid-1. 3. SIGTERM is recorded: /ready turns 503
    "draining" only where the profile flips readiness (v10); /metrics says draining.
    4. The listener closes: /ready is 503 for every profile. 5. The lifespan ends:
    v7, v9 and v10 wrote the point (one line, the documented format), v6 and v8 lost
    it, v1..v5 log nothing; the stop line counts it so. Only v10 spools (a directory
    per pod and port)."""
    caplog.set_level(logging.INFO)
    calc = InProcessCalc(config_for(profile, tmp_path, **changes))
    spool = tmp_path / "spool" / "pod-a-4000"

    async def scenario() -> None:
        async with calc.running() as client:
            assert spool.is_dir() == (profile == "v10")
            health = await client.get("/health")
            assert (health.status_code, health.content) == (200, b'{"status":"healthy"}')
            assert health.headers["content-type"] == JSON
            ready = await client.get("/ready")
            assert (ready.status_code, ready.content) == (200, b'{"status":"ready"}')
            answer = await client.post("/sum", content=SUM, headers={"x-request-id": "rid-1"})
            assert (answer.status_code, answer.content) == (200, b'{"result":10}')
            calc.begin_shutdown()
            ready = await client.get("/ready")
            expected = (503, b'{"status":"draining"}') if flips else (200, b'{"status":"ready"}')
            assert (ready.status_code, ready.content) == expected
            assert ready.headers["content-type"] == JSON
            metrics = metrics_of((await client.get("/metrics")).text)
            assert metrics["calc_draining"] == 1
            calc.lifecycle.phase = Phase.CLOSING
            closing = await client.get("/ready")
            assert (closing.status_code, closing.content) == (503, b'{"status":"draining"}')
            calc.lifecycle.phase = Phase.APP_SHUTDOWN

    run(scenario())
    lines = (tmp_path / "operations.lp").read_text().splitlines() if written else []
    assert point_ids(tmp_path / "operations.lp") == (["rid-1"] if written else [])
    assert all(POINT.match(line) for line in lines), lines
    messages = [r.getMessage() for r in caplog.records if r.name == "calc"]
    assert messages[:2] == [f"App starting (profile {profile})", "App started"]
    assert messages[-2:] == ["App stopping", f"App stopped: {stopped}"]
    assert "Calculating sum" in messages
    if profile == "v10":
        spooling = [r.getMessage() for r in caplog.records if r.name == "calc.oplog"]
        assert spooling[0] == f"Spooling unwritten operations in {spool}"


METRICS_V9 = """\
# HELP calc_requests_total Responses sent, by HTTP status.
# TYPE calc_requests_total counter
calc_requests_total{status="200"} 1
calc_requests_total{status="422"} 2
# HELP calc_requests_in_flight Requests being handled now.
# TYPE calc_requests_in_flight gauge
calc_requests_in_flight 1
# HELP calc_draining 1 once shutdown began.
# TYPE calc_draining gauge
calc_draining 0
# HELP calc_operations_pending Operations recorded but not yet written.
# TYPE calc_operations_pending gauge
calc_operations_pending 1
# HELP calc_operations_written_total Operations written to the log.
# TYPE calc_operations_written_total counter
calc_operations_written_total 0
# HELP calc_operations_lost_total Operations that could not be written.
# TYPE calc_operations_lost_total counter
calc_operations_lost_total 0
# HELP calc_operations_lost_by_reason_total Operations lost, by reason.
# TYPE calc_operations_lost_by_reason_total counter
calc_operations_lost_by_reason_total{reason="buffer_full"} 0
calc_operations_lost_by_reason_total{reason="rejected"} 0
calc_operations_lost_by_reason_total{reason="write_failed"} 0
calc_operations_lost_by_reason_total{reason="shutdown"} 0
calc_operations_lost_by_reason_total{reason="closed"} 0
# HELP calc_operations_refused_total Operations not accepted (answered 503).
# TYPE calc_operations_refused_total counter
calc_operations_refused_total 0
# HELP calc_operations_spooled Operations left in the spool at shutdown.
# TYPE calc_operations_spooled gauge
calc_operations_spooled 0
"""


def test_metrics_are_prometheus_text_with_every_series(tmp_path: Path) -> None:
    """1. v9 in-process. 2. Two bad sums (422), then a good one (its point buffered).
    3. /metrics is Prometheus text 0.0.4: responses by status in status order, itself in
    flight, not draining, one pending, every loss reason at 0, HELP and TYPE for each."""

    async def scenario() -> None:
        calc = InProcessCalc(config_for("v9", tmp_path))
        async with calc.running() as client:
            await client.post("/sum", content=b"{}")
            await client.post("/sum", content=b"[]")
            await client.post("/sum", content=SUM)
            response = await client.get("/metrics")
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
            assert response.text == METRICS_V9

    run(scenario())


def test_task_mode_metrics_count_failed_writes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """1. v6 with no task delay, its log file path a directory (every write fails).
    2. Two sums answer 200; each task's write fails: logged as an error with the cause,
    and /metrics counts both lost as write_failed (task_cancelled 0)."""
    directory = tmp_path / "operations.lp"
    directory.mkdir()
    calc = InProcessCalc(config_for("v6", tmp_path, task_delay=0.0))

    async def scenario() -> None:
        async with calc.running() as client:
            for _ in range(2):
                assert (await client.post("/sum", content=SUM)).status_code == 200
            await until(lambda: calc.oplog.lost == 2, 5, "the failed writes")
            metrics = metrics_of((await client.get("/metrics")).text)
            assert metrics['calc_operations_lost_by_reason_total{reason="write_failed"}'] == 2
            assert metrics['calc_operations_lost_by_reason_total{reason="task_cancelled"}'] == 0
            assert metrics["calc_operations_lost_total"] == 2
            assert metrics["calc_operations_pending"] == 0

    with caplog.at_level(logging.INFO, logger="calc.oplog"):
        run(scenario())
    failed = "Writing 1 operations failed, 1 lost: IsADirectoryError(21, 'Is a directory')"
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "calc.oplog"]
    assert (
        sorted(lines)
        == [(logging.INFO, "Logging 1 operations")] * 2 + [(logging.ERROR, failed)] * 2
    )


def test_v6_task_writes_after_its_delay_while_serving(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """1. v6 with a 0.2 s task delay. 2. Two sums: their points are not in the file at
    once. 3. After the delay they are, each logged ("Logging 1 operations", then
    "Operations logged"), and counted written."""
    calc = InProcessCalc(config_for("v6", tmp_path, task_delay=0.2))
    path = tmp_path / "operations.lp"

    async def scenario() -> None:
        async with calc.running() as client:
            started = time.monotonic()
            for rid in ("late-1", "late-2"):
                await client.post("/sum", content=SUM, headers={"x-request-id": rid})
            assert point_ids(path) == []
            await until(lambda: len(point_ids(path)) == 2, 5, "the tasks' writes")
            assert time.monotonic() - started >= 0.2
            assert sorted(point_ids(path)) == ["late-1", "late-2"]
            metrics = metrics_of((await client.get("/metrics")).text)
            assert metrics["calc_operations_written_total"] == 2

    with caplog.at_level(logging.INFO, logger="calc.oplog"):
        run(scenario())
    messages = [r.getMessage() for r in caplog.records if r.name == "calc.oplog"]
    assert sorted(messages) == ["Logging 1 operations"] * 2 + ["Operations logged"] * 2


def test_a_waiting_task_is_named_after_its_request(tmp_path: Path) -> None:
    """1. v6 with a 5 s task delay. 2. A sum with id rid-7: while its point waits, the
    running tasks include one named oplog-rid-7 (so a dump of tasks says whose it is).
    3. At the end of the lifespan it is cancelled."""
    calc = InProcessCalc(config_for("v6", tmp_path, task_delay=5.0))

    async def scenario() -> None:
        async with calc.running() as client:
            await client.post("/sum", content=SUM, headers={"x-request-id": "rid-7"})
            assert "oplog-rid-7" in {task.get_name() for task in asyncio.all_tasks()}

    run(scenario())
    assert calc.oplog.lost_by_reason == {"task_cancelled": 1, "write_failed": 0}


def test_v7_waits_for_tasks_at_most_its_task_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """1. v7 with a 5 s task delay and a 0.3 s task timeout. 2. A sum, then the lifespan
    ends. 3. It waited about 0.3 s (not 5), then cancelled the task: counted lost as
    task_cancelled, logged."""
    calc = InProcessCalc(config_for("v7", tmp_path, task_delay=5.0, task_timeout=0.3))
    took: list[float] = []

    async def scenario() -> None:
        async with calc.running() as client:
            await client.post("/sum", content=SUM)
            started = time.monotonic()
        took.append(time.monotonic() - started)

    with caplog.at_level(logging.INFO):
        run(scenario())
    assert 0.3 <= took[0] < 2.0, took
    assert "Waiting for 1 operation-log task(s), at most 0.3 s" in caplog.text
    assert "Cancelled 1 operation-log task(s)" in caplog.text
    assert calc.oplog.lost_by_reason == {"task_cancelled": 1, "write_failed": 0}


def test_batches_are_written_by_size_and_by_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """1. v8 with batches of 2 every 30 s. 2. Three sums: two points are written at once
    as one batch, the third waits. 3. The lifespan ends: v8 drops it, counted and logged.
    4. v9 with a 0.1 s interval: a single sum is written within the interval."""
    v8 = InProcessCalc(config_for("v8", tmp_path, batch_size=2))
    path = tmp_path / "operations.lp"

    async def batch_of_two() -> None:
        async with v8.running() as client:
            for i in range(3):
                await client.post("/sum", content=SUM, headers={"x-request-id": f"b{i}"})
            await until(lambda: point_ids(path) == ["b0", "b1"], 5, "a batch of 2")
            assert v8.oplog.pending == 1

    with caplog.at_level(logging.INFO):
        run(batch_of_two())
    assert "Logging 2 operations" in caplog.text
    assert "Lost 1 operations (shutdown: writer does not flush on shutdown)" in caplog.text
    assert v8.oplog.lost_by_reason["shutdown"] == 1

    path.unlink()
    v9 = InProcessCalc(config_for("v9", tmp_path, batch_interval=0.1))

    async def on_interval() -> None:
        async with v9.running() as client:
            await client.post("/sum", content=SUM, headers={"x-request-id": "tick"})
            await until(lambda: point_ids(path) == ["tick"], 5, "the interval's write")

    run(on_interval())


def test_v9_loses_a_batch_whose_one_write_fails_and_v10_retries_it(tmp_path: Path) -> None:
    """1. v9 and v10 with batches of 1, their log file path a directory (every write
    fails). 2. A sum each. 3. v9 tries once and counts the point lost (write_failed);
    v10 keeps it to retry (pending, nothing lost)."""
    (tmp_path / "operations.lp").mkdir()

    async def scenario(profile: str) -> InProcessCalc:
        calc = InProcessCalc(config_for(profile, tmp_path, batch_size=1, flush_timeout=0.2))
        async with calc.running() as client:
            await client.post("/sum", content=SUM)
            await until(lambda: calc.oplog.writer.failed_writes >= 1, 5, "a failed write")
            metrics = metrics_of((await client.get("/metrics")).text)
            failed = metrics['calc_operations_lost_by_reason_total{reason="write_failed"}']
            assert (failed, metrics["calc_operations_pending"]) == (
                (1, 0) if profile == "v9" else (0, 1)
            )
        return calc

    asyncio.run(scenario("v9"))
    asyncio.run(scenario("v10"))


def test_v8_cuts_a_write_under_way_at_shutdown(tmp_path: Path) -> None:
    """1. v8 with batches of 1, writing to a fake InfluxDB that answers after 1 s.
    2. A sum; its write is under way. 3. The lifespan ends at once (v8 waits 0 s): the
    write is cut and the point counted lost at shutdown, none written."""
    with FakeInflux() as influx:
        influx.slow(1.0)
        config = config_for("v8", tmp_path, batch_size=1, influxdb_base_url=influx.url)
        calc = InProcessCalc(config)
        took: list[float] = []

        async def scenario() -> None:
            async with calc.running() as client:
                await client.post("/sum", content=SUM)
                await until(lambda: influx.writes == 1, 5, "the write under way")
                started = time.monotonic()
            took.append(time.monotonic() - started)

        run(scenario())
    assert (calc.oplog.written, calc.oplog.lost_by_reason["shutdown"]) == (0, 1)
    assert took[0] < 0.9, took


def test_a_full_buffer_loses_points_counted_and_the_spool_keeps_the_rest(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """1. v10 with batches of 1, a buffer of 1, a log file that cannot be written (a
    directory) and a 0.3 s flush timeout. 2. Two sums answer 200: the first is held, the
    second is lost as buffer_full (in /metrics). 3. The lifespan ends: the flush cannot
    write, so the held point is left in the spool, and the stop line says so."""
    (tmp_path / "operations.lp").mkdir()
    config = config_for("v10", tmp_path, batch_size=1, max_buffer=1, flush_timeout=0.3)
    calc = InProcessCalc(config)

    async def scenario() -> None:
        async with calc.running() as client:
            for _ in range(2):
                assert (await client.post("/sum", content=SUM)).status_code == 200
            metrics = metrics_of((await client.get("/metrics")).text)
            assert metrics['calc_operations_lost_by_reason_total{reason="buffer_full"}'] == 1
            assert metrics["calc_operations_pending"] == 1

    with caplog.at_level(logging.INFO):
        run(scenario())
    assert calc.oplog.spooled == 1
    assert "App stopped: 2 operations recorded, 0 written, 1 lost, 1 left in the spool" in (
        caplog.text
    )


def test_a_point_the_spool_cannot_store_gets_503(tmp_path: Path) -> None:
    """1. v10 whose spool's next segment is a link to /dev/full (ENOSPC). 2. A sum gets
    503 with a JSON error naming the cause; /metrics counts it refused and the 503.
    3. The next sum gets 200 and its point is kept."""
    calc = InProcessCalc(config_for("v10", tmp_path))
    (tmp_path / "spool" / "pod-a-4000" / "000000000001.spool").symlink_to("/dev/full")

    async def scenario() -> None:
        async with calc.running() as client:
            refused = await client.post("/sum", content=SUM)
            assert refused.status_code == 503
            assert refused.json() == {
                "error": "operation not recorded: not accepted: the journal cannot store it "
                "([Errno 28] No space left on device)"
            }
            metrics = metrics_of((await client.get("/metrics")).text)
            assert metrics["calc_operations_refused_total"] == 1
            assert metrics['calc_requests_total{status="503"}'] == 1
            assert metrics["calc_operations_pending"] == 0
            assert (await client.post("/sum", content=SUM)).status_code == 200
            assert calc.oplog.pending == 1

    run(scenario())
    assert calc.oplog.written == 1


def test_a_client_gone_before_its_body_is_counted_499_and_nothing_recorded(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """1. v9. 2. A POST /sum whose client disconnects before sending its body. 3. Nothing
    is computed or recorded; it is counted as 499 and logged."""
    calc = InProcessCalc(config_for("v9", tmp_path))

    async def scenario() -> None:
        with caplog.at_level(logging.INFO, logger="calc"):
            gone = await calc.raw("POST", "/sum", [(b"content-length", b"25")], [])
        assert gone.status == 499
        metrics = await calc.raw("GET", "/metrics")
        assert b'calc_requests_total{status="499"} 1\n' in metrics.body

    run(scenario())
    assert calc.oplog.recorded == 0
    assert [r.getMessage() for r in caplog.records] == [
        "Client went away before its body arrived: nothing computed"
    ]


def test_a_request_cut_before_answering_counts_as_500(tmp_path: Path) -> None:
    """1. v3 with 5 s of slow math. 2. A sum starts; it is cancelled mid-way, as a drain
    that gives up cancels it. 3. /metrics counts it as a 500 and nothing in flight."""

    async def scenario() -> None:
        calc = InProcessCalc(config_for("v3", tmp_path, slow_math=5.0))
        async with calc.running() as client:
            request = asyncio.get_running_loop().create_task(client.post("/sum", content=SUM))
            await until(lambda: calc.lifecycle.in_flight == 1, 5, "the sum in flight")
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
            metrics = metrics_of((await client.get("/metrics")).text)
            assert metrics['calc_requests_total{status="500"}'] == 1
            assert metrics["calc_requests_in_flight"] == 1  # the /metrics request only

    run(scenario())


def test_slow_math_delays_each_sum_without_blocking(tmp_path: Path) -> None:
    """1. v3 with 0.3 s of slow math. 2. Three sums at once: each takes at least 0.3 s,
    all three together well under 0.9 s (the delay does not block the loop)."""

    async def scenario() -> None:
        calc = InProcessCalc(config_for("v3", tmp_path, slow_math=0.3))
        async with calc.running() as client:
            started = time.monotonic()
            answers = await asyncio.gather(*(client.post("/sum", content=SUM) for _ in range(3)))
            took = time.monotonic() - started
        assert [a.status_code for a in answers] == [200] * 3
        assert 0.3 <= took < 0.85, took

    run(scenario())


def test_unknown_paths_and_methods_get_json_errors(tmp_path: Path) -> None:
    """1. GET /nope and GET /sum. 2. 404 and 405 as JSON errors like every other, the
    405 with its Allow header."""

    async def scenario() -> None:
        calc = InProcessCalc(config_for("v3", tmp_path))
        async with calc.running() as client:
            missing = await client.get("/nope")
            assert (missing.status_code, missing.content) == (404, b'{"error":"not found"}')
            wrong = await client.get("/sum")
            assert (wrong.status_code, wrong.content) == (405, b'{"error":"method not allowed"}')
            assert wrong.headers["allow"] == "POST"
            assert wrong.headers["content-type"] == JSON

    run(scenario())


def test_openapi_document_is_served_and_states_every_answer(tmp_path: Path) -> None:
    """1. GET /openapi.json. 2. The document, as JSON; every response has a description
    and, where it has a body, its media type and schema."""

    async def scenario() -> None:
        calc = InProcessCalc(config_for("v3", tmp_path))
        async with calc.running() as client:
            response = await client.get("/openapi.json")
        assert response.status_code == 200
        assert response.headers["content-type"] == JSON
        assert response.json() == OPENAPI

    run(scenario())
    ready = OPENAPI["paths"]["/ready"]["get"]["responses"]
    status_schema = {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string"}},
    }
    assert ready["503"] == {
        "description": "draining",
        "content": {"application/json": {"schema": status_schema}},
    }
    assert _json("ready", status_schema) == {
        "description": "ready",
        "content": {"application/json": {"schema": status_schema}},
    }
    for path in OPENAPI["paths"].values():
        for operation in path.values():
            for answer in operation["responses"].values():
                assert answer["description"]
                for media in answer["content"].values():
                    assert "schema" in media
