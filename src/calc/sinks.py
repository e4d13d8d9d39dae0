"""Where operation points go: InfluxDB 1.x over HTTP, or a local line-protocol file.

Each sink writes a batch of lines (`write`), and can count and clear what it holds (the
original Makefile's influxdb-count / influxdb-clear). `write` returns when the batch is
stored and raises the graceful.batcher error that says what the writer should do
otherwise (see `InfluxSink.write` for every InfluxDB answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import httpx

from calc.config import Secret
from calc.points import MEASUREMENT
from graceful import BatchTooLargeError, HoldWriteError, PermanentWriteError
from graceful.spool import write_all

_DROPPED = re.compile(r"dropped=(\d+)")
_UNPARSEABLE = "unable to parse '"


def rejected_count(body: str, sent: int) -> int:
    """How many of `sent` lines a 400 answer says InfluxDB did not store.

    InfluxDB 1.x keeps the valid points of a batch. For points it refused (type
    conflicts, limits) it says `dropped=N`; for lines it could not parse it says
    `unable to parse '<line>': <why>`, one per line, joined by newlines, while still
    saying `dropped=0`. A 400 that is no partial write refused the whole batch.
    """
    try:
        message = str(json.loads(body).get("error", body))
    except (ValueError, AttributeError):
        message = body
    dropped = sum(int(n) for n in _DROPPED.findall(message))
    unparseable = sum(
        1
        for part in message.split("\n")
        if part.removeprefix("partial write: ").startswith(_UNPARSEABLE)
    )
    if dropped + unparseable == 0 and "partial write" not in message:
        return sent
    return min(sent, dropped + unparseable)


class SinkError(RuntimeError):
    """A count or clear could not be done; the message says why."""


class Sink(Protocol):
    async def write(self, lines: Sequence[str]) -> None: ...
    async def aclose(self) -> None: ...


class InfluxSink:
    """Writes with one pooled async client; connect and write timeouts bound every call
    (1 s to connect, `timeout` in all), and `query_timeout` every count or clear."""

    def __init__(
        self,
        base_url: str,
        db: str,
        timeout: float = 5.0,
        auth: tuple[str, Secret] | None = None,
        query_timeout: float = 10.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.db = db
        self.query_timeout = query_timeout
        # Basic auth, never a URL with user info: URLs end up in errors and logs.
        self._auth = (auth[0], auth[1].reveal()) if auth else None
        self._client = httpx.AsyncClient(
            auth=self._auth,
            base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 1.0)),
            limits=httpx.Limits(max_connections=20, max_keepalive_connections=20),
        )

    async def write(self, lines: Sequence[str]) -> None:
        """One POST /write. Every answer, and what the batching writer does with it:

        2xx                      written
        400 partial write        the `dropped=N` and unparseable lines lost, the rest written
        400 (whole batch)        every line lost: InfluxDB can never take it
        413                      split the batch and write the halves
        408, 429, 5xx            retry with backoff (connection refused and timeouts too)
        401, 403, 404, other     configuration error: hold every point, retry slowly,
                                 log an error on each try
        """
        response = await self._client.post(
            "/write",
            params={"db": self.db, "precision": "ns"},
            content="\n".join(lines).encode(),
        )
        status = response.status_code
        if 200 <= status < 300:
            return
        body = response.text
        text = body.strip()[:500]
        if status == 400:
            raise PermanentWriteError(
                f"InfluxDB 400: {text}", rejected=rejected_count(body, len(lines))
            )
        if status == 413:
            raise BatchTooLargeError(f"InfluxDB 413: {text}")
        if status in (408, 429) or status >= 500:
            raise RuntimeError(f"InfluxDB answered {status}: {text}")
        raise HoldWriteError(f"InfluxDB answered {status}: {text}")

    async def aclose(self) -> None:
        await self._client.aclose()

    # -- count / clear (synchronous: used by the CLI) -------------------------------------

    def _query(self, q: str) -> list[dict[str, object]]:
        try:
            response = httpx.post(
                f"{self.base_url}/query",
                params={"db": self.db, "q": q},
                timeout=self.query_timeout,
                auth=self._auth,
            )
        except httpx.HTTPError as exc:
            raise SinkError(f"cannot reach InfluxDB at {self.base_url}: {exc}") from None
        if response.status_code != 200:
            raise SinkError(f"InfluxDB answered {response.status_code}: {response.text.strip()}")
        result = response.json()["results"][0]
        if "error" in result:
            raise SinkError(f"InfluxDB: {result['error']}")
        series: list[dict[str, object]] = result.get("series", [])
        return series

    def count(self) -> int:
        series = self._query(f'SELECT count("result") FROM "{MEASUREMENT}"')
        if not series:
            return 0
        values = series[0]["values"]
        assert isinstance(values, list)
        return int(values[0][1])

    def clear(self) -> None:
        self._query(f'DROP MEASUREMENT "{MEASUREMENT}"')


class _Append:
    """One append handed to a thread. A thread cannot be stopped: once it has begun, the
    write happens, so a cancelled caller waits for it and reports it done."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self._lock = threading.Lock()
        self._state = "waiting"  # -> "running" (the thread took it) or "cancelled"

    def begin(self) -> bool:
        with self._lock:
            if self._state == "cancelled":
                return False
            self._state = "running"
            return True

    def cancel(self) -> bool:
        """True when the thread has not begun (and now never will)."""
        with self._lock:
            if self._state == "waiting":
                self._state = "cancelled"
            return self._state == "cancelled"


