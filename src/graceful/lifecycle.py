"""State shared by the server, the middleware and the app: phase, in-flight requests,
last activity and the shutdown deadline."""

from __future__ import annotations

import enum
import time

from graceful.config import ShutdownConfig


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
        self.in_flight = 0
        self.last_activity = time.monotonic()

    # -- recorded by the signal handler ----------------------------------------------------

    def record_shutdown_request(self, signum: int) -> None:
        """Safe to call from a signal handler: plain attribute writes only."""
        if self.shutdown_requested_at is None:
            self.shutdown_requested_at = time.monotonic()
            self.shutdown_signal = signum

    # -- read by everyone ----------------------------------------------------------------

    @property
    def shutting_down(self) -> bool:
        return self.shutdown_requested_at is not None

    @property
    def ready(self) -> bool:
        """What readiness should answer: false from SIGTERM on when the flip is on, and
        in any case once the listener is closing."""
        if self.phase not in (Phase.SERVING, Phase.DELAY):
            return False
        return not (self.config.readiness_flip and self.shutting_down)

    @property
    def close_connections(self) -> bool:
        """Whether responses should carry `Connection: close` now."""
        return self.config.connection_close and self.shutting_down

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

    # -- request bookkeeping (middleware) -------------------------------------------------

    def request_started(self, counts_as_activity: bool) -> None:
        self.in_flight += 1
        if counts_as_activity:
            self.last_activity = time.monotonic()

    def request_finished(self) -> None:
        self.in_flight -= 1
