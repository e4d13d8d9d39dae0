"""A uvicorn server whose shutdown runs in phases, each with a deadline and a forced path:

    SIGTERM -> delay (keep serving) -> close listener -> drain or abort -> app shutdown.

uvicorn alone closes the listener at once, never says `Connection: close`, has no
readiness flip and no delay (DESIGN.md §4). The signal handler only records; the
serving loop and a watcher task notice and act.

Signals after the first (see `GracefulServer`): a SIGTERM is logged and ignored; a SIGINT
ends the waits for requests; any signal after that exits at once. A signal while the app's
lifespan startup still runs cancels that startup and exits (nothing was served yet).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Callable
from types import FrameType
from typing import Any, NoReturn

import uvicorn

from graceful import uvicorn_compat
from graceful.lifecycle import Lifecycle, Phase
from graceful.phases import report_exit_at_once, run_delay, timed_phase

logger = logging.getLogger("graceful.server")

POLL = 0.05  # seconds between checks of in-flight state and of signals while waiting
CANCEL_GRACE = 1.0  # seconds a cancelled request handler gets to end before we go on
# Seconds (within the budget) a cancelled lifespan startup gets to end, e.g. to close
# the connections it opened, before the process exits anyway.
STARTUP_CANCEL_GRACE = 5.0
EXIT_APP_OVERRAN = 1  # exit code when the app's shutdown outlives the budget


class GracefulServer(uvicorn.Server):
    """`uvicorn.Server` with phased shutdown driven by a `Lifecycle`.

    The first SIGTERM or SIGINT starts the shutdown. Later signals:

    - SIGTERM: logged, otherwise ignored. Whatever sends it again (a process manager, a
      second `kill`) sends SIGKILL later anyway; cutting the flush would lose work.
    - the first further SIGINT (Ctrl-C twice): stop waiting for requests (delay, quiet
      period, drain), abort what is still running, counted and logged; the app's own
      shutdown (awaiting its tasks, flushing its writers) still runs, within the budget.
    - any signal after that (a third signal): log what the app leaves unwritten
      (`Lifecycle.report_unwritten`) and exit at once with 128 + the signal number.

    A first signal while the app's lifespan startup still runs (e.g. a startup that
    hangs) cancels the startup and its tasks, waits for them within
    `STARTUP_CANCEL_GRACE` and the budget, and exits with 128 + the signal number: no
    request was ever accepted, so there is nothing to drain or write. A second signal
    then exits at once.
    """

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle) -> None:
        uvicorn_compat.require_supported()  # a release lacking what we rely on: say so now
        super().__init__(config)
        self.lifecycle = lifecycle
        self.phase_durations: dict[str, float] = {}
        # Every signal handled, in order of arrival, with what it did: "start", "ignore",
        # "hurry" or "exit". The handler appends; the watcher task logs.
        self.signals: list[tuple[int, str]] = []
        self.hurry = False  # a second SIGINT came: no more waiting for requests
        self.hurry_reason = "second SIGINT"  # how logs name what set `hurry`
        self._signals_logged = 1  # the first is logged by "Shutdown started"
        self._watcher: asyncio.Task[None] | None = None

    # -- signals: record only ----------------------------------------------------------

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.lifecycle.record_shutdown_request(sig)
        if not self.should_exit:
            effect = "start"
        elif self.hurry or not self.started:
            effect = "exit"  # a third signal, or a second before anything was served
        elif sig == signal.SIGINT:
            effect = "hurry"
            self.hurry = True
        else:
            effect = "ignore"
        self.signals.append((sig, effect))
        self.should_exit = True

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's startup, in a task this loop watches: the app's lifespan startup
        awaits the app for as long as it takes, and would not see a signal otherwise."""
        loop = asyncio.get_running_loop()
        before = asyncio.all_tasks()
        starting = loop.create_task(self._start(sockets), name="graceful-startup")
        while not starting.done():
            if self.should_exit and self._app_starting():
                # Every task that appeared since is the app's startup or one it began.
                app_tasks = asyncio.all_tasks() - before - {starting}
                await self._interrupt_startup(starting, app_tasks)
            await asyncio.wait({starting}, timeout=POLL)
        if (exit := starting.result()) is not None:
            raise exit  # uvicorn's own exits (startup failed, address in use) go on
        if not uvicorn_compat.EXITS_ON_FAILED_STARTUP and uvicorn_compat.startup_failed(self):
            raise SystemExit(uvicorn_compat.STARTUP_FAILURE)  # as uvicorn 0.50 on does
        if self.started and not self.should_exit:
            self.lifecycle.phase = Phase.SERVING
        elif self.started and not uvicorn_compat.SHUTS_DOWN_AFTER_EARLY_EXIT:
            # A signal came while the server started: uvicorn before 0.41 returns without
            # a shutdown, so the phases (and the app's lifespan shutdown) run here.
            await self.shutdown(sockets)

    async def _start(self, sockets: list[socket.socket] | None) -> SystemExit | None:
        """uvicorn's startup; its sys.exit is handed back: raised in a task of its own,
        it would leave the event loop from that task, reported as never retrieved."""
        try:
            await super().startup(sockets)
        except SystemExit as exc:
            return exc
        return None

    def _app_starting(self) -> bool:
        """The app's lifespan startup has not answered yet."""
        return uvicorn_compat.app_starting(self)

    async def _interrupt_startup(
        self, starting: asyncio.Task[Any], app_tasks: set[asyncio.Task[Any]]
    ) -> NoReturn:
        """Cancel the app's startup, give it a bounded moment to end, and exit with
        128 + the signal: no request was accepted, so nothing is lost."""
        sig = self.lifecycle.shutdown_signal or signal.SIGTERM
        code = 128 + sig
        self._signals_logged = len(self.signals)
        grace = self.lifecycle.remaining(STARTUP_CANCEL_GRACE) or 0.0
        logger.warning(
            "%s during the app's startup: startup cancelled, nothing was served "
            "(up to %.1f s for it to end; one more signal exits at once)",
            _signal_name(sig),
            grace,
        )
        uvicorn_compat.mark_startup_failed(self)
        starting.cancel()
        for task in app_tasks:
            task.cancel()
        deadline = time.monotonic() + grace
        pending = {starting, *app_tasks}
        while pending and time.monotonic() < deadline:
            self._exit_on_a_later_signal()
            _, pending = await asyncio.wait(pending, timeout=POLL)
        self._exit_on_a_later_signal()
        if pending:
            names = ", ".join(sorted(t.get_name() for t in pending))
            self._exit_at_once(
                f"the app's startup still ran {grace:.1f} s after being cancelled: {names}",
                code,
            )
            raise SystemExit(code)  # when `hard_exit` is a hook that returns
        logger.error(
            "Exiting with code %d: the app's startup was cancelled by %s", code, _signal_name(sig)
        )
        raise SystemExit(code)

    def _exit_on_a_later_signal(self) -> None:
        for sig, effect in self.signals[self._signals_logged :]:
            if effect == "exit":
                self._exit_at_once(f"second signal during startup, {_signal_name(sig)}", 128 + sig)
                raise SystemExit(128 + sig)  # when `hard_exit` is a hook that returns

    async def main_loop(self) -> None:
        await super().main_loop()
        # A shutdown not caused by a signal (e.g. max requests) still counts from now.
        if self.lifecycle.shutdown_requested_at is None:
            self.lifecycle.record_shutdown_request(signal.SIGTERM)

    # -- the phases ------------------------------------------------------------------

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        lifecycle = self.lifecycle
        config = lifecycle.config
        cause = lifecycle.worker_exit or f"signal {_signal_name(lifecycle.shutdown_signal)}"
        logger.info("Shutdown started (%s)", cause)
        self._watcher = asyncio.get_running_loop().create_task(
            self._watch_signals(), name="graceful-signal-watcher"
        )

        with self._phase(Phase.DELAY):
            await self._delay()

        with self._phase(Phase.CLOSING):
            for server in uvicorn_compat.listening(self):
                server.close()
            for sock in sockets or []:
                sock.close()

        with self._phase(Phase.DRAINING):
            if config.drain:
                await self._drain()
            else:
                await self._abort_all("drain is off")

        with self._phase(Phase.APP_SHUTDOWN):
            await self._app_shutdown()
        lifecycle.phase = Phase.STOPPED
        await self._stop_watcher()
        await self._report_leftovers()
        total = time.monotonic() - (lifecycle.shutdown_requested_at or time.monotonic())
        logger.info("Shutdown finished in %.2f s", total)

    async def _delay(self) -> None:
        await run_delay(self.lifecycle, self._wait, lambda: self.hurry)

    def _busy(self) -> bool:
        """A connection is open or a request handler still runs (its client may be gone)."""
        state = uvicorn_compat.server_state(self)
        return bool(state.connections or state.tasks or self.lifecycle.in_flight)

    async def _drain(self) -> None:
        state = uvicorn_compat.server_state(self)
        for connection in list(state.connections):
            connection.shutdown()  # idle ones close now, busy ones after their response
        running = max(len(state.tasks), self.lifecycle.in_flight)
        if running:
            logger.info(
                "Draining %d request handler(s) on %d open connection(s)",
                running,
                len(state.connections),
            )
        drained = await self._wait(
            lambda: not self._busy(), self.lifecycle.config.drain_timeout, "in-flight requests"
        )
        if not drained:
            await self._abort_all(self.hurry_reason if self.hurry else "drain time is up")
        for server in uvicorn_compat.listening(self):
            # Python 3.12+ also waits here for connections; aborted ones may lag a little.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 1.0)

    async def _abort_all(self, why: str) -> None:
        """Close every connection and cancel every request handler, then give the
        handlers a bounded moment to end, so none runs into the app's shutdown unseen."""
        state = uvicorn_compat.server_state(self)
        connections = list(state.connections)
        tasks = list(state.tasks)
        for connection in connections:
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()
        self.lifecycle.aborting_requests = True
        for task in tasks:
            task.cancel()
        if connections or tasks:
            logger.warning(
                "Aborted %d connection(s) and %d request(s): %s",
                len(connections),
                len(tasks),
                why,
            )
        if tasks:
            # Within the budget, but always a few loop turns: most handlers end at once.
            grace = max(POLL, self.lifecycle.remaining(CANCEL_GRACE) or 0.0)
            _, still = await asyncio.wait(tasks, timeout=grace)
            if still:
                logger.error(
                    "%d request handler(s) still running %.1f s after being cancelled; "
                    "the app's shutdown starts anyway",
                    len(still),
                    grace,
                )

    async def _app_shutdown(self) -> None:
        """The ASGI lifespan shutdown, which bounds itself by `lifecycle.remaining()`.

        Never skipped: that is where accepted work is written. If it still overruns the
        budget (a stuck app), exit at once with what is left unwritten logged.
        """
        limit = self.lifecycle.remaining(None)
        if limit is not None:
            # The app's own deadline is the same instant; give it a moment to report.
            limit += self.lifecycle.config.safety_margin / 2
        task = asyncio.get_running_loop().create_task(
            self.lifespan.shutdown(), name="graceful-app-shutdown"
        )
        done, _ = await asyncio.wait({task}, timeout=limit)
        if not done:
            self._exit_at_once("the app's shutdown overran the budget", EXIT_APP_OVERRAN)

    async def _wait(self, done: Callable[[], bool], limit: float | None, what: str) -> bool:
        """Wait until `done()`, at most `limit` s and never past the budget or a second
        SIGINT. True when `done()` came true."""
        limit = self.lifecycle.remaining(limit)
        deadline = None if limit is None else time.monotonic() + limit
        counter = 0
        while not done():
            if self.hurry:
                logger.warning("%s: stopped waiting for %s", _capital(self.hurry_reason), what)
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(POLL)
            counter += 1
            if counter % 20 == 0:
                await self.on_tick(0)  # keeps the Date header fresh while we still serve
        return True

    # -- later signals, and the forced path -------------------------------------------------

    async def _watch_signals(self) -> None:
        """Runs from the start of the shutdown to its end: logs each later signal (the
        handler may not) and exits at once on a third signal, whatever phase is running."""
        while True:
            while self._signals_logged < len(self.signals):
                sig, effect = self.signals[self._signals_logged]
                self._signals_logged += 1
                if effect == "exit":
                    self._exit_at_once(f"third signal, {_signal_name(sig)}", 128 + sig)
                self._log_later_signal(sig, effect)
            await asyncio.sleep(POLL)

    def _log_later_signal(self, sig: int, effect: str) -> None:
        if effect == "ignore":
            logger.warning(
                "%s again during shutdown: ignored, the shutdown goes on", _signal_name(sig)
            )
        elif effect == "hurry":
            logger.warning(
                "SIGINT again: no more waiting for requests; accepted work is still written "
                "(one more signal exits at once)"
            )

    def _exit_at_once(self, why: str, code: int) -> None:
        """Log what stays unwritten and end the process now, with no cleanup: a cancelled
        app shutdown would only add tracebacks, and whoever forces the exit wants it now."""
        report_exit_at_once(self.lifecycle, why, logger)
        self.hard_exit(code)

    # The forced path, as a hook for embedding (tests, or a host that must not exit).
    hard_exit: Callable[[int], Any] = staticmethod(os._exit)

    async def _stop_watcher(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def _report_leftovers(self) -> None:
        """Whatever still runs now is cancelled when the event loop closes, after
        "Shutdown finished": name it here rather than let it go unseen."""
        running = uvicorn_compat.server_state(self).tasks
        handlers = [t for t in running if not t.done()]
        if handlers:
            logger.error("%d request handler(s) still running at exit are cancelled", len(handlers))
        current = asyncio.current_task()
        others = [
            t for t in asyncio.all_tasks() if t is not current and not t.done() and t not in running
        ]
        if others:
            # e.g. the lifespan task, a step away from its end once it said "complete"
            _, still = await asyncio.wait(others, timeout=0.2)
            others = list(still)
        if others:
            names = ", ".join(sorted(t.get_name() for t in others))
            logger.error("%d task(s) still running at exit are cancelled: %s", len(others), names)

    def _phase(self, phase: Phase) -> contextlib.AbstractContextManager[None]:
        return timed_phase(self.lifecycle, self.phase_durations, phase, logger)


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _signal_name(signum: int | None) -> str:
    if signum is None:
        return "none"
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)
