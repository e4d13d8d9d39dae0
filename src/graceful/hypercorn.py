"""The phased shutdown on hypercorn, through its public API only:
`hypercorn.asyncio.serve(app, config, shutdown_trigger=...)` and `config.graceful_timeout`.

    SIGTERM -> delay (the trigger keeps hypercorn serving) -> the trigger returns:
    hypercorn closes the listener and waits `graceful_timeout` for running requests
    (set here to the drain timeout cut to the budget), then cancels them -> the app's
    lifespan shutdown.

HTTP/2 has no `Connection: close`: from the delay's start each HTTP/2 connection is told
to go away (GOAWAY) instead, see `hypercorn_h2.py`.

A second SIGINT ends the delay and cuts the drain, as on uvicorn: hypercorn's API has no
call to end its `graceful_timeout` wait early, so the runner cancels the request
handlers it tracks itself, and that wait ends with them. A third signal, or an app
shutdown past the budget, exits at once with what is left unwritten logged.

`graceful-hypercorn module:app --bind HOST:PORT` runs it from a command line (shutdown
options from the GRACEFUL_* variables, as for `graceful-serve`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config
from hypercorn.utils import LifespanFailureError, LifespanTimeoutError

from graceful.asgi import ASGIApp, Message, Receive, Scope, Send
from graceful.current import install
from graceful.hypercorn_h2 import GoingAway
from graceful.lifecycle import Lifecycle, Phase
from graceful.middleware import GracefulMiddleware
from graceful.options import OptionError, resolve_shutdown
from graceful.phases import report_exit_at_once, run_delay, timed_phase
from graceful.readiness import ReadinessMiddleware

logger = logging.getLogger("graceful.hypercorn")

POLL = 0.05
NO_LIMIT = 365 * 24 * 3600.0  # hypercorn's graceful_timeout is a number of seconds


class _LifespanPhase:
    """Marks the app's shutdown phase when hypercorn sends `lifespan.shutdown`."""

    def __init__(self, app: ASGIApp, lifecycle: Lifecycle) -> None:
        self.app = app
        self.lifecycle = lifecycle

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def observed() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":
                self.lifecycle.phase = Phase.APP_SHUTDOWN
            return message

        await self.app(scope, observed, send)


class _RequestTasks:
    """Keeps the task of every running request handler in `running` (removed when it
    ends), so that a second SIGINT can cancel them."""

    def __init__(self, app: ASGIApp, running: set[asyncio.Task[Any]]) -> None:
        self.app = app
        self.running = running

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        task = asyncio.current_task()
        if scope["type"] != "http" or task is None:
            await self.app(scope, receive, send)
            return
        self.running.add(task)
        try:
            await self.app(scope, receive, send)
        finally:
            self.running.discard(task)


