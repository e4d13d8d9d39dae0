"""bench/graceful_cost.py: its in-process part measures real calls through graceful's
layers (every call answered 200, or the bench stops), and bad options fail clearly."""

from __future__ import annotations

import subprocess
import sys

from bench.graceful_cost import SERVERS, call_many, in_process, stacks
from tests.support import REPO


def test_in_process_part_measures_each_servers_stack() -> None:
    """1. One round of 300 calls per stack; 2. a figure for each server, and the wrapped
    stack is really graceful's (the bare app has no readiness path: 404; wrapped: 200)."""
    import asyncio

    added = in_process(1, 300)
    assert set(added) == set(SERVERS) and all(len(v) == 1 for v in added.values())
    bare, wrapped = stacks()["hypercorn"]
    assert type(wrapped).__name__ == "GracefulMiddleware" and wrapped is not bare
    statuses: list[int] = []

    async def ready(app: object) -> None:
        async def receive() -> dict[str, object]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, object]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(int(message["status"]))  # type: ignore[call-overload]

        scope: dict[str, object] = {"type": "http", "method": "GET", "path": "/ready"}
        scope |= {"headers": [], "query_string": b"", "root_path": "", "raw_path": b"/ready"}
        await app(scope, receive, send)  # type: ignore[operator]

    asyncio.run(ready(bare))
    asyncio.run(ready(wrapped))
    assert statuses == [404, 200]
    assert asyncio.run(call_many(wrapped, 10)) >= 0


def test_bad_options_fail_before_measuring() -> None:
    """--rounds 0 is refused with exit 2 and a message naming the limits."""
    result = subprocess.run(
        [sys.executable, "bench/graceful_cost.py", "--rounds", "0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "need --rounds >= 1" in result.stderr
