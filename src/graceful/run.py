"""One call to serve any ASGI app with graceful shutdown on uvicorn."""

from __future__ import annotations

from typing import Any

import uvicorn

from graceful.asgi import ASGIApp
from graceful.lifecycle import Lifecycle
from graceful.middleware import GracefulMiddleware
from graceful.server import GracefulServer


def build_server(app: ASGIApp, lifecycle: Lifecycle, **uvicorn_options: Any) -> GracefulServer:
    """Wrap `app` in GracefulMiddleware and return a server ready to `.run()`.

    Build the app with the same `lifecycle` to answer readiness from `lifecycle.ready`.
    `uvicorn_options` go to `uvicorn.Config` (host, port, loop, http, log_config, ...).
    """
    options = {"lifespan": "auto", **uvicorn_options}
    config = uvicorn.Config(GracefulMiddleware(app, lifecycle), **options)
    return GracefulServer(config, lifecycle)


def serve(app: ASGIApp, lifecycle: Lifecycle, **uvicorn_options: Any) -> GracefulServer:
    """Run until shut down; returns the server (its `phase_durations` say how long each
    shutdown phase took)."""
    server = build_server(app, lifecycle, **uvicorn_options)
    server.run()
    return server
