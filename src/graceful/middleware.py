"""ASGI middleware: in-flight and activity bookkeeping, `Connection: close` while draining."""

from __future__ import annotations

from graceful.asgi import ASGIApp, Message, Receive, Scope, Send
from graceful.lifecycle import Lifecycle

CONNECTION_CLOSE = (b"connection", b"close")


class GracefulMiddleware:
    """Wrap the whole app with this, outermost.

    While draining, a server that keeps a client's connection open keeps receiving its
    requests after the load balancer dropped it (established connections survive endpoint
    removal), so every response then says `Connection: close`.
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
        lifecycle.request_started(counts_as_activity=scope["path"] not in self.exempt)
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
        finally:
            lifecycle.request_finished()
