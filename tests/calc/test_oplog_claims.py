"""The operation log's promises in docs/calc.md: strictly increasing timestamps, a retried
write stored once, and the talk's batches of 500 in v8 and v9. Real `calc serve`
processes and a real InfluxDB."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from calc.points import NanoClock, PointFormatter
from calc.sinks import InfluxSink
from lab.influx import InfluxServer
from tests.calc_support import CalcProcess, StartCalc
from tests.support import wait_until


def _timestamp(line: str) -> int:
    return int(line.rsplit(" ", 1)[1])


def send_many(calc: CalcProcess, prefix: str, n: int, concurrency: int = 50) -> None:
    """n /sum requests, `concurrency` at a time, ids prefix-0 .. prefix-(n-1); all 200."""

    async def run() -> list[int]:
        limit = asyncio.Semaphore(concurrency)
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(base_url=calc.url, timeout=20, limits=limits) as client:

            async def one(i: int) -> int:
                async with limit:
                    response = await client.post(
                        "/sum", json={"numbers": [1, 2]}, headers={"x-request-id": f"{prefix}-{i}"}
                    )
                    return response.status_code

            return await asyncio.gather(*(one(i) for i in range(n)))

    statuses = asyncio.run(run())
    assert statuses == [200] * n, {s: statuses.count(s) for s in set(statuses)}


def test_timestamps_increase_even_when_the_wall_clock_repeats_or_steps_back() -> None:
    """1. A wall clock that repeats a value and then steps back, as clock_gettime does
    after an NTP step. 2. Five points. 3. Their timestamps strictly increase, one
    nanosecond past the last while the clock does not advance."""
    readings = iter([1_000, 1_000, 400, 999, 5_000])
    formatter = PointFormatter("pod-a", clock=NanoClock(source=lambda: next(readings)))
    stamps = [_timestamp(formatter.sum_point(f"r{i}", 1, 1.0)) for i in range(5)]
    assert stamps == [1_000, 1_001, 1_002, 1_003, 5_000]


def test_concurrent_sums_get_strictly_increasing_timestamps(
    start_calc: StartCalc, tmp_path: Path
) -> None:
    """1. v10 writing to its line-protocol file every 0.2 s. 2. 300 sums, 50 at a time.
    3. The file has 300 points, one per request id, their timestamps strictly
    increasing in the order they were written."""
    calc = start_calc("v10", CALC_SLOW_MATH="0", CALC_BATCH_INTERVAL="0.2")
    send_many(calc, "ts", 300)
    oplog = tmp_path / "operations.lp"
    wait_until(
        lambda: oplog.exists() and len(oplog.read_text().splitlines()) == 300, 10, what="300 points"
    )
    lines = oplog.read_text().splitlines()
    stamps = [_timestamp(line) for line in lines]
    assert all(a < b for a, b in itertools.pairwise(stamps))
    assert {line.split('id="', 1)[1].split('"', 1)[0] for line in lines} == {
        f"ts-{i}" for i in range(300)
    }
    calc.terminate()
    assert calc.wait_exit(10) == 0


class AnswerLosingProxy:
    """An HTTP proxy in front of InfluxDB's /write that forwards the first write and then
    drops its answer (closes the connection without a response), as a timeout or a reset
    after the database stored the batch would; later writes are answered normally."""

    def __init__(self, influx_url: str) -> None:
        self.bodies: list[bytes] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                proxy.bodies.append(body)
                answer = httpx.post(f"{influx_url}{self.path}", content=body, timeout=10)
                if len(proxy.bodies) == 1:
                    self.close_connection = True  # stored, but the writer never hears it
                    return
                self.send_response(answer.status_code)
                self.send_header("content-length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}
        )

    def __enter__(self) -> AnswerLosingProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def losing_proxy(influx_server: InfluxServer) -> Iterator[AnswerLosingProxy]:
    with AnswerLosingProxy(influx_server.url) as proxy:
        yield proxy


def test_a_retried_write_is_stored_once(
    start_calc: StartCalc,
    influx_server: InfluxServer,
    influx_db: str,
    losing_proxy: AnswerLosingProxy,
) -> None:
    """1. v10 writes through a proxy that lets InfluxDB store the first batch but loses
    its answer. 2. 20 sums; the writer sees the write fail and retries it.
    3. The same bytes went to InfluxDB twice, and InfluxDB holds each of the 20 points
    once: the retry overwrote itself (same series, same timestamp)."""
    calc = start_calc(
        "v10",
        INFLUXDB_BASE_URL=losing_proxy.url,
        INFLUXDB_DB=influx_db,
        CALC_SLOW_MATH="0",
        CALC_BATCH_SIZE="20",
    )
    send_many(calc, "once", 20)
    wait_until(lambda: calc.metric("calc_operations_written_total") == 20, 15, what="written")
    assert "Writing 20 operations failed" in calc.log and "will retry" in calc.log
    assert len(losing_proxy.bodies) == 2 and losing_proxy.bodies[0] == losing_proxy.bodies[1]
    ids = [str(v) for v in influx_server.field_values(influx_db, "operation", "id")]
    assert sorted(ids) == sorted(f"once-{i}" for i in range(20))
    assert InfluxSink(influx_server.url, influx_db).count() == 20
    calc.terminate()
    assert calc.wait_exit(10) == 0


@pytest.mark.parametrize(
    ("profile", "at_shutdown", "stored"),
    [
        ("v8", "Lost 200 operations (shutdown: writer does not flush on shutdown)", 1000),
        ("v9", "Logging 200 operations", 1200),
    ],
)
def test_v8_and_v9_write_batches_of_500(
    start_calc: StartCalc,
    influx_server: InfluxServer,
    influx_db: str,
    profile: str,
    at_shutdown: str,
    stored: int,
) -> None:
    """1. v8 or v9 (batches of 500, every 30 s) writing to a real InfluxDB. 2. 1,200 sums.
    3. Two full batches are written at once, 500 points each, and 200 wait (pending).
    4. SIGTERM: v8 drops the 200 (counted and logged), v9 writes them in one last batch."""
    # The profile's 30 s timer made long: on a loaded machine 1,200 sums can take longer,
    # and a timed write of what came so far is not what this test is about.
    calc = start_calc(
        profile,
        INFLUXDB_BASE_URL=influx_server.url,
        INFLUXDB_DB=influx_db,
        CALC_SLOW_MATH="0",
        CALC_BATCH_INTERVAL="600",
    )
    send_many(calc, profile, 1200)
    sink = InfluxSink(influx_server.url, influx_db)
    try:
        wait_until(lambda: sink.count() == 1000, 15, what="two batches of 500")
    except AssertionError as exc:
        writes = [line for line in calc.log.splitlines() if "Calculating" not in line]
        raise AssertionError(f"{exc}; stored {sink.count()}; log: {writes[-20:]}") from None
    assert calc.log.count("Logging 500 operations") == 2
    assert "Logging 200 operations" not in calc.log
    assert calc.metric("calc_operations_pending") == 200
    calc.terminate()
    assert calc.wait_exit(15) == 0
    assert at_shutdown in calc.log
    assert sink.count() == stored
