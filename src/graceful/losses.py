"""Counting and logging lost items by reason, so that no kind of loss goes unlogged.

Each reason has its own running total and its own log schedule: the first loss of a
reason is logged at once; later ones at most once a second, summed, and a timer makes
sure the last of a burst is logged within a second even when no further loss comes.
One reason never hides another (a shared counter once let 490 buffer-full drops pass
unlogged after 3 rejected writes).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

#: The reasons the batching writer uses.
BUFFER_FULL = "buffer_full"  # the buffer was at its cap when the item came
REJECTED = "rejected"  # the sink refused the item for good (bad data, too large alone)
WRITE_FAILED = "write_failed"  # a write failed and the writer has no retry policy
SHUTDOWN = "shutdown"  # dropped at shutdown (no flush, or the time was up)
CLOSED = "closed"  # the item came after the writer closed
REASONS = (BUFFER_FULL, REJECTED, WRITE_FAILED, SHUTDOWN, CLOSED)


class LossLog:
    """Running totals by reason; `add` counts and logs (rate-limited per reason)."""

    def __init__(
        self,
        what: str,
        logger: logging.Logger,
        every: float = 1.0,
        verb: str = "Lost",
        at_once: frozenset[str] = frozenset(),
    ) -> None:
        self.what = what
        # Reasons logged at every loss: those that come at most once per write attempt,
        # which the backoff already spaces out. A process killed a moment later (SIGKILL
        # or a forced exit) then leaves none of them unlogged.
        self.at_once = at_once
        self.verb = verb
        self.logger = logger
        self.every = every
        self.totals: Counter[str] = Counter()
        self._unlogged: Counter[str] = Counter()
        self._detail: dict[str, str] = {}
        self._logged_at: dict[str, float] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}

    @property
    def total(self) -> int:
        return sum(self.totals.values())

    def add(self, reason: str, n: int, detail: str) -> None:
        if n <= 0:
            return
        self.totals[reason] += n
        self._unlogged[reason] += n
        self._detail[reason] = detail
        last = self._logged_at.get(reason)
        now = time.monotonic()
        if last is None or now - last >= self.every or reason in self.at_once:
            self._emit(reason)
            return
        if reason not in self._timers:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop to remind us later: say it now
                self._emit(reason)
                return
            self._timers[reason] = loop.call_at(
                loop.time() + (last + self.every - now), self._emit, reason
            )

    def flush(self) -> None:
        """Log every loss not yet logged, now (at close: no timer may outlive us)."""
        for reason in list(self._unlogged):
            self._emit(reason)

    def _emit(self, reason: str) -> None:
        timer = self._timers.pop(reason, None)
        if timer is not None:
            timer.cancel()
        n = self._unlogged.pop(reason, 0)
        if n == 0:
            return
        self._logged_at[reason] = time.monotonic()
        self.logger.error(
            "%s %d %s (%s: %s); %d %s so far, %d %s so far in all",
            self.verb,
            n,
            self.what,
            reason,
            self._detail.get(reason, ""),
            self.totals[reason],
            reason,
            self.total,
            self.verb.lower(),
        )
