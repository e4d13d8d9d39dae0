"""Apps for `graceful-serve`, written as their authors would for plain uvicorn.

- `app`: no readiness route; `/work?seconds=S` sleeps S s; `/phase` says what
  `current_lifecycle()` sees; `/loop` names the event loop's module.
- `app_with_ready`: its own `/ready` that answers 503 "database down" until
  `/db-up` is called.
- `make_app`: a factory for `app`.
- `stuck_app`: `app` with a lifespan shutdown that never ends.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from graceful import current_lifecycle
from graceful.asgi import Receive, Scope, Send

logger = logging.getLogger("graceful.tests.served")
state = {"db_up": False}


async def work(request: Request) -> PlainTextResponse:
    seconds = float(request.query_params.get("seconds", "0"))
    logger.warning("Working %.1f s", seconds)
    await asyncio.sleep(seconds)
    return PlainTextResponse("done")


async def phase(request: Request) -> PlainTextResponse:
    return PlainTextResponse(current_lifecycle().phase.value)


async def loop(request: Request) -> PlainTextResponse:
    return PlainTextResponse(type(asyncio.get_running_loop()).__module__)


async def ready(request: Request) -> PlainTextResponse:
    if state["db_up"]:
        return PlainTextResponse("app ready")
    return PlainTextResponse("database down", status_code=503)


async def db_up(request: Request) -> PlainTextResponse:
    state["db_up"] = True
    return PlainTextResponse("ok")


ROUTES = [Route("/work", work), Route("/phase", phase), Route("/loop", loop)]
app = Starlette(routes=ROUTES)
app_with_ready = Starlette(routes=[*ROUTES, Route("/ready", ready), Route("/db-up", db_up)])


def make_app() -> Starlette:
    return Starlette(routes=ROUTES)


async def stuck_app(scope: Scope, receive: Receive, send: Send) -> None:
    """An app whose lifespan shutdown never ends, with 7 items it reports unwritten."""
    if scope["type"] == "lifespan":
        current_lifecycle().report_unwritten("items", lambda: 7)
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                logger.warning("Lifespan shutdown began; it never ends")
                await asyncio.Event().wait()  # never set: stuck for good
    else:
        await app(scope, receive, send)
