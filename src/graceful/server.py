"""A uvicorn server whose shutdown runs in phases, each with a deadline and a forced path:

    SIGTERM -> delay (keep serving) -> close listener -> drain or abort -> app shutdown.

uvicorn alone closes the listener at once, never says `Connection: close`, has no
readiness flip and no delay (DESIGN.md §4). The signal handler only records; the
serving loop notices and runs the phases.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Callable, Iterator
from types import FrameType

import uvicorn

from graceful.lifecycle import Lifecycle, Phase

logger = logging.getLogger("graceful.server")

POLL = 0.05  # seconds between checks of in-flight state while waiting


class GracefulServer(uvicorn.Server):
    """`uvicorn.Server` with phased shutdown driven by a `Lifecycle`.

    A second SIGINT/SIGTERM forces the remaining waits to end at once.
    """

    def __init__(self, config: uvicorn.Config, lifecycle: Lifecycle) -> None:
        super().__init__(config)
        self.lifecycle = lifecycle
        self.phase_durations: dict[str, float] = {}

    # -- signals: record only ----------------------------------------------------------

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit:
            self.force_exit = True
        self.lifecycle.record_shutdown_request(sig)
        self.should_exit = True

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            self.lifecycle.phase = Phase.SERVING

    async def main_loop(self) -> None:
        await super().main_loop()
        # A shutdown not caused by a signal (e.g. max requests) still counts from now.
        if self.lifecycle.shutdown_requested_at is None:
            self.lifecycle.record_shutdown_request(signal.SIGTERM)

    # -- the phases ------------------------------------------------------------------

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        lifecycle = self.lifecycle
        config = lifecycle.config
        logger.info("Shutdown started (signal %s)", _signal_name(lifecycle.shutdown_signal))

        with self._phase(Phase.DELAY):
            await self._delay()

        with self._phase(Phase.CLOSING):
            for server in self.servers:
                server.close()
            for sock in sockets or []:
                sock.close()

        with self._phase(Phase.DRAINING):
            if config.drain:
                await self._drain()
            else:
                self._abort_all("drain is off")

        with self._phase(Phase.APP_SHUTDOWN):
            if not self.force_exit:
                await self.lifespan.shutdown()
        lifecycle.phase = Phase.STOPPED
        # uvicorn re-raises a captured signal after shutdown, so the process would die by
        # SIGTERM; a clean graceful shutdown exits 0 instead.
        self._captured_signals.clear()
        total = time.monotonic() - (lifecycle.shutdown_requested_at or time.monotonic())
        logger.info("Shutdown finished in %.2f s", total)

    async def _delay(self) -> None:
        config = self.lifecycle.config
        started = time.monotonic()
        if config.pre_close_delay > 0:
            await self._wait(lambda: False, config.pre_close_delay, "pre-close delay")
        if config.quiet_period > 0:
            limit = max(0.0, config.quiet_max - (time.monotonic() - started))

            # Quiet is counted from SIGTERM at the earliest: a pod idle at that moment
            # may still be in a load balancer's list for a while.
            since = self.lifecycle.shutdown_requested_at or time.monotonic()

            def quiet() -> bool:
                last = max(self.lifecycle.last_activity, since)
                return time.monotonic() - last >= config.quiet_period

            if not await self._wait(quiet, limit, "quiet period"):
                logger.warning("Still receiving requests after %.2f s; closing anyway", limit)

    async def _drain(self) -> None:
        for connection in list(self.server_state.connections):
            connection.shutdown()  # idle ones close now, busy ones after their response
        drained = await self._wait(
            lambda: not self.server_state.connections,
            self.lifecycle.config.drain_timeout,
            "in-flight requests",
        )
        if not drained:
            self._abort_all("drain time is up")
        for server in self.servers:
            # Python 3.12+ also waits here for connections; aborted ones may lag a little.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.wait_closed(), 1.0)

    def _abort_all(self, why: str) -> None:
        connections = list(self.server_state.connections)
        tasks = list(self.server_state.tasks)
        for connection in connections:
            transport = getattr(connection, "transport", None)
            if transport is not None:
                transport.abort()
        for task in tasks:
            task.cancel()
        if connections or tasks:
            logger.warning(
                "Aborted %d connection(s) and %d request(s): %s",
                len(connections),
                len(tasks),
                why,
            )

    async def _wait(self, done: Callable[[], bool], limit: float | None, what: str) -> bool:
        """Wait until `done()`, at most `limit` s and never past the budget or a forced
        exit. True when `done()` came true."""
        limit = self.lifecycle.remaining(limit)
        deadline = None if limit is None else time.monotonic() + limit
        counter = 0
        while not done():
            if self.force_exit:
                logger.warning("Forced exit: stopped waiting for %s", what)
                return False
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(POLL)
            counter += 1
            if counter % 20 == 0:
                await self.on_tick(0)  # keeps the Date header fresh while we still serve
        return True

    @contextlib.contextmanager
    def _phase(self, phase: Phase) -> Iterator[None]:
        self.lifecycle.phase = phase
        started = time.monotonic()
        try:
            yield
        finally:
            took = time.monotonic() - started
            self.phase_durations[phase.value] = took
            logger.info("Shutdown phase %s took %.3f s", phase.value, took)


def _signal_name(signum: int | None) -> str:
    if signum is None:
        return "none"
    try:
        return signal.Signals(signum).name
    except ValueError:
        return str(signum)
