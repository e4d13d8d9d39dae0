"""Lifecycle's accounting for a forced exit, the phases' limits, and the readiness route
called as any ASGI server calls it (some give no root_path; websockets pass through)."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from typing import Any

import pytest

from graceful import Lifecycle, Phase, ReadinessMiddleware, ShutdownConfig, budget_problems
from graceful.asgi import Message, Receive, Scope, Send


def test_a_forced_exit_runs_every_action_even_after_one_fails(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1. Three before-exit actions, the second raising. 2. All three run in order; the
    failure is logged with the action and the error; nothing is raised."""
    lifecycle = Lifecycle(ShutdownConfig())
    ran: list[str] = []

    def broken() -> None:
        ran.append("broken")
        raise OSError("disk gone")

    lifecycle.before_forced_exit(lambda: ran.append("first"))
    lifecycle.before_forced_exit(broken)
    lifecycle.before_forced_exit(lambda: ran.append("last"))
    with caplog.at_level(logging.ERROR, logger="graceful"):
        lifecycle.run_before_forced_exit()
    assert ran == ["first", "broken", "last"]
    (message,) = caplog.messages
    assert message.startswith("Before the forced exit, <function ")
    assert message.endswith(" failed: OSError('disk gone')")


def test_unwritten_counts_each_registered_count_now() -> None:
    """1. Two counts registered, one reading a value that changes. 2. unwritten() reads
    each at the time of the call, by name, in order."""
    lifecycle = Lifecycle(ShutdownConfig())
    pending = [3]
    lifecycle.report_unwritten("points", lambda: pending[0])
    lifecycle.report_unwritten("spooled", lambda: 0)
    assert lifecycle.unwritten() == {"points": 3, "spooled": 0}
    pending[0] = 9
    assert list(lifecycle.unwritten().items()) == [("points", 9), ("spooled", 0)]


def test_in_flight_and_activity_bookkeeping() -> None:
    """1. Two requests start, one of them a probe. 2. Both count in flight; only the
    other moves the last activity. 3. Both end: none in flight."""
    lifecycle = Lifecycle(ShutdownConfig())
    before = lifecycle.last_activity
    time.sleep(0.01)  # the scenario: time passes before the probe
    lifecycle.request_started(counts_as_activity=False)
    assert (lifecycle.in_flight, lifecycle.last_activity) == (1, before)
    lifecycle.request_started(counts_as_activity=True)
    assert lifecycle.in_flight == 2 and lifecycle.last_activity > before
    lifecycle.request_finished()
    lifecycle.request_finished()
    assert lifecycle.in_flight == 0


def test_the_first_signal_is_the_one_recorded() -> None:
    """1. SIGINT, then SIGTERM. 2. The shutdown is SIGINT's, dated at the first; the
    deadline counts from it with the budget on, and there is none without."""
    lifecycle = Lifecycle(ShutdownConfig(grace_period=10, safety_margin=2, enforce_budget=True))
    assert (lifecycle.shutting_down, lifecycle.close_connections) == (False, False)
    lifecycle.record_shutdown_request(signal.SIGINT)
    at = lifecycle.shutdown_requested_at
    lifecycle.record_shutdown_request(signal.SIGTERM)
    assert (lifecycle.shutdown_signal, lifecycle.shutdown_requested_at) == (signal.SIGINT, at)
    assert at is not None and lifecycle.deadline() == at + 8
    assert lifecycle.remaining(100) == pytest.approx(8 - (time.monotonic() - at), abs=0.05)
    assert lifecycle.close_connections is False  # the switch is off
    unbudgeted = Lifecycle(ShutdownConfig(connection_close=True))
    unbudgeted.record_shutdown_request(signal.SIGTERM)
    assert unbudgeted.deadline() is None and unbudgeted.remaining(None) is None
    assert unbudgeted.close_connections is True


def test_a_deadline_in_the_past_leaves_zero_not_less() -> None:
    """A budget already spent leaves 0 s for every phase, never a negative wait."""
    lifecycle = Lifecycle(ShutdownConfig(grace_period=1.5, safety_margin=1.0, enforce_budget=True))
    lifecycle.record_shutdown_request(signal.SIGTERM)
    lifecycle.shutdown_requested_at = time.monotonic() - 5
    assert lifecycle.remaining(3) == 0.0
    assert lifecycle.remaining(None) == 0.0


def test_readiness_in_each_phase() -> None:
    """Ready only while serving (and in the delay, until SIGTERM with the flip)."""
    lifecycle = Lifecycle(ShutdownConfig(readiness_flip=False))
    expected = {
        Phase.STARTING: False,
        Phase.SERVING: True,
        Phase.DELAY: True,
        Phase.CLOSING: False,
        Phase.DRAINING: False,
        Phase.APP_SHUTDOWN: False,
        Phase.STOPPED: False,
    }
    for phase, ready in expected.items():
        lifecycle.phase = phase
        assert lifecycle.ready is ready, phase
    assert [p.value for p in Phase] == [
        "starting",
        "serving",
        "delay",
        "closing",
        "draining",
        "app-shutdown",
        "stopped",
    ]


