"""Apps whose lifespan startup never ends, for `graceful-serve`.

- `app`: the startup awaits forever; cancelled, it logs "Startup cancelled" and ends.
- `deaf_app`: the startup awaits forever and ignores its cancellation (it awaits again),
  so only a forced exit ends the process.
"""

from __future__ import annotations

import asyncio
import logging

from graceful.asgi import Receive, Scope, Send

logger = logging.getLogger("graceful.tests.hung_startup")


async def _never() -> None:
    logger.warning("Startup began; it never ends")
    try:
        await asyncio.Event().wait()  # never set
    except asyncio.CancelledError:
        logger.warning("Startup cancelled")
        raise


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "lifespan":
        raise RuntimeError("never served: the startup never ends")
    message = await receive()
    assert message["type"] == "lifespan.startup"
    await _never()


async def deaf_app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "lifespan":
        raise RuntimeError("never served: the startup never ends")
    await receive()
    while True:
        try:
            await _never()
        except asyncio.CancelledError:
            logger.warning("Cancellation ignored")
