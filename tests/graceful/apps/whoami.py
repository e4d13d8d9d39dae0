"""A bare ASGI app that answers each request with its process id and HTTP version, so a
client behind a balancer sees which server answered (tests/graceful/test_hypercorn_http2.py).
`?sleep=S` answers after S seconds, logged as "Sleeping S s"."""

from __future__ import annotations

import asyncio
import logging
import os

from graceful.asgi import Receive, Scope, Send

logger = logging.getLogger("graceful.tests.whoami")


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    name, _, value = scope["query_string"].decode().partition("=")
    if name == "sleep":
        logger.warning("Sleeping %s s", value)
        await asyncio.sleep(float(value))
    body = f"{os.getpid()} {scope.get('http_version')}".encode()
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})
