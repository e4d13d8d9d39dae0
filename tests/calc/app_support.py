"""calc's ASGI app in the pytest process, put together as `calc serve` does (the app in
graceful's middleware, one Lifecycle), with its lifespan driven by ASGI messages and its
requests sent through httpx.ASGITransport or as raw ASGI messages."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import httpx

from calc.app import create_app
from calc.config import CalcConfig, resolve
from calc.oplog import OperationLog, make_sink
from calc.service import operation_log_of, shutdown_config
from calc.sinks import Sink
from graceful import GracefulMiddleware, Lifecycle, Phase
from graceful.asgi import Message


def config_for(profile: str, tmp_path: Path, **changes: Any) -> CalcConfig:
    """The profile as `calc serve --profile P` resolves it, with no slow math, pod
    `pod-a`, port 4000, the line-protocol file and the spool under tmp_path."""
    config = resolve(
        profile,
        {},
        {
            "pod": "pod-a",
            "port": 4000,
            "slow_math": 0.0,
            "oplog_file": str(tmp_path / "operations.lp"),
            "spool_dir": str(tmp_path / "spool"),
        },
    )
    return dataclasses.replace(config, **changes)


@dataclasses.dataclass
class RawAnswer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes
    receives: int  # how many times the app asked for the request body


class InProcessCalc:
    def __init__(self, config: CalcConfig, sink: Sink | None = None) -> None:
        self.config = config
        self.lifecycle = Lifecycle(shutdown_config(config))
        self.sink = sink if sink is not None else make_sink(config)
        self.app = GracefulMiddleware(create_app(config, self.lifecycle, self.sink), self.lifecycle)
        self.oplog: OperationLog = operation_log_of(self.app)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[httpx.AsyncClient]:
        """Lifespan startup, a client for requests, then lifespan shutdown (which must
        complete within 15 s)."""
        to_app: asyncio.Queue[Message] = asyncio.Queue()
        from_app: asyncio.Queue[Message] = asyncio.Queue()
        scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}}
        task = asyncio.get_running_loop().create_task(
            self.app({**scope, "state": {}}, to_app.get, from_app.put)
        )
        try:
            await to_app.put({"type": "lifespan.startup"})
            started = await asyncio.wait_for(from_app.get(), 5)
            assert started == {"type": "lifespan.startup.complete"}, started
            self.lifecycle.phase = Phase.SERVING  # as the server sets it once it listens
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://calc") as client:
                yield client
            await to_app.put({"type": "lifespan.shutdown"})
            stopped = await asyncio.wait_for(from_app.get(), 15)
            assert stopped == {"type": "lifespan.shutdown.complete"}, stopped
            await asyncio.wait_for(task, 5)
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def begin_shutdown(self) -> None:
        """What the server's SIGTERM handler records."""
        self.lifecycle.record_shutdown_request(signal.SIGTERM)

    async def raw(
        self,
        method: str,
        path: str,
        headers: Sequence[tuple[bytes, bytes]] = (),
        messages: Sequence[Message] = ({"type": "http.request", "body": b""},),
    ) -> RawAnswer:
        """One request as the ASGI messages a server would pass: `messages` are what
        `receive` returns, in order (then http.disconnect)."""
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": method,
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": list(headers),
            "client": ("127.0.0.1", 50000),
            "server": ("127.0.0.1", 4000),
            "state": {},
        }
        incoming = list(messages)
        received = 0
        sent: list[Message] = []

        async def receive() -> Message:
            nonlocal received
            received += 1
            return incoming.pop(0) if incoming else {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            sent.append(message)

        await self.app(scope, receive, send)
        start = next(m for m in sent if m["type"] == "http.response.start")
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return RawAnswer(start["status"], dict(start.get("headers", [])), body, received)


def metrics_of(text: str) -> dict[str, float]:
    """Each sample line of a Prometheus text, name (with labels) -> value."""
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


async def until(predicate: Any, timeout: float, what: str) -> None:
    """Poll `predicate()` on the running loop until it is true; fail at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() >= deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)
