"""A scripted fake InfluxDB 1.x on loopback: `POST /write` and `GET /ping`, behaving over
time as a script says.

Behaviours (one at a time, switched at the script's moments):

    up        204, the lines are stored
    slow      204 after `value` seconds, then stored
    refused   the listener is closed and open connections are cut (connection refused)
    stalled   the request is read and never answered; cut when the behaviour changes
    5xx       answers `value` (500, 503) with InfluxDB's JSON error; nothing stored
    400       a partial write: the first `value` lines are rejected (`dropped=N`), the
              rest stored, as InfluxDB does with a field type conflict
    4xx       answers `value` (401, 404 database not found, 413); nothing stored

Stored points are keyed as InfluxDB keys them (series and timestamp), so a point written
twice is stored once, as InfluxDB overwrites it.

Runs its own event loop in a thread of the caller's process: start() and close().
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from lab.influx import free_port

BEHAVIOURS = ("up", "slow", "refused", "stalled", "5xx", "400", "4xx")
_ID = re.compile(r'id="((?:[^"\\]|\\.)*)"')
_REASONS = {
    204: "No Content",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    413: "Request Entity Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_ERRORS = {
    401: "authorization failed",
    404: 'database not found: "calc"',
    413: "Request Entity Too Large",
    500: "engine: cache-max-memory-size exceeded",
    503: "timeout",
}


@dataclass(frozen=True)
class Segment:
    """From `at` seconds after start(), behave as `behaviour` (with `value`)."""

    at: float
    behaviour: str
    value: float = 0.0

    def __post_init__(self) -> None:
        if self.behaviour not in BEHAVIOURS:
            raise ValueError(f"unknown behaviour {self.behaviour!r}: one of {BEHAVIOURS}")


@dataclass(frozen=True)
class Answered:
    """One write request as the fake saw it."""

    at: float
    behaviour: str
    lines: int
    status: int  # 0: never answered (stalled, cut)


class ScriptedInflux:
    def __init__(self, script: Sequence[Segment], host: str = "127.0.0.1") -> None:
        if not script or script[0].at != 0:
            raise ValueError("a script starts with a segment at 0")
        self.script = sorted(script, key=lambda s: s.at)
        self.host = host
        self.port = free_port(host)
        self.points: dict[tuple[str, str], str] = {}  # (series, timestamp) -> line
        self.requests: list[Answered] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-influx")
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._connections: set[asyncio.Task[None]] = set()  # one task per connection
        self._current = self.script[0]
        self._changed: asyncio.Event | None = None
        self._conductor: asyncio.Task[None] | None = None
        self._started_at = 0.0

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- the caller's side ---------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    def stored_lines(self) -> list[str]:
        with self._lock:
            return list(self.points.values())

    def stored_ids(self) -> dict[str, int]:
        """Request id -> how many distinct points carry it (more than 1: a duplicate)."""
        counts: dict[str, int] = {}
        for line in self.stored_lines():
            found = _ID.search(line)
            if found:
                counts[found.group(1)] = counts.get(found.group(1), 0) + 1
        return counts

    # -- the loop's side -----------------------------------------------------------------

    async def _start(self) -> None:
        self._changed = asyncio.Event()
        self._started_at = time.monotonic()
        await self._apply(self.script[0])
        self._conductor = asyncio.get_running_loop().create_task(self._conduct())

    async def _stop(self) -> None:
        if self._conductor is not None:
            self._conductor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._conductor
        await self._close_listener()
        self._cut_connections()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)

    async def _conduct(self) -> None:
        for segment in self.script[1:]:
            await asyncio.sleep(max(0.0, self._started_at + segment.at - time.monotonic()))
            await self._apply(segment)

    async def _apply(self, segment: Segment) -> None:
        self._current = segment
        assert self._changed is not None
        self._changed.set()  # wakes stalled requests: they are cut
        self._changed = asyncio.Event()
        if segment.behaviour == "refused":
            await self._close_listener()
            self._cut_connections()
        elif self._server is None:
            self._server = await asyncio.start_server(
                self._serve, self.host, self.port, reuse_address=True
            )

    async def _close_listener(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def _cut_connections(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        self._writers.add(writer)
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            self._connections.discard(task)
            self._writers.discard(writer)
            writer.transport.abort()

    async def _one_request(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        request_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in header_lines if line)
        }
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        method, target, _ = request_line.split(" ", 2)
        if target.startswith("/ping"):
            await _answer(writer, 204)
            return True
        if method != "POST" or not target.startswith("/write"):
            await _answer(writer, 404, {"error": "not found"})
            return True
        lines = [line for line in body.decode().split("\n") if line]
        segment = self._current
        status = await self._write(segment, lines, writer)
        self.requests.append(
            Answered(time.monotonic() - self._started_at, segment.behaviour, len(lines), status)
        )
        return status != 0

    async def _write(self, segment: Segment, lines: list[str], writer: asyncio.StreamWriter) -> int:
        behaviour = segment.behaviour
        if behaviour in ("refused", "stalled"):
            # refused: a request on a connection opened before the listener closed.
            assert self._changed is not None
            if behaviour == "stalled":
                await self._changed.wait()
            return 0
        if behaviour == "slow":
            await asyncio.sleep(segment.value)
        if behaviour in ("up", "slow"):
            self._store(lines)
            await _answer(writer, 204)
            return 204
        if behaviour == "400":
            dropped = min(len(lines), max(1, int(segment.value)))
            self._store(lines[dropped:])
            error = (
                f'partial write: field type conflict: input field "result" ... dropped={dropped}'
            )
            await _answer(writer, 400, {"error": error})
            return 400
        status = int(segment.value)
        await _answer(writer, status, {"error": _ERRORS.get(status, "error")})
        return status

    def _store(self, lines: list[str]) -> None:
        with self._lock:
            for line in lines:
                series, _, rest = line.partition(" ")
                timestamp = rest.rsplit(" ", 1)[-1]
                self.points[(series, timestamp)] = line


async def _answer(writer: asyncio.StreamWriter, status: int, payload: object = None) -> None:
    body = b"" if payload is None else json.dumps(payload).encode()
    head = f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
    if body:
        head += "Content-Type: application/json\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n"
    writer.write(head.encode() + body)
    await writer.drain()
