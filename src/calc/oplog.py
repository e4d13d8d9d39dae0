"""The operation log: one point per successful sum, written the way the profile says.

off            nothing is written
task           (v6) a task per sum sleeps, then writes; cut at shutdown
task-graceful  (v7) the same, tasks awaited at shutdown up to task_timeout
batch          (v8) points buffered, written by size or interval; buffer dropped at shutdown
batch-graceful (v9, v10) the buffer is flushed at shutdown (v10 retries within the budget)

Every loss is counted by reason (`lost_by_reason`, exported in /metrics) and logged.
`record` raises `NotAccepted` when the spool cannot store the point (disk full): the
request must then fail, since the point would be neither written nor counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path

from calc.config import CalcConfig, Secret
from calc.points import PointFormatter, point_problem
from calc.sinks import FileSink, InfluxSink, Sink
from graceful import BatchWriter, RetryPolicy, Spool, TaskRegistry
from graceful.losses import REASONS

#: Reasons of the task modes (v6, v7), besides the writer's (graceful.losses).
TASK_CANCELLED = "task_cancelled"
TASK_REASONS = (TASK_CANCELLED, "write_failed")

logger = logging.getLogger("calc.oplog")


def influx_auth(config: CalcConfig) -> tuple[str, Secret] | None:
    if config.influxdb_username and config.influxdb_password:
        return config.influxdb_username, config.influxdb_password
    return None


def make_sink(config: CalcConfig) -> FileSink | InfluxSink:
    if config.influxdb_base_url:
        return InfluxSink(config.influxdb_base_url, config.influxdb_db, auth=influx_auth(config))
    return FileSink(config.oplog_file)


class OperationLog:
    def __init__(self, config: CalcConfig, sink: Sink) -> None:
        self.mode = config.oplog
        self.sink = sink
        self.task_delay = config.task_delay
        self.points = PointFormatter(config.pod, config.port)
        self._task_written = 0
        self._task_lost: Counter[str] = Counter()
        self.tasks = TaskRegistry("operation-log", await_on_shutdown=self.mode == "task-graceful")
        self.writer: BatchWriter[str] = BatchWriter(
            sink.write,
            name="operations",
            max_batch=config.batch_size,
            interval=config.batch_interval,
            max_buffer=config.max_buffer,
            retry=RetryPolicy() if config.flush_retries else None,
            flush_on_shutdown=self.mode == "batch-graceful",
            journal=self._spool(config),
        )
        self.recorded = self.writer.recovered
        self.shutdown_limit = {
            "off": 0.0,
            "task": 0.0,
            "task-graceful": config.task_timeout,
            "batch": 0.0,
            "batch-graceful": config.flush_timeout,
        }[self.mode]

    def _spool(self, config: CalcConfig) -> Spool | None:
        if not (config.spool and self.mode.startswith("batch")):
            return None
        # Per pod and port: one spool per process, found again by the same pod's next start.
        directory = Path(config.spool_dir) / f"{config.pod}-{config.port}"
        logger.info("Spooling unwritten operations in %s", directory)
        # A line that is not a point (a damaged segment) is set aside, never written.
        return Spool(directory, check=point_problem)

    def start(self) -> None:
        if self.mode.startswith("batch"):
            self.writer.start()

    def record(self, request_id: str, count: int, result: float) -> None:
        """Take one operation; raises NotAccepted when it cannot be kept."""
        if self.mode == "off":
            return
        line = self.points.sum_point(request_id, count, result)
        if self.mode.startswith("task"):
            self.tasks.spawn(self._write_later(line), name=f"oplog-{request_id}")
        else:
            # Raises NotAccepted before counting: a refused operation is not recorded.
            self.writer.add(line)
        self.recorded += 1

    async def _write_later(self, line: str) -> None:
        await asyncio.sleep(self.task_delay)
        logger.info("Logging 1 operations")
        try:
            await self.sink.write([line])
        except Exception as exc:
            self._task_lost["write_failed"] += 1
            logger.error("Writing 1 operations failed, 1 lost: %r", exc)
        else:
            self._task_written += 1
            logger.info("Operations logged")

    async def close(self, timeout: float | None) -> None:
        """Finish (or, per mode, drop) pending work within `timeout`, then close the sink."""
        try:
            if self.mode.startswith("task"):
                self._task_lost[TASK_CANCELLED] += await self.tasks.shutdown(timeout)
            elif self.mode.startswith("batch"):
                await self.writer.close(timeout)
        finally:
            await self.sink.aclose()

    @property
    def written(self) -> int:
        return self._task_written + self.writer.written

    @property
    def lost(self) -> int:
        return sum(self._task_lost.values()) + self.writer.lost

    @property
    def lost_by_reason(self) -> dict[str, int]:
        """Every reason this mode can lose for, counted from 0."""
        if self.mode.startswith("task"):
            return {reason: self._task_lost[reason] for reason in TASK_REASONS}
        return {reason: self.writer.losses.totals[reason] for reason in REASONS}

    @property
    def refused(self) -> int:
        """Operations not accepted (the spool could not store them): their requests failed."""
        return self.writer.refused

    @property
    def spooled(self) -> int:
        """Left in the spool at shutdown: lost unless this pod's next container starts."""
        return self.writer.left_in_journal

    @property
    def pending(self) -> int:
        return max(0, self.recorded - self.written - self.lost - self.spooled)
