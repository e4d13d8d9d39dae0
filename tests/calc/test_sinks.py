"""Every InfluxDB answer, against a scripted fake InfluxDB on loopback, through the real
InfluxSink and BatchWriter; and the file sink when a write outlives its timeout."""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from calc.points import PointFormatter
from calc.sinks import FileSink, InfluxSink, rejected_count
from graceful import BatchWriter, RetryPolicy
from tests.fake_influx import FakeInflux
from tests.graceful.test_tasks_and_batcher import eventually

RETRY = RetryPolicy(initial=0.2, maximum=0.2)


@pytest.fixture
def influx() -> Iterator[FakeInflux]:
    with FakeInflux() as fake:
        yield fake


def points(n: int, prefix: str = "r") -> list[str]:
    formatter = PointFormatter("pod-a")
    return [formatter.sum_point(f"{prefix}{i}", 2, 3.0) for i in range(n)]


def run_writer(
    influx: FakeInflux,
    lines: list[str],
    *,
    recover_after: float | None = None,
    close_within: float = 5.0,
    write_timeout: float = 2.0,
) -> tuple[BatchWriter[str], float]:
    """Add `lines` to a started writer (batches of 10, retry every 0.2 s) on InfluxSink;
    after `recover_after` s the fake is up again; wait until the buffer is empty or the
    time is up, then close. Returns the writer and how long until it was empty."""

    async def scenario() -> tuple[BatchWriter[str], float]:
        sink = InfluxSink(influx.url, "calc", timeout=1.0)
        writer = BatchWriter(
            sink.write,
            name="operations",
            max_batch=10,
            interval=30,
            retry=RETRY,
            write_timeout=write_timeout,
        )
        writer.start()
        started = time.monotonic()
        try:
            for line in lines:
                writer.add(line)
            if recover_after is not None:
                await asyncio.sleep(recover_after)
                influx.up()
            await eventually(lambda: writer.pending == 0, close_within)
            return writer, time.monotonic() - started
        finally:
            await writer.close(close_within)
            await sink.aclose()

    return asyncio.run(scenario())


@pytest.mark.parametrize("status", [204, 200, 201])
def test_any_2xx_is_written(influx: FakeInflux, status: int) -> None:
    """1. The fake answers `status` to every write. 2. 10 points: all counted written."""
    influx.status(status, '{"results":[]}' if status == 200 else "")
    writer, _ = run_writer(influx, points(10))
    assert (writer.written, writer.lost, writer.failed_writes) == (10, 0, 0)
    assert influx.writes == 1


def test_400_partial_write_loses_the_dropped_lines_only(influx: FakeInflux) -> None:
    """1. The fake stores 8 of 10 and answers 400 `partial write: ... dropped=2`. 2. 2
    counted lost (rejected), 8 written, no retry."""
    influx.status(400, '{"error":"partial write: field type conflict: ... dropped=2"}', store=8)
    writer, _ = run_writer(influx, points(10))
    assert (writer.written, writer.lost, dict(writer.losses.totals)) == (8, 2, {"rejected": 2})
    assert influx.writes == 1


def test_400_unparseable_lines_are_counted_lost_though_influxdb_says_dropped_0(
    influx: FakeInflux,
) -> None:
    """InfluxDB 1.6's own answer for 2 unparseable lines in a batch: `partial write:
    unable to parse '...': ...\\nunable to parse '...': ... dropped=0`. 1. The fake
    answers that. 2. 2 counted lost, 8 written."""
    body = (
        '{"error":"partial write: unable to parse \'x\': invalid field format\\n'
        "unable to parse 'y': invalid field format dropped=0\"}"
    )
    influx.status(400, body, store=8)
    writer, _ = run_writer(influx, points(10))
    assert (writer.written, writer.lost) == (8, 2)


def test_400_that_is_no_partial_write_loses_the_batch(influx: FakeInflux) -> None:
    """1. A 400 with no `partial write` (InfluxDB refused the whole request). 2. All 10
    counted lost and logged, no retry."""
    influx.status(400, '{"error":"bad timestamp"}')
    writer, _ = run_writer(influx, points(10))
    assert (writer.written, writer.lost, influx.writes) == (0, 10, 1)


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (401, '{"error":"authorization failed"}'),
        (403, '{"error":"forbidden"}'),
        (404, '{"error":"database not found: \\"calc\\""}'),
    ],
)
def test_configuration_errors_hold_the_points_without_spinning(
    influx: FakeInflux, status: int, body: str, caplog: pytest.LogCaptureFixture
) -> None:
    """1. The fake answers `status` (wrong credentials, no such database) for 1 s.
    2. The points are held, not dropped; the writer tries about once per 0.2 s pause
    (never in a loop) and logs an error each time. 3. The fake is fixed: every point is
    written, none lost."""
    influx.status(status, body)
    with caplog.at_level("ERROR", logger="graceful.batcher"):
        writer, _ = run_writer(influx, points(10), recover_after=1.0)
    assert (writer.written, writer.lost) == (10, 0)
    assert 3 <= influx.writes <= 12
    assert caplog.text.count("fix the configuration") == influx.writes - 1
    assert f"InfluxDB answered {status}" in caplog.text


def test_413_splits_the_batch(influx: FakeInflux, caplog: pytest.LogCaptureFixture) -> None:
    """1. The fake answers 413 to the first write. 2. The batch of 10 is split: two
    writes of 5, at once (not a failure: no backoff pause), all written."""
    influx.script([(413, '{"error":"Request Entity Too Large"}')])
    with caplog.at_level("INFO", logger="graceful.batcher"):
        writer, _ = run_writer(influx, points(10))
    assert (writer.written, writer.lost, influx.writes) == (10, 0, 3)
    assert writer.failed_writes == 0
    assert "too large for one write" in caplog.text
    assert "will retry" not in caplog.text


