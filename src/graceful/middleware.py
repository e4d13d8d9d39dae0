"""ASGI middleware: in-flight and activity bookkeeping, `Connection: close` while draining,
and an account of every request handler that is cancelled or outlives the drain."""

from __future__ import annotations

import asyncio
import logging

from graceful.asgi import ASGIApp, Message, Receive, Scope, Send
from graceful.config import PROBE_USER_AGENT_PREFIX
from graceful.lifecycle import Lifecycle, Phase

CONNECTION_CLOSE = (b"connection", b"close")
logger = logging.getLogger("graceful.middleware")


class GracefulMiddleware:
    """Wrap the whole app with this, outermost.

    While draining, a server that keeps a client's connection open keeps receiving its
    requests after the load balancer dropped it (established connections survive endpoint
    removal), so every response then says `Connection: close`.

    `lifecycle.in_flight` counts running handlers, including those whose client has gone:
    uvicorn's httptools protocol only marks such a request disconnected and lets its
    handler run on, so the drain waits on this count, not only on open connections.
    """

    def __init__(self, app: ASGIApp, lifecycle: Lifecycle) -> None:
        self.app = app
        self.lifecycle = lifecycle
        self.exempt = lifecycle.config.quiet_exempt_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        lifecycle = self.lifecycle
        lifecycle.request_started(counts_as_activity=self.counts_as_activity(scope))
        try:
            if not lifecycle.config.connection_close:
                await self.app(scope, receive, send)
                return

            async def send_closing(message: Message) -> None:
                if message["type"] == "http.response.start" and lifecycle.close_connections:
                    headers = [
                        h for h in message.get("headers", []) if h[0].lower() != b"connection"
                    ]
                    headers.append(CONNECTION_CLOSE)
                    message = {**message, "headers": headers}
                await send(message)

            await self.app(scope, receive, send_closing)
        except asyncio.CancelledError:
            if not lifecycle.aborting_requests:
                raise
            # The server cut this request on purpose and counts and logs it. Ending here
            # keeps uvicorn from logging the cancellation as an application error.
            lifecycle.requests_cancelled += 1
        finally:
            lifecycle.request_finished()
            if lifecycle.phase in (Phase.APP_SHUTDOWN, Phase.STOPPED):
                lifecycle.requests_finished_late += 1
                logger.warning(
                    "A %s %s handler ended after the app's shutdown began",
                    scope.get("method", "?"),
                    scope.get("path", "?"),
                )

    def counts_as_activity(self, scope: Scope) -> bool:
        """Whether this request says the load balancer still sends us clients: not a
        kubelet's probe (whatever its path), nor on an exempt path (whoever asks)."""
        if scope["path"] in self.exempt:
            return False
        return not is_probe(scope)


def is_probe(scope: Scope) -> bool:
    """A kubelet's HTTP probe, by the User-Agent it sends (`kube-probe/1.37`)."""
    for name, value in scope.get("headers", ()):
        if name == b"user-agent":  # ASGI servers give header names in lower case
            return bytes(value).startswith(PROBE_USER_AGENT_PREFIX)
    return False