class HypercornRunner:
    """Runs an ASGI app on hypercorn with graceful's phases; one per process."""

    def __init__(self, lifecycle: Lifecycle, config: Config) -> None:
        self.lifecycle = lifecycle
        self.config = config
        self.signals: list[tuple[int, str]] = []
        self.hurry = False
        self.phase_durations: dict[str, float] = {}
        self._signalled: asyncio.Event | None = None
        self._logged = 1  # the first signal is logged as "Shutdown started"
        self.requests: set[asyncio.Task[Any]] = set()  # running request handlers
        self.cut_by_signal = 0
        self.http2 = GoingAway()

    # The forced path, as a hook for embedding.
    hard_exit: Callable[[int], Any] = staticmethod(os._exit)

    def handle_signal(self, sig: int) -> None:
        """Record only (called by the event loop's signal handling)."""
        self.lifecycle.record_shutdown_request(sig)
        if self._signalled is None or not self._signalled.is_set():
            effect = "start"
        elif self.hurry:
            effect = "exit"
        elif sig == signal.SIGINT:
            effect, self.hurry = "hurry", True
        else:
            effect = "ignore"
        self.signals.append((sig, effect))
        if self._signalled is not None:
            self._signalled.set()

    async def serve(self, app: ASGIApp) -> None:
        loop = asyncio.get_running_loop()
        self._signalled = asyncio.Event()
        # asyncio's remove_signal_handler leaves SIGINT raising KeyboardInterrupt and
        # SIGTERM killing: the handlers from before come back at the end instead, so a
        # late signal to an embedding program finds what it had installed.
        previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in previous:
            loop.add_signal_handler(sig, self.handle_signal, sig)
        watcher = loop.create_task(self._watch(), name="graceful-signal-watcher")
        tracked = _RequestTasks(_LifespanPhase(app, self.lifecycle), self.requests)
        wrapped = GracefulMiddleware(tracked, self.lifecycle)
        try:
            with self.http2.installed():
                await hypercorn_serve(
                    wrapped,  # type: ignore[arg-type]  # any ASGI 3 callable
                    self.config,
                    shutdown_trigger=self._trigger,
                    mode="asgi",
                )
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            for sig, handler in previous.items():
                loop.remove_signal_handler(sig)
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self.lifecycle.phase = Phase.STOPPED
        at_timeout = self.lifecycle.requests_cancelled - self.cut_by_signal
        if at_timeout > 0:
            logger.warning(
                "%d request(s) cancelled by hypercorn at its graceful_timeout", at_timeout
            )
        requested = self.lifecycle.shutdown_requested_at
        if requested is not None:
            logger.info("Shutdown finished in %.2f s", time.monotonic() - requested)

    async def _trigger(self) -> None:
        """hypercorn serves until this returns."""
        assert self._signalled is not None
        self.lifecycle.phase = Phase.SERVING
        await self._signalled.wait()
        logger.info("Shutdown started (signal %s)", _name(self.lifecycle.shutdown_signal))
        with self._phase(Phase.DELAY):
            if self.lifecycle.close_connections:
                await self.http2.start()
            await run_delay(self.lifecycle, self._wait, lambda: self.hurry)
        # Every HTTP/2 client learns before the listener closes; hypercorn alone would
        # refuse its next streams without saying whether they ran.
        await self.http2.finish()
        drain = self.lifecycle.config.drain_timeout if self.lifecycle.config.drain else 0.0
        limit = self.lifecycle.remaining(drain)
        self.config.graceful_timeout = NO_LIMIT if limit is None else limit
        self.lifecycle.phase = Phase.DRAINING
        # From here a cancelled request is hypercorn's drain cutting it: the middleware
        # counts it (hypercorn answers 500 if the answer had not started).
        self.lifecycle.aborting_requests = True
        logger.info("Closing the listener; running requests get %s s", _seconds(limit))

    async def _wait(self, done: Callable[[], bool], limit: float | None, what: str) -> bool:
        limit = self.lifecycle.remaining(limit)
        deadline = None if limit is None else time.monotonic() + limit
        while not done():
            if self.hurry:
                logger.warning("Second SIGINT: stopped waiting for %s", what)
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(POLL)
        return True

    async def _watch(self) -> None:
        """Logs later signals, exits at once on a third, and ends an app shutdown that
        outlives the budget (hypercorn itself would wait for it without limit)."""
        while True:
            while self._logged < len(self.signals):
                sig, effect = self.signals[self._logged]
                self._logged += 1
                if effect == "exit":
                    self._exit_at_once(f"third signal, {_name(sig)}", 128 + sig)
                elif effect == "ignore":
                    logger.warning("%s again during shutdown: ignored", _name(sig))
                else:
                    logger.warning("SIGINT again: no more waiting for requests")
            if self.hurry and self.lifecycle.phase == Phase.DRAINING:
                self._cut_requests()
            deadline = self.lifecycle.deadline()
            if (
                self.lifecycle.phase == Phase.APP_SHUTDOWN
                and deadline is not None
                and time.monotonic() > deadline + self.lifecycle.config.safety_margin / 2
            ):
                self._exit_at_once("the app's shutdown overran the budget", 1)
            await asyncio.sleep(POLL)

    def _cut_requests(self) -> None:
        """Cancels the running handlers not yet cancelled; the middleware counts each
        (and hypercorn answers 500 where the answer had not started)."""
        cut = [task for task in self.requests if not task.cancelling()]
        for task in cut:
            task.cancel()
        if cut:
            self.cut_by_signal += len(cut)
            logger.warning("Second SIGINT: cancelled %d running request(s)", len(cut))

    def _exit_at_once(self, why: str, code: int) -> None:
        report_exit_at_once(self.lifecycle, why, logger)
        self.hard_exit(code)

    def _phase(self, phase: Phase) -> contextlib.AbstractContextManager[None]:
        return timed_phase(self.lifecycle, self.phase_durations, phase, logger)


