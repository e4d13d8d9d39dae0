"""State shared by the server, the middleware and the app: phase, in-flight requests,
last activity, the shutdown deadline, and what the app would leave unwritten."""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable

from graceful.config import ShutdownConfig

logger = logging.getLogger("graceful.lifecycle")


class Phase(enum.Enum):
    STARTING = "starting"
    SERVING = "serving"
    DELAY = "delay"
    CLOSING = "closing"
    DRAINING = "draining"
    APP_SHUTDOWN = "app-shutdown"
    STOPPED = "stopped"


class Lifecycle:
    """One per process. The signal handler only calls `record_shutdown_request`."""

    def __init__(self, config: ShutdownConfig) -> None:
        self.config = config
        self.phase = Phase.STARTING
        self.shutdown_requested_at: float | None = None
        self.shutdown_signal: int | None = None
        # Why this process leaves while the pod stays (a gunicorn worker the master
        # replaces); None for the pod's own shutdown. See `record_worker_exit`.
        self.worker_exit: str | None = None
        self.in_flight = 0
        self.last_activity = time.monotonic()
        # Set by the server just before it cancels request handlers (drain off, drain time
        # up, or a second SIGINT): the middleware then counts a cancellation as ours.
        self.aborting_requests = False
        self.requests_cancelled = 0
        self.requests_finished_late = 0
        self._unwritten: list[tuple[str, Callable[[], int]]] = []
        self._before_forced_exit: list[Callable[[], None]] = []

    # -- recorded by the signal handler ----------------------------------------------------

    def record_shutdown_request(self, signum: int) -> None:
        """Safe to call from a signal handler: plain attribute writes only."""
        if self.shutdown_requested_at is None:
            self.shutdown_requested_at = time.monotonic()
            self.shutdown_signal = signum

    def record_worker_exit(self, why: str) -> None:
        """This process leaves but the pod stays: another process takes its place on the
        same listener (a gunicorn worker on `--max-requests`, or stopped by a reload).
        The shutdown then stops accepting and drains only: readiness stays the pod's, no
        `Connection: close`, no delay. Plain attribute writes: safe in a signal handler."""
        if self.shutdown_requested_at is None:
            self.shutdown_requested_at = time.monotonic()
        self.worker_exit = why

    def record_pod_shutdown(self) -> None:
        """The pod goes away after all (while this process was leaving on its own): from
        now on readiness, `Connection: close` and the rest are the pod's shutdown's."""
        self.worker_exit = None

    # -- read by everyone ----------------------------------------------------------------

    @property
    def shutting_down(self) -> bool:
        return self.shutdown_requested_at is not None

    @property
    def ready(self) -> bool:
        """What readiness should answer: false from SIGTERM on when the flip is on, and
        in any case once the listener is closing. A process that leaves while the pod
        stays answers as the pod: ready (whoever asks it now came in before it stopped
        accepting; the next connections go to the process that takes its place)."""
        if self.worker_exit is not None:
            return self.phase is not Phase.STARTING
        if self.phase not in (Phase.SERVING, Phase.DELAY):
            return False
        return not (self.config.readiness_flip and self.shutting_down)

    @property
    def close_connections(self) -> bool:
        """Whether responses should carry `Connection: close` now: not when only this
        process leaves (its drain closes each connection after its response, and uvicorn
        says so in that response)."""
        return self.config.connection_close and self.shutting_down and self.worker_exit is None

    def deadline(self) -> float | None:
        """Monotonic time by which every phase must be over, or None without a budget."""
        if not self.config.enforce_budget or self.shutdown_requested_at is None:
            return None
        return self.shutdown_requested_at + self.config.grace_period - self.config.safety_margin

    def remaining(self, limit: float | None) -> float | None:
        """`limit` seconds cut down to what the budget leaves (None = unbounded)."""
        deadline = self.deadline()
        if deadline is None:
            return limit
        left = max(0.0, deadline - time.monotonic())
        return left if limit is None else min(limit, left)

    # -- what a forced exit would leave behind ------------------------------------------

    def report_unwritten(self, what: str, count: Callable[[], int]) -> None:
        """Register how the app counts work it accepted but has not finished writing (e.g.
        buffered points). A forced exit logs each count before the process ends."""
        self._unwritten.append((what, count))

    def before_forced_exit(self, action: Callable[[], None]) -> None:
        """Register what must still happen when the process ends at once (e.g. log the
        losses a rate limit holds back): it runs before the exit's own log line."""
        self._before_forced_exit.append(action)

    def run_before_forced_exit(self) -> None:
        for action in self._before_forced_exit:
            try:
                action()
            except Exception as exc:  # the exit goes on whatever happens here
                logger.error("Before the forced exit, %r failed: %r", action, exc)

    def unwritten(self) -> dict[str, int]:
        """The registered counts now; a count that fails is logged and reported as -1."""
        counts: dict[str, int] = {}
        for what, count in self._unwritten:
            try:
                counts[what] = count()
            except Exception as exc:
                logger.error("Cannot count unwritten %s: %r", what, exc)
                counts[what] = -1
        return counts

    # -- request bookkeeping (middleware) -------------------------------------------------

    def request_started(self, counts_as_activity: bool) -> None:
        self.in_flight += 1
        if counts_as_activity:
            self.last_activity = time.monotonic()

    def request_finished(self) -> None:
        self.in_flight -= 1