@pytest.mark.parametrize("status", [500, 503, 408, 429])
def test_server_errors_are_retried_with_backoff(influx: FakeInflux, status: int) -> None:
    """1. The fake answers `status` for 0.7 s. 2. Retried once per pause (0.1-0.2 s), then
    written; none lost."""
    influx.status(status, '{"error":"engine: timeout"}')
    writer, _ = run_writer(influx, points(10), recover_after=0.7)
    assert (writer.written, writer.lost) == (10, 0)
    assert 2 <= influx.writes <= 9


def test_a_stalled_influxdb_times_out_and_is_retried(influx: FakeInflux) -> None:
    """1. The fake reads writes but never answers, for 1.2 s; the write timeout is
    0.3 s. 2. Each try times out and is retried after a pause. 3. The fake answers
    again: every point stored, none lost."""
    influx.stall()
    writer, _ = run_writer(influx, points(10), recover_after=1.2, write_timeout=0.3)
    assert (writer.written, writer.lost) == (10, 0)
    assert writer.failed_writes >= 2
    assert sorted(set(influx.stored_ids())) == sorted(f"r{i}" for i in range(10))


def test_a_refused_connection_is_retried_until_influxdb_listens_again(
    influx: FakeInflux,
) -> None:
    """1. The fake stops listening (connection refused) for 1 s. 2. Retried once per
    pause. 3. It listens again on the same port: every point written once."""
    influx.refuse()
    writer, _ = run_writer(influx, points(10), recover_after=1.0)
    assert (writer.written, writer.lost) == (10, 0)
    assert writer.failed_writes >= 2
    assert sorted(influx.stored_ids()) == sorted(f"r{i}" for i in range(10))


def test_rejected_count_reads_influxdb_answers() -> None:
    assert rejected_count('{"error":"partial write: x dropped=3"}', 10) == 3
    assert rejected_count('{"error":"unable to parse \'a\': bad"}', 1) == 1
    assert rejected_count("not json at all", 4) == 4
    assert rejected_count('{"error":"partial write: dropped=99"}', 5) == 5


def test_the_file_sink_writes_once_when_a_write_outlives_its_timeout(tmp_path: Path) -> None:
    """Case 9: 1. The sink's file is a FIFO with no reader, so the write thread blocks in
    open(). 2. The writer's timeout (0.2 s) cancels the write and retries after a pause
    while the thread is still blocked. 3. After 1 s a reader opens the FIFO. 4. It reads
    exactly the 2 lines, once; the writer counts 2 written, 0 lost."""
    fifo = tmp_path / "operations.lp"
    os.mkfifo(fifo)
    received: list[bytes] = []

    def read_after(delay: float) -> None:
        time.sleep(delay)
        with fifo.open("rb") as f:
            received.append(f.read())

    reader = threading.Thread(target=read_after, args=(1.0,))
    reader.start()

    async def scenario() -> BatchWriter[str]:
        sink = FileSink(fifo)
        writer = BatchWriter(
            sink.write, max_batch=2, interval=30, write_timeout=0.2, retry=RetryPolicy(0.1, 0.2)
        )
        writer.start()
        writer.add("line one")
        writer.add("line two")
        await eventually(lambda: writer.written == 2, 5)
        await writer.close(2)
        return writer

    try:
        writer = asyncio.run(scenario())
    finally:
        if reader.is_alive():  # never leave the thread blocked on the FIFO
            with open(fifo, "wb"):
                pass
        reader.join(5)
    assert received == [b"line one\nline two\n"]
    assert (writer.written, writer.lost) == (2, 0)
    assert writer.failed_writes >= 1


HUNG_SCRIPT = """
import asyncio, sys
from calc.sinks import FileSink
from graceful import BatchWriter
async def main():
    writer = BatchWriter(FileSink(sys.argv[1]).write, interval=30, write_timeout=0.2)
    writer.add("never read")
    print("lost", await writer.close(1.0))
asyncio.run(main())
"""


def test_a_hung_file_write_does_not_hold_the_exit(tmp_path: Path) -> None:
    """1. A process whose file sink writes to a FIFO nobody opens: the write thread hangs
    in open() for good. 2. close(1) gives up at its deadline and counts the point lost.
    3. The process exits at once after, although the thread still hangs."""
    fifo = tmp_path / "operations.lp"
    os.mkfifo(fifo)
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", HUNG_SCRIPT, str(fifo)], capture_output=True, text=True, timeout=20
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["lost", "1"]
    assert time.monotonic() - started < 10


FSIZE_SCRIPT = """
import asyncio, resource, signal, sys
from calc.sinks import FileSink
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))
sink = FileSink(sys.argv[1])
async def main():
    await sink.write(["first"])
    try:
        await sink.write(["x" * 60, "y" * 60])
    except OSError as exc:
        print("failed", exc.errno)
    await sink.write(["last"])
asyncio.run(main())
"""


def test_the_file_sink_cuts_back_a_failed_write(tmp_path: Path) -> None:
    """A real EFBIG from the kernel: 1. A process whose file size limit is 100 bytes
    writes a line, then a batch of 122 bytes: the kernel takes part of it, then refuses.
    2. The sink cuts the file back to its last whole line and raises. 3. The next line
    follows whole: the file holds 'first' and 'last', nothing torn."""
    path = tmp_path / "operations.lp"
    done = subprocess.run(
        [sys.executable, "-c", FSIZE_SCRIPT, str(path)], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["failed", str(errno.EFBIG)]
    assert path.read_text() == "first\nlast\n"
