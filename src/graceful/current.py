"""The process's one `Lifecycle`, for apps started by a server command they do not call
(`graceful-serve`, `gunicorn -k graceful.gunicorn.Worker`, `graceful.hypercorn`).

The command installs the lifecycle before it imports the app, so the app may ask for it
at import time, in its lifespan or in a handler.
"""

from __future__ import annotations

from graceful.lifecycle import Lifecycle

_current: Lifecycle | None = None


class NoLifecycle(LookupError):
    """No graceful server runs this process."""


def install(lifecycle: Lifecycle) -> None:
    """Make `lifecycle` the one `current_lifecycle()` returns (the last install wins)."""
    global _current
    _current = lifecycle


def current_lifecycle() -> Lifecycle:
    """The lifecycle of the graceful server running this process.

    Raises `NoLifecycle` when there is none (e.g. the app was started with plain
    `uvicorn`), so an app that depends on it fails at start, not at its first SIGTERM.
    """
    if _current is None:
        raise NoLifecycle(
            "no graceful server runs this process: start the app with graceful-serve, "
            "gunicorn -k graceful.gunicorn.Worker or graceful.hypercorn"
        )
    return _current
