"""A readiness route the server answers for apps that have none, and the 503 from
SIGTERM on for apps that have one."""

from __future__ import annotations

from graceful.asgi import ASGIApp, Message, Receive, Scope, Send
from graceful.lifecycle import Lifecycle


class ReadinessMiddleware:
    """Answers GET and HEAD on `path`:

    - not ready (from SIGTERM on with `readiness_flip`, or before the server serves):
      503 at once; the app is not asked, since its own route may not know of the
      shutdown.
    - ready: the app is asked; if it answers 404 (it has no such route), 200 instead.
      Any other answer of the app stands (e.g. 503 while its database is down).
    """

    def __init__(self, app: ASGIApp, lifecycle: Lifecycle, path: str) -> None:
        if not path.startswith("/"):
            raise ValueError(f"readiness path must start with '/': {path!r}")
        self.app = app
        self.lifecycle = lifecycle
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or _route_path(scope) != self.path
            or scope.get("method") not in ("GET", "HEAD")
        ):
            await self.app(scope, receive, send)
            return
        if not self.lifecycle.ready:
            await _answer(send, 503, b"not ready\n", scope["method"])
            return

        app_has_route = True

        async def send_unless_404(message: Message) -> None:
            nonlocal app_has_route
            if message["type"] == "http.response.start" and message["status"] == 404:
                app_has_route = False
            if app_has_route:
                await send(message)
            # else: drop the app's 404 and its body; our answer follows

        await self.app(scope, receive, send_unless_404)
        if not app_has_route:
            await _answer(send, 200, b"ready\n", scope["method"])


def _route_path(scope: Scope) -> str:
    """The path as the app routes it: uvicorn puts --root-path in front of the path."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


async def _answer(send: Send, status: int, body: bytes, method: str) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})
