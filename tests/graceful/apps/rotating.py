"""An app for gunicorn worker rotation and `--preload` (tests/graceful/test_gunicorn_rotation.py).

It takes its lifecycle at import, as an app does that gunicorn imports once in the master
with `--preload`, and its lifespan shutdown writes its accepted work last, as calc's does.

- `/phase`: "<phase> <same|other> <grace period> <pid>": the phase of the lifecycle taken
  at import, whether it is the one `current_lifecycle()` returns now, the grace period it
  has, and the process that answers.
- `/work?seconds=S`: sleeps S s, then answers "done <pid>".
- every other path: "ok <pid>".
- lifespan shutdown: waits `ROTATING_APP_FLUSH_SECONDS` (default 0), then appends
  "flushed <pid>" to the file `ROTATING_APP_FLUSH_FILE` names (if set).
"""

from __future__ import annotations

import asyncio
import os

from graceful import current_lifecycle
from graceful.asgi import Receive, Scope, Send

lifecycle = current_lifecycle()  # at import: raises NoLifecycle outside a graceful server


def write_flushed(path: str) -> None:
    with open(path, "a") as out:  # one short line: no need to leave the event loop
        out.write(f"flushed {os.getpid()}\n")


async def flush() -> None:
    await asyncio.sleep(float(os.environ.get("ROTATING_APP_FLUSH_SECONDS", "0")))
    path = os.environ.get("ROTATING_APP_FLUSH_FILE")
    if path:
        write_flushed(path)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await flush()
                await send({"type": "lifespan.shutdown.complete"})
                return
    pid = os.getpid()
    if scope["path"] == "/phase":
        same = "same" if lifecycle is current_lifecycle() else "other"
        text = f"{lifecycle.phase.value} {same} {lifecycle.config.grace_period:g} {pid}"
    elif scope["path"] == "/work":
        await asyncio.sleep(float(scope["query_string"].decode().partition("=")[2] or 0))
        text = f"done {pid}"
    else:
        text = f"ok {pid}"
    body = text.encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
