"""A bare ASGI app that answers what the server told it, for `graceful-serve` run inside
the test process (tests/graceful/test_cli_in_process.py).

- `app`: `/echo` answers "client=<host> scheme=<scheme> root=<root_path> path=<path>
  phase=<phase of current_lifecycle()>"; `/ready` answers 404 (no such route) unless the
  app was told otherwise; every other path 200 "ok".
- `make_app`: a factory for `app`.
- `not_a_factory`: a string, for --factory.
- `makes_nothing`: a factory that returns None.
- `failing_startup`: `app` with a lifespan startup that fails.
- `stuck_app`: `app` with a lifespan shutdown that waits until `release` is set, and
  7 items it reports unwritten.
- `/work?seconds=S` (every app): sleeps S s, then answers "done".
- `/body` (every app): reads the whole request body and answers it.
"""

from __future__ import annotations

import asyncio
import threading

from graceful import current_lifecycle
from graceful.asgi import ASGIApp, Receive, Scope, Send

not_a_factory = "not callable"
release = threading.Event()


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    status, body = 200, b"ok"
    if scope["path"].endswith("/echo"):
        client = scope.get("client") or ("?", 0)
        body = (
            f"client={client[0]} scheme={scope['scheme']} root={scope.get('root_path', '')} "
            f"path={scope['path']} phase={current_lifecycle().phase.value}"
        ).encode()
    elif scope["path"].endswith("/ready"):
        status, body = 404, b"no such route"
    elif scope["path"].endswith("/work"):
        await asyncio.sleep(float(scope["query_string"].decode().partition("=")[2] or 0))
        body = b"done"
    elif scope["path"].endswith("/body"):
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


def make_app() -> ASGIApp:
    return app


def makes_nothing() -> None:
    return None


async def failing_startup(scope: Scope, receive: Receive, send: Send) -> None:
    """An app whose lifespan startup fails (e.g. its database is unreachable)."""
    if scope["type"] == "lifespan":
        await receive()
        await send({"type": "lifespan.startup.failed", "message": "database unreachable"})
        return
    await app(scope, receive, send)


async def stuck_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "lifespan":
        await app(scope, receive, send)
        return
    current_lifecycle().report_unwritten("items", lambda: 7)
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            while not release.is_set():  # noqa: ASYNC110 (set by a thread, not the loop)
                await asyncio.sleep(0.01)
            await send({"type": "lifespan.shutdown.complete"})
            return
