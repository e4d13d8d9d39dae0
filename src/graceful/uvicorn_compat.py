"""Every reach of graceful into uvicorn beyond `uvicorn.Config` and `uvicorn.Server.run`,
and the releases it supports.

graceful subclasses `uvicorn.Server` (server.py, gunicorn.py) and uvicorn's httptools
protocol (protocol.py), and reads what they keep: the open connections and running
request handlers, the listening servers, the lifespan's startup event. None of that is
uvicorn's public API, so:

- `RELIED_ON` names each piece (a method and its parameters, an attribute a method sets,
  a module-level name); `unsupported()` checks them at start and says in one line what an
  installed release lacks, and tests/graceful/test_server_internals.py fails the day a
  release changes one of them.
- where the supported releases differ, the difference is here, named by the release that
  changed it (`SHUTS_DOWN_AFTER_EARLY_EXIT`, ...), with what graceful does about it.

Supported: uvicorn `OLDEST` (0.38.0, 2025-10-18) up to the lock's (requirements/dev.lock).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG
from uvicorn.importer import ImportFromStringError, import_from_string
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from graceful import server_compat

if TYPE_CHECKING:
    from uvicorn.server import ServerState

__all__ = [
    "LOGGING_CONFIG",
    "HttpToolsProtocol",
    "ImportFromStringError",
    "RequestResponseCycle",
    "import_from_string",
]

OLDEST = (0, 38, 0)
STARTUP_FAILURE = 3  # uvicorn's exit code when the app's lifespan startup fails


VERSION = server_compat.release(uvicorn.__version__)

# -- where the supported releases differ -------------------------------------------------

#: 0.41: `Server._serve` runs `shutdown()` when a signal came during `startup()` once the
#: server listens. Before, it returned at once: the listener was left to the loop's end
#: and the app's lifespan shutdown (its final writes) never ran. GracefulServer.startup
#: runs the phased shutdown itself then.
SHUTS_DOWN_AFTER_EARLY_EXIT = VERSION >= (0, 41)

#: 0.50: `Server.startup` exits with STARTUP_FAILURE (3) when the app's lifespan startup
#: fails. Before, it set `should_exit` and returned, and `Server.run` returned as after a
#: shutdown. GracefulServer.startup exits with 3 then.
EXITS_ON_FAILED_STARTUP = VERSION >= (0, 50)

#: 0.53: the httptools protocol's response says `connection: close` whenever the
#: connection will not be kept alive. Before, only when the request said so: a response
#: the protocol closed after (e.g. protocol.py's early answer) did not say it.
#: `say_close_when_not_kept_alive` adds it then.
RESPONSE_SAYS_CLOSE = VERSION >= (0, 53)

# -- what graceful relies on ------------------------------------------------------------

#: Methods graceful overrides or calls, with the parameters it passes (after self).
METHODS: dict[str, dict[str, tuple[str, ...]]] = {
    "uvicorn.server:Server": {
        "__init__": ("config",),
        "run": ("sockets",),
        "startup": ("sockets",),
        "main_loop": (),
        "on_tick": ("counter",),
        "shutdown": ("sockets",),
        "handle_exit": ("sig", "frame"),
    },
    "uvicorn.lifespan.on:LifespanOn": {"startup": (), "shutdown": ()},
    "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol": {
        "connection_made": ("transport",),
        "connection_lost": ("exc",),
        "data_received": ("data",),
        "on_message_begin": (),
        "on_headers_complete": (),
        "on_body": ("body",),
        "on_message_complete": (),
        "shutdown": (),
    },
    "uvicorn.protocols.http.httptools_impl:RequestResponseCycle": {
        "send": ("message",),
        "run_asgi": ("app",),
    },
}

#: Attributes graceful reads or sets, each as the method of uvicorn's that sets it.
SET_BY: dict[str, tuple[str, ...]] = {
    "uvicorn.server:Server.__init__": ("config", "server_state", "started", "should_exit"),
    "uvicorn.server:Server._serve": ("lifespan",),
    "uvicorn.server:Server.startup": ("servers",),
    "uvicorn.server:ServerState.__init__": ("connections", "tasks"),
    "uvicorn.lifespan.on:LifespanOn.__init__": ("startup_event", "startup_failed", "should_exit"),
    "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.__init__": ("loop", "cycle"),
    "uvicorn.protocols.http.httptools_impl:HttpToolsProtocol.connection_made": ("transport",),
    "uvicorn.protocols.http.httptools_impl:RequestResponseCycle.__init__": (
        "keep_alive",
        "response_started",
        "disconnected",
        "message_event",
    ),
}

#: `uvicorn.Config` parameters graceful passes (graceful-serve, build_server, the worker).
CONFIG_PARAMETERS = (
    "app",
    "host",
    "port",
    "http",
    "lifespan",
    "log_config",
    "log_level",
    "access_log",
    "root_path",
    "proxy_headers",
    "forwarded_allow_ips",
    "timeout_keep_alive",
    "timeout_notify",
    "callback_notify",
    "limit_max_requests",
    "backlog",
    "workers",
)


def missing() -> list[str]:
    """What graceful relies on that the installed uvicorn lacks or has changed."""
    gaps = server_compat.gaps(methods=METHODS, set_by=SET_BY)
    config_parameters = set(inspect.signature(uvicorn.Config).parameters)
    return gaps + [
        f"Config({name}=...)" for name in CONFIG_PARAMETERS if name not in config_parameters
    ]


def unsupported() -> str | None:
    """One line saying why the installed uvicorn cannot run graceful, or None."""
    return server_compat.verdict("uvicorn", uvicorn.__version__, OLDEST, missing)


class UnsupportedUvicorn(RuntimeError):
    """The installed uvicorn cannot run graceful; the message is one line."""


_checked: list[str | None] = []


def require_supported() -> None:
    """Raise UnsupportedUvicorn where `unsupported()` says why (checked once a process)."""
    if not _checked:
        _checked.append(unsupported())
    if _checked[0] is not None:
        raise UnsupportedUvicorn(_checked[0])


# -- the reaches themselves --------------------------------------------------------------


def server_state(server: uvicorn.Server) -> ServerState:
    """The open connections (`.connections`, uvicorn's protocol objects) and running
    request handlers (`.tasks`) of a server."""
    return server.server_state


def listening(server: uvicorn.Server) -> list[asyncio.Server]:
    """The asyncio servers `Server.startup` listens with."""
    return list(getattr(server, "servers", []))


def app_starting(server: uvicorn.Server) -> bool:
    """The app's lifespan startup has not answered yet. `LifespanOn` sets `startup_event`
    when it does (or when the app has no lifespan); `LifespanOff` has no such event."""
    event = getattr(getattr(server, "lifespan", None), "startup_event", None)
    return isinstance(event, asyncio.Event) and not event.is_set()


def mark_startup_failed(server: uvicorn.Server) -> None:
    """Make `LifespanOn` take a cancelled startup as the failure it is, instead of logging
    that the app does not support the lifespan protocol."""
    lifespan: Any = getattr(server, "lifespan", None)
    if hasattr(lifespan, "startup_failed"):
        lifespan.startup_failed = True


def startup_failed(server: uvicorn.Server) -> bool:
    """The app's lifespan startup failed (before 0.50, `startup()` returns then)."""
    return not server.started and bool(getattr(server.lifespan, "should_exit", False))


def had_a_request(connection: object) -> bool:
    """uvicorn's HTTP protocols set `cycle` at a connection's first request."""
    return getattr(connection, "cycle", True) is not None


def say_close_when_not_kept_alive(cycle: RequestResponseCycle) -> None:
    """Before 0.53 (`RESPONSE_SAYS_CLOSE`), make this request's response say `connection:
    close` when, as it starts, the connection is not to be kept alive."""
    if RESPONSE_SAYS_CLOSE:
        return
    send: Callable[[Any], Awaitable[None]] = cycle.send

    async def send_saying_close(message: MutableMapping[str, Any]) -> None:
        if message["type"] == "http.response.start" and not cycle.keep_alive:
            headers = [(bytes(n), bytes(v)) for n, v in message.get("headers", [])]
            if not any(n.lower() == b"connection" and b"close" in v.lower() for n, v in headers):
                message = {**message, "headers": [*headers, (b"connection", b"close")]}
        await send(message)

    # The app gets `cycle.send` when its task starts, after the head was parsed.
    cycle.send = send_saying_close  # type: ignore[assignment,method-assign]