def test_the_delay_limit_and_the_budget_parts() -> None:
    """The delay phase lasts at most the pre-close delay, or quiet_max when a quiet period
    is on (whichever is longer); the budget check adds the app's own limits and treats an
    unlimited drain as a problem of its own."""
    assert ShutdownConfig(pre_close_delay=3).delay_limit() == 3
    assert ShutdownConfig(pre_close_delay=3, quiet_period=1, quiet_max=2).delay_limit() == 3
    assert ShutdownConfig(pre_close_delay=1, quiet_period=1, quiet_max=4).delay_limit() == 4
    assert ShutdownConfig(quiet_max=4).delay_limit() == 0
    exact = ShutdownConfig(pre_close_delay=5, drain_timeout=10, grace_period=30)
    assert budget_problems(exact, {"tasks": 7, "flush": 7}) == []
    assert budget_problems(exact, {"tasks": 7, "flush": 7.5}) == [
        "shutdown phases need up to 29.5 s (delay 5 + drain 10 + tasks 7 + flush 7.5) but "
        "only 29 s remain before SIGKILL (grace period 30 s - safety margin 1 s)"
    ]
    assert budget_problems(ShutdownConfig(drain=False), {}) == []
    assert budget_problems(ShutdownConfig(), {}) == [
        "drain has no timeout: in-flight requests could outlast the grace period"
    ]
    defaults = ShutdownConfig()
    assert (defaults.drain, defaults.readiness_flip, defaults.connection_close) == (
        True,
        False,
        False,
    )
    assert (defaults.grace_period, defaults.safety_margin, defaults.enforce_budget) == (
        30.0,
        1.0,
        False,
    )
    assert defaults.quiet_exempt_paths == {"/metrics"}  # probes are told by their User-Agent


class Called:
    """What an app saw and sent when the middleware called it. It reads the request
    (as an app that watches for a disconnect does) before it answers `status`."""

    def __init__(self, status: int = 404) -> None:
        self.status = status
        self.scopes: list[str] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(scope["type"])
        if scope["type"] != "http":
            return
        assert (await receive())["type"] == "http.request"
        await send({"type": "http.response.start", "status": self.status, "headers": []})
        await send({"type": "http.response.body", "body": b"app"})


def call(app: Any, scope: Scope) -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    return sent


def http(path: str, method: str = "GET", **extra: Any) -> Scope:
    return {"type": "http", "path": path, "method": method, **extra}


def test_readiness_without_a_root_path_and_other_scope_types() -> None:
    """1. A server that gives no root_path (optional in ASGI): /ready is still the route.
    2. A root path that the path does not start with leaves the path as it is.
    3. websocket and lifespan scopes, and other methods, go to the app untouched."""
    lifecycle = Lifecycle(ShutdownConfig(readiness_flip=True))
    lifecycle.phase = Phase.SERVING
    app = Called()
    middleware = ReadinessMiddleware(app, lifecycle, "/ready")
    sent = call(middleware, http("/ready"))
    assert [m.get("status") for m in sent] == [200, None]
    assert sent[1]["body"] == b"ready\n"
    assert call(middleware, http("/ready", root_path="/api"))[1]["body"] == b"ready\n"
    assert call(middleware, http("/api/ready", root_path="/api"))[1]["body"] == b"ready\n"
    assert call(middleware, http("/ready", method="PUT"))[0]["status"] == 404
    head = call(middleware, http("/ready", method="HEAD"))  # HEAD: the length, no body
    assert head[0]["status"] == 200 and (b"content-length", b"6") in head[0]["headers"]
    assert head[1]["body"] == b""
    call(middleware, {"type": "websocket", "path": "/ready"})
    call(middleware, {"type": "lifespan"})
    assert app.scopes == ["http", "http", "http", "http", "http", "websocket", "lifespan"]
    lifecycle.record_shutdown_request(signal.SIGTERM)
    sent = call(middleware, http("/ready", method="HEAD"))
    assert sent[0]["status"] == 503 and sent[1]["body"] == b""
    assert app.scopes[-1] == "lifespan"  # not asked once not ready


def test_current_lifecycle_is_the_last_installed_and_says_how_to_get_one() -> None:
    """1. No server command has installed a lifecycle: NoLifecycle names the commands that
    do. 2. After install, the installed one; a second install wins."""
    import graceful.current
    from graceful import NoLifecycle, current_lifecycle
    from graceful.current import install

    saved = graceful.current._current
    try:
        graceful.current._current = None
        with pytest.raises(NoLifecycle) as raised:
            current_lifecycle()
        assert str(raised.value) == (
            "no graceful server runs this process: start the app with graceful-serve, "
            "gunicorn -k graceful.gunicorn.Worker or graceful.hypercorn"
        )
        first, second = Lifecycle(ShutdownConfig()), Lifecycle(ShutdownConfig())
        install(first)
        assert current_lifecycle() is first
        install(second)
        assert current_lifecycle() is second
    finally:
        graceful.current._current = saved


def test_a_forced_exit_report_survives_a_log_handler_that_cannot_flush() -> None:
    """1. A log handler whose flush fails (its disk is gone). 2. The forced exit's report
    still completes (so the exit itself follows), having written its line."""
    from graceful.phases import report_exit_at_once

    class Broken(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.lines: list[str] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.lines.append(record.getMessage())

        def flush(self) -> None:
            raise OSError("disk gone")

    log = logging.getLogger("graceful.test.broken")
    handler = Broken()
    log.addHandler(handler)
    try:
        report_exit_at_once(Lifecycle(ShutdownConfig()), "third signal, SIGTERM", log)
    finally:
        log.removeHandler(handler)
    assert handler.lines == [
        "Exiting at once (third signal, SIGTERM) in phase starting: left unwritten: nothing "
        "counted; 0 request(s) still running"
    ]


def test_a_drain_timeout_of_zero_counts_as_zero_in_the_budget() -> None:
    """A drain timeout of 0 (abort at once) adds nothing to the budget check's sum."""
    config = ShutdownConfig(pre_close_delay=1.5, drain_timeout=0, grace_period=2)
    assert budget_problems(config, {}) == [
        "shutdown phases need up to 1.5 s (delay 1.5 + drain 0) but only 1 s remain before "
        "SIGKILL (grace period 2 s - safety margin 1 s)"
    ]
