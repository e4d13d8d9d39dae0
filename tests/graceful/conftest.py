"""Only under mutmut (`make mutation`, which sets MUTANT_UNDER_TEST): keep uvicorn's app
check working on mutated code.

uvicorn calls the app with no arguments to detect a factory; the real
`GracefulMiddleware` raises TypeError there, so uvicorn serves it as an ASGI 3 app. mutmut
replaces each mutated method with a `(*args, **kwargs)` trampoline, and an `async def`
trampoline called with no arguments returns a coroutine instead of raising: uvicorn then
takes the middleware for a factory and fails to start. Handing uvicorn an ASGI 3 wrapper
with the real signature restores the real behaviour. Outside mutmut this does nothing.
"""

from __future__ import annotations

import os

import uvicorn.config

from graceful.asgi import ASGIApp, Receive, Scope, Send


class _Asgi3:
    """Calls the app it wraps; called with no arguments, raises TypeError as an ASGI 3
    app does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


if os.environ.get("MUTANT_UNDER_TEST") is not None:
    _load = uvicorn.config.Config.load

    def _load_unwrapped_by_mutmut(self: uvicorn.config.Config) -> None:
        if not self.loaded and not self.factory and not isinstance(self.app, str | _Asgi3):
            self.app = _Asgi3(self.app)  # type: ignore[arg-type]
        _load(self)

    uvicorn.config.Config.load = _load_unwrapped_by_mutmut  # type: ignore[method-assign]
