"""What graceful.hypercorn and graceful.hypercorn_h2 rely on in hypercorn, and the releases
they support: hypercorn `OLDEST` (0.17.3, 2024-05-28) up to the lock's
(requirements/dev.lock). The supported releases do not differ in any of it.

graceful.hypercorn uses hypercorn's public API (`serve(app, config, shutdown_trigger=...,
mode=...)`, `Config.graceful_timeout`, its lifespan errors). hypercorn_h2 reaches inside:
it replaces the module-level name `hypercorn.protocol.H2Protocol`, by which
`ProtocolWrapper` builds each HTTP/2 connection's protocol, with a subclass that overrides
`H2Protocol`'s sending and event handling and reads its streams and h2 connection.
`unsupported()` checks each at start; tests/graceful/test_server_internals.py fails the
day a release changes one of them.
"""

from __future__ import annotations

from importlib.metadata import version

from graceful import server_compat

OLDEST = (0, 17, 3)
RELEASE = version("hypercorn")

METHODS: dict[str, dict[str, tuple[str, ...]]] = {
    "hypercorn.protocol.h2:H2Protocol": {
        "handle": ("event",),
        "stream_send": ("event",),
        "_send_data": ("stream_id",),
        "_handle_events": ("events",),
        "_flush": (),
    },
    "hypercorn.config:Config": {"from_toml": ("filename",)},
}
SET_BY = {
    "hypercorn.protocol.h2:H2Protocol.__init__": (
        "closed",
        "connection",
        "send",
        "streams",
        "stream_buffers",
        "task_group",
    ),
    "hypercorn.protocol.h2:H2Protocol.handle": ("closed",),
}
NAMES = {
    "hypercorn.protocol": ("H2Protocol",),
    "hypercorn.events": ("Closed", "Event", "RawData"),
    "hypercorn.protocol.events": ("Event", "StreamClosed"),
    "hypercorn.utils": ("LifespanFailureError", "LifespanTimeoutError"),
    "hypercorn.config:Config": ("graceful_timeout", "bind", "accesslog"),
}
CALL_ORDER = {
    # Each connection's HTTP/2 protocol is built by the module-level name, looked up then.
    "hypercorn.protocol:ProtocolWrapper.__init__": ("H2Protocol",),
    "hypercorn.protocol:ProtocolWrapper.handle": ("H2Protocol",),
}
#: `hypercorn.asyncio.serve`'s parameters, as graceful passes them.
SERVE_PARAMETERS = ("app", "config", "shutdown_trigger", "mode")


def missing() -> list[str]:
    """What graceful relies on that the installed hypercorn lacks or has changed."""
    import inspect

    from hypercorn.asyncio import serve

    gaps = server_compat.gaps(methods=METHODS, set_by=SET_BY, names=NAMES, call_order=CALL_ORDER)
    parameters = tuple(inspect.signature(serve).parameters)
    if parameters[: len(SERVE_PARAMETERS)] != SERVE_PARAMETERS:
        gaps.append(f"serve({', '.join(SERVE_PARAMETERS)}), found ({', '.join(parameters)})")
    return gaps


def unsupported() -> str | None:
    """One line saying why the installed hypercorn cannot run graceful, or None."""
    return server_compat.verdict("hypercorn", RELEASE, OLDEST, missing)