def _name(sig: int | None) -> str:
    if sig is None:
        return "none"
    try:
        return signal.Signals(sig).name
    except ValueError:
        return str(sig)


def _seconds(value: float | None) -> str:
    return "unlimited" if value is None else f"{value:.2f}"


# -- command line ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="graceful-hypercorn",
        description="Serve an ASGI 3 app with hypercorn and graceful's shutdown phases "
        "(readiness 503 from SIGTERM on, quiet period, drain within the grace period). "
        "Shutdown options come from GRACEFUL_* variables, as for graceful-serve "
        "(graceful-serve --help lists them).",
    )
    parser.add_argument("app", metavar="APP", help="module:attribute")
    parser.add_argument(
        "--bind",
        action="append",
        metavar="ADDRESS",
        help="HOST:PORT to listen on, repeatable (default 127.0.0.1:8000)",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="a hypercorn TOML config file (its graceful_timeout is replaced by the drain timeout)",
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="log each request to stdout (hypercorn's access log)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = resolve_shutdown({}, os.environ)
    except OptionError as exc:
        parser.error(str(exc))
    try:
        config = Config.from_toml(args.config) if args.config else Config()
    except (OSError, ValueError) as exc:  # ValueError: TOMLDecodeError, UnicodeDecodeError
        return _error(f"--config {args.config}: {_reason(exc)}", 2)
    if args.bind:
        config.bind = args.bind
    if args.access_log:
        config.accesslog = "-"
    # graceful's own loggers (and an app's under "graceful."), apart from hypercorn's.
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    graceful_logger = logging.getLogger("graceful")
    graceful_logger.addHandler(handler)
    graceful_logger.setLevel(logging.INFO)
    graceful_logger.propagate = False
    for problem in settings.problems():
        logger.warning("Shutdown budget: %s", problem)
    lifecycle = Lifecycle(settings.shutdown_config())
    install(lifecycle)  # before the import: the app may ask for it at import time
    from graceful.cli import ServeConfig, load_app

    try:
        app = load_app(ServeConfig(app=args.app))
    except OptionError as exc:
        logger.error("%s", exc)
        return 1
    if settings.readiness_path:
        app = ReadinessMiddleware(app, lifecycle, settings.readiness_path)
    runner = HypercornRunner(lifecycle, config)
    try:
        asyncio.run(runner.serve(app))
    except Exception as exc:
        startup = _startup_failure(exc)
        if startup is not None:
            return _error(f"{args.app}: the app's lifespan startup failed: {startup}", 3)
        if isinstance(exc, OSError) and lifecycle.phase == Phase.STARTING:
            return _error(f"cannot listen on {', '.join(config.bind)}: {_reason(exc)}", 1)
        raise
    return 0


def _error(message: str, code: int) -> int:
    """graceful-serve's one line for a server that cannot start, and its exit code."""
    print(f"graceful-hypercorn: error: {message}", file=sys.stderr, flush=True)
    return code


def _reason(exc: BaseException) -> str:
    """What went wrong, without the path the message already names."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


def _startup_failure(exc: BaseException) -> BaseException | None:
    """The lifespan startup failure (or timeout) hypercorn raised, also from a group."""
    if isinstance(exc, LifespanFailureError | LifespanTimeoutError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _startup_failure(inner)
            if found is not None:
                return found
    return None


if __name__ == "__main__":
    raise SystemExit(main())
