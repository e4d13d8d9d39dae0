"""Bare ASGI apps that misbehave at shutdown, served with graceful.serve.

python -m tests.graceful.apps.stubborn PORT MODE

stuck-shutdown    the lifespan shutdown never ends; 7 items reported unwritten, and one
                  count that fails
stubborn-handler  GET /work ignores its first cancellation and sleeps 3 s more
orphan-task       GET /work starts a task named "orphan" that sleeps for an hour
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

from graceful import Lifecycle, ShutdownConfig, serve
from graceful.asgi import Receive, Scope, Send

MODE = sys.argv[2]
lifecycle = Lifecycle(
    ShutdownConfig(drain_timeout=0.3, grace_period=3, safety_margin=1, enforce_budget=True)
)
lifecycle.report_unwritten("items", lambda: 7)
lifecycle.report_unwritten("broken", lambda: 1 // 0)
kept: set[asyncio.Task[Any]] = set()  # a reference, so only the loop's end cancels it


async def lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            if MODE == "stuck-shutdown":
                await asyncio.sleep(3600)
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["path"] == "/work":
        logging.getLogger("stubborn").info("Working")
        if MODE == "stubborn-handler":
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                logging.getLogger("stubborn").info("Cancelled, but going on")
                await asyncio.sleep(3)
        elif MODE == "orphan-task":
            kept.add(asyncio.get_running_loop().create_task(asyncio.sleep(3600), name="orphan"))
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"done"})


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    serve(app, lifecycle, host="127.0.0.1", port=int(sys.argv[1]), log_level="info")
