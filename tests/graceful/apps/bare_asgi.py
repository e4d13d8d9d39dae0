"""A bare ASGI callable (no framework, no lifespan) served with graceful.serve.

python -m tests.graceful.apps.bare_asgi PORT PRE_CLOSE_DELAY
"""

from __future__ import annotations

import asyncio
import logging
import sys

from graceful import Lifecycle, ShutdownConfig, serve
from graceful.asgi import Receive, Scope, Send

lifecycle = Lifecycle(
    ShutdownConfig(
        readiness_flip=True,
        connection_close=True,
        pre_close_delay=float(sys.argv[2]),
        drain_timeout=5,
        enforce_budget=True,
    )
)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    if scope["path"] == "/ready":
        status, body = (200, b"ready") if lifecycle.ready else (503, b"draining")
    else:
        await asyncio.sleep(0.05)
        status, body = 200, b"done"
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain")],
        }
    )
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)  # graceful logs its phases under "graceful.*"
    serve(app, lifecycle, host="127.0.0.1", port=int(sys.argv[1]), log_level="info")
