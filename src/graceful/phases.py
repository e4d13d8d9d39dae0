"""The delay phase, shared by every server adapter: keep serving after SIGTERM for the
pre-close delay, then until no request came for the quiet period, within its limit."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from graceful.lifecycle import Lifecycle

logger = logging.getLogger("graceful.server")

#: wait(done, limit, what) -> True when done() came true within limit (and the budget).
Wait = Callable[[Callable[[], bool], float | None, str], Awaitable[bool]]


async def run_delay(lifecycle: Lifecycle, wait: Wait, hurried: Callable[[], bool]) -> None:
    config = lifecycle.config
    started = time.monotonic()
    if config.pre_close_delay > 0:
        await wait(lambda: False, config.pre_close_delay, "pre-close delay")
    if config.quiet_period > 0 and not hurried():
        limit = max(0.0, config.quiet_max - (time.monotonic() - started))

        # Quiet is counted from SIGTERM at the earliest: a pod idle at that moment may
        # still be in a load balancer's list for a while.
        since = lifecycle.shutdown_requested_at or time.monotonic()

        def quiet() -> bool:
            last = max(lifecycle.last_activity, since)
            return time.monotonic() - last >= config.quiet_period

        if not await wait(quiet, limit, "quiet period") and not hurried():
            logger.warning("Still receiving requests after %.2f s; closing anyway", limit)
