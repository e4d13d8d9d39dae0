"""The batching writer during an outage under load, and against a configuration error.

1. outage: a sink that refuses every write, backoff from 1 s, 100 points/s for 3 s into
   a spooled writer (batches of 10): how many write attempts, how many spool files.
2. 404: the real InfluxSink against a fake InfluxDB answering `database not found`,
   100 points/s for 10 s, default backoff (0.1 s doubling to 5 s): how many writes.

    .venv/bin/python bench/writer_faults.py
"""

from __future__ import annotations

import asyncio
import logging
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from calc.points import PointFormatter
from calc.sinks import InfluxSink
from graceful import BatchWriter, RetryPolicy, Spool
from tests.fake_influx import FakeInflux


def spool_files(directory: Path) -> int:
    return len(list(directory.glob("*.spool")))


async def outage(directory: Path) -> str:
    attempts = 0

    async def down(items: Sequence[str]) -> None:
        nonlocal attempts
        attempts += 1
        raise ConnectionError("refused")

    writer = BatchWriter(
        down,
        max_batch=10,
        interval=30,
        retry=RetryPolicy(initial=1.0, maximum=8.0),
        journal=Spool(directory),
    )
    writer.start()
    most = 0
    started = time.monotonic()
    for i in range(300):
        writer.add(f"p{i}")
        most = max(most, spool_files(directory))
        await asyncio.sleep(max(0.0, started + (i + 1) / 100 - time.monotonic()))
    took = time.monotonic() - started
    await writer.close(0)
    return (
        f"outage: 300 points in {took:.1f} s, {attempts} write attempts, at most {most} spool files"
    )


async def not_found() -> str:
    with FakeInflux() as influx:
        influx.status(404, '{"error":"database not found: \\"calc\\""}')
        sink = InfluxSink(influx.url, "calc")
        writer = BatchWriter(sink.write, interval=30, retry=RetryPolicy())
        writer.start()
        points = PointFormatter("bench")
        started = time.monotonic()
        for i in range(1000):
            writer.add(points.sum_point(f"r{i}", 1, 1.0))
            await asyncio.sleep(max(0.0, started + (i + 1) / 100 - time.monotonic()))
        took = time.monotonic() - started
        result = f"404: {took:.1f} s at 100 points/s, {influx.writes} writes, {writer.lost} lost, {writer.pending} held"
        await writer.close(0)
        await sink.aclose()
    return result


def main() -> None:
    logging.basicConfig(level=logging.CRITICAL)
    with tempfile.TemporaryDirectory(prefix="writer-outage-") as directory:
        print(asyncio.run(outage(Path(directory))))
    print(asyncio.run(not_found()))


if __name__ == "__main__":
    main()