def _observe(future: asyncio.Future[None]) -> None:
    """Retrieve an outcome nobody may wait for any more, so none goes unobserved."""
    if not future.cancelled():
        future.exception()


class FileSink:
    """Appends lines to a local file: the standalone default, so nothing is lost.

    A write that times out is not written twice: if its thread had not begun, it never
    will; if it had, the cancelled write waits for it and returns (the batching writer
    counts a cancelled write that returns as written; a second cancel is obeyed). A
    failed write is cut back, so a retry never follows a torn line."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = asyncio.Lock()

    async def write(self, lines: Sequence[str]) -> None:
        job = _Append("".join(line + "\n" for line in lines).encode())
        async with self._lock:
            future = self._in_thread(job)
            try:
                await asyncio.shield(future)
            except asyncio.CancelledError:
                if job.cancel():
                    raise
                # Begun: its outcome is the answer. A second cancel means the caller is
                # leaving for good (the writer gave up, the loop is closing): let it go.
                future.add_done_callback(_observe)
                await asyncio.shield(future)

    def _in_thread(self, job: _Append) -> asyncio.Future[None]:
        """Run the append in a daemon thread of its own: a write hung in the kernel (a
        dead NFS server, a FIFO nobody reads) must not hold the process's exit, as a
        thread of the default executor would."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def settle(error: BaseException | None) -> None:
            if future.done():
                return
            if error is None:
                future.set_result(None)
            else:
                future.set_exception(error)

        def run() -> None:
            error: BaseException | None = None
            try:
                self._append(job)
            except BaseException as exc:
                error = exc
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
                loop.call_soon_threadsafe(settle, error)

        threading.Thread(target=run, name="file-sink-write", daemon=True).start()
        return future

    def _append(self, job: _Append) -> None:
        if not job.begin():
            return
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            try:
                start: int | None = os.lseek(fd, 0, os.SEEK_END)
            except OSError:  # a pipe or a terminal: nothing to cut back
                start = None
            try:
                write_all(fd, job.data)
            except OSError:
                if start is not None:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, start)
                raise
        finally:
            os.close(fd)

    async def aclose(self) -> None:
        return None

    def count(self) -> int:
        try:
            with self.path.open("rb") as f:
                return sum(1 for line in f if line.startswith(MEASUREMENT.encode()))
        except FileNotFoundError:
            return 0
        except OSError as exc:
            raise SinkError(f"cannot read {self.path}: {exc}") from None

    def clear(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            raise SinkError(f"cannot remove {self.path}: {exc}") from None
