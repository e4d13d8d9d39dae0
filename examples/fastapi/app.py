"""A FastAPI service that drops nothing on a rollout, written the way FastAPI's docs teach.

    POST /sum {"numbers": [1, 2, 3]} -> {"result": 6}, after 100 ms; 1 s later (LOG_DELAY)
    a background task logs the operation to InfluxDB, in batches.

Run it with `graceful-serve app:app` instead of `uvicorn app:app`. What graceful adds here:

- `current_lifecycle()`: the server's shutdown state. `/ready` answers from it (503 from
  SIGTERM on), and the lifespan's shutdown bounds its waits by what the grace period
  leaves (`lifecycle.remaining`).
- `TaskRegistry`: every background task kept referenced, awaited at shutdown.
- `BatchWriter`: points written in batches, retried with backoff, flushed at shutdown.

Environment: INFLUXDB_BASE_URL (e.g. http://influxdb:8086; without it points are only
logged), INFLUXDB_DB (default calc), LOG_DELAY (seconds, default 1), HOSTNAME (the pod).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any

import httpx
from fastapi import FastAPI, Header, Request, Response
from pydantic import BaseModel

from graceful import (
    BatchTooLargeError,
    BatchWriter,
    HoldWriteError,
    PermanentWriteError,
    RetryPolicy,
    TaskRegistry,
    current_lifecycle,
)

logger = logging.getLogger("graceful.example")

INFLUXDB_BASE_URL = os.environ.get("INFLUXDB_BASE_URL", "")
INFLUXDB_DB = os.environ.get("INFLUXDB_DB", "calc")
LOG_DELAY = float(os.environ.get("LOG_DELAY", "1"))
POD = os.environ.get("HOSTNAME", "local")
TASKS_TIMEOUT = 7.0  # at most this long for background tasks at shutdown
FLUSH_TIMEOUT = 5.0  # then at most this long to write what is buffered


class InfluxSink:
    """POST /write to InfluxDB 1.x; the error raised tells the BatchWriter what to do."""

    def __init__(self, base_url: str, db: str) -> None:
        self.db = db
        self.client = httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(5, connect=1))

    async def write(self, lines: Sequence[str]) -> None:
        response = await self.client.post(
            "/write", params={"db": self.db}, content="\n".join(lines).encode()
        )
        status = response.status_code
        if status < 300:
            return
        if status == 400:  # bad points: retrying cannot help
            raise PermanentWriteError(response.text, rejected=len(lines))
        if status == 413:
            raise BatchTooLargeError(response.text)
        if status in (401, 403, 404):  # wrong database or credentials: keep, retry slowly
            raise HoldWriteError(f"InfluxDB {status}: {response.text}")
        raise RuntimeError(f"InfluxDB {status}: {response.text}")  # retried with backoff

    async def aclose(self) -> None:
        await self.client.aclose()


async def log_sink(lines: Sequence[str]) -> None:
    for line in lines:
        logger.info("operation: %s", line)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    lifecycle = current_lifecycle()
    influx = InfluxSink(INFLUXDB_BASE_URL, INFLUXDB_DB) if INFLUXDB_BASE_URL else None
    writer: BatchWriter[str] = BatchWriter(
        influx.write if influx else log_sink,
        name="operations",
        max_batch=500,
        interval=1.0,
        retry=RetryPolicy(),
    )
    tasks = TaskRegistry("log-operation")
    # A forced exit (a third signal, or a shutdown over budget) logs what it leaves.
    lifecycle.report_unwritten("operations", lambda: len(tasks) + writer.pending)
    writer.start()
    app.state.writer, app.state.tasks, app.state.last_ns = writer, tasks, 0
    yield
    # Requests have drained by now; what they started is finished here, within the budget.
    await tasks.shutdown(lifecycle.remaining(TASKS_TIMEOUT))
    await writer.close(lifecycle.remaining(FLUSH_TIMEOUT))
    if influx:
        await influx.aclose()


app = FastAPI(lifespan=lifespan)


class SumRequest(BaseModel):
    numbers: list[Any]


@app.post("/sum")
async def calc_sum(
    body: SumRequest,
    request: Request,
    x_request_id: Annotated[str | None, Header()] = None,
) -> dict[str, float]:
    await asyncio.sleep(0.1)
    numbers = [n for n in body.numbers if isinstance(n, int | float) and not isinstance(n, bool)]
    result = float(sum(numbers))
    request_id = x_request_id or uuid.uuid4().hex
    line = point(request.app, request_id.replace("\\", "\\\\").replace('"', '\\"'), numbers, result)
    request.app.state.tasks.spawn(log_operation(request.app.state.writer, line))
    return {"result": result}


def point(app: FastAPI, request_id: str, numbers: list[Any], result: float) -> str:
    # A strictly increasing timestamp: a retried write of the same point overwrites itself.
    app.state.last_ns = max(time.time_ns(), app.state.last_ns + 1)
    fields = f'id="{request_id}",numbers={float(len(numbers))!r},result={result!r}'
    return f"operation,name=sum,pod={POD} {fields} {app.state.last_ns}"


async def log_operation(writer: BatchWriter[str], line: str) -> None:
    await asyncio.sleep(LOG_DELAY)  # stands for slow work after the answer
    writer.add(line)


@app.get("/ready")
async def ready(response: Response) -> dict[str, bool]:
    ready = current_lifecycle().ready
    if not ready:
        response.status_code = 503
    return {"ready": ready}


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "healthy"}
