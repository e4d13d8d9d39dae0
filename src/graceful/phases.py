"""What every server adapter shares: the delay phase (keep serving after SIGTERM for the
pre-close delay, then until no request came for the quiet period, within its limit), and
the timing of each phase."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterator

from graceful.lifecycle import Lifecycle, Phase

logger = logging.getLogger("graceful.server")

#: wait(done, limit, what) -> True when done() came true within limit (and the budget).
Wait = Callable[[Callable[[], bool], float | None, str], Awaitable[bool]]


async def run_delay(lifecycle: Lifecycle, wait: Wait, hurried: Callable[[], bool]) -> None:
    if lifecycle.worker_exit is not None:
        # Only this process leaves: the load balancer keeps sending to the pod, whose
        # listener stays open in the process taking this one's place. Nothing to wait for.
        return
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


@contextlib.contextmanager
def timed_phase(
    lifecycle: Lifecycle, durations: dict[str, float], phase: Phase, log: logging.Logger
) -> Iterator[None]:
    """Enter `phase`; on leaving, record and log how long it took."""
    lifecycle.phase = phase
    started = time.monotonic()
    try:
        yield
    finally:
        took = time.monotonic() - started
        durations[phase.value] = took
        log.info("Shutdown phase %s took %.3f s", phase.value, took)


def report_exit_at_once(lifecycle: Lifecycle, why: str, log: logging.Logger) -> None:
    """What every adapter's forced exit says before the process ends with no cleanup: the
    app's last words (`before_forced_exit`, e.g. losses a rate limit held back), what
    stays unwritten, and the log handlers flushed."""
    lifecycle.run_before_forced_exit()
    unwritten = lifecycle.unwritten()
    listed = ", ".join(f"{n} {what}" for what, n in unwritten.items()) or "nothing counted"
    log.error(
        "Exiting at once (%s) in phase %s: left unwritten: %s; %d request(s) still running",
        why,
        lifecycle.phase.value,
        listed,
        lifecycle.in_flight,
    )
    for handler in logging.getLogger().handlers + log.handlers:
        with contextlib.suppress(Exception):
            handler.flush()
