"""What TaskRegistry and LossLog tell the operator: every line a shutdown of background
tasks logs, and when a loss line comes (at once, then at most once per interval with the
sum, never lost at the end of a burst)."""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import time

import pytest

from graceful import TaskRegistry
from graceful.losses import LossLog

logger = logging.getLogger("graceful.test.losses")


def said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("graceful")]


def test_a_shutdown_that_waits_says_how_many_and_for_how_long(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1. Two tasks of 0.05 s. 2. shutdown(2). 3. It logs that it waits for 2 tasks at
    most 2 s, then that all were done, and returns 0 cut."""

    async def scenario() -> int:
        registry = TaskRegistry("log-operation")
        registry.spawn(asyncio.sleep(0.05))
        registry.spawn(asyncio.sleep(0.05))
        return await registry.shutdown(2)

    with caplog.at_level(logging.INFO, logger="graceful"):
        assert asyncio.run(scenario()) == 0
    lines = said(caplog)
    assert lines[0] == "Waiting for 2 log-operation task(s), at most 2 s"
    assert re.fullmatch(r"All log-operation tasks done in 0\.0\d s", lines[1]), lines
    assert len(lines) == 2


def test_a_shutdown_without_a_limit_waits_for_every_task(caplog: pytest.LogCaptureFixture) -> None:
    """shutdown(None): 1. A task of 0.2 s. 2. It is awaited to its end, not cut."""

    async def scenario() -> tuple[int, TaskRegistry]:
        registry = TaskRegistry("work")
        registry.spawn(asyncio.sleep(0.2))
        return await registry.shutdown(None), registry

    with caplog.at_level(logging.INFO, logger="graceful"):
        cut, registry = asyncio.run(scenario())
    assert (cut, registry.finished, registry.cancelled) == (0, 1, 0)
    assert said(caplog)[0] == "Waiting for 1 work task(s), at most None s"


def test_no_time_left_cuts_at_once_and_says_the_work_is_lost(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """shutdown(0) (the budget is spent): 1. Two tasks of 5 s. 2. Both are cut at once,
    with no "waiting" line, and an error says their work is lost."""

    async def scenario() -> tuple[int, float]:
        registry = TaskRegistry("work")
        registry.spawn(asyncio.sleep(5))
        registry.spawn(asyncio.sleep(5))
        started = time.monotonic()
        return await registry.shutdown(0), time.monotonic() - started

    with caplog.at_level(logging.INFO, logger="graceful"):
        cut, took = asyncio.run(scenario())
    assert cut == 2 and took < 0.3
    lines = said(caplog)
    assert len(lines) == 1
    assert re.fullmatch(r"Cancelled 2 work task\(s\) after 0\.0\d s: their work is lost", lines[0])
    assert caplog.records[-1].levelname == "ERROR"


def test_a_task_that_ignores_its_cancellation_gets_one_second(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1. A task that goes on 3 s after its cancellation, one that finishes its work
    (0.2 s) when cancelled. 2. shutdown(0.1): both cancelled; after 1 s the first is
    counted cut and the shutdown returns; the second is logged as having finished."""

    async def stubborn() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(3)

    async def finishes() -> None:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            await asyncio.sleep(0.2)

    async def scenario() -> tuple[int, float]:
        registry = TaskRegistry("work")
        registry.spawn(stubborn())
        registry.spawn(finishes())
        await asyncio.sleep(0)
        started = time.monotonic()
        cut = await registry.shutdown(0.1)
        took = time.monotonic() - started
        for task in asyncio.all_tasks() - {asyncio.current_task()}:
            task.cancel()
        return cut, took

    with caplog.at_level(logging.INFO, logger="graceful"):
        cut, took = asyncio.run(scenario())
    assert cut == 1
    assert 1.05 <= took < 1.6
    lines = said(caplog)
    assert re.fullmatch(
        r"Cancelled 1 work task\(s\) after 1\.1\d s: their work is lost", lines[1]
    ), lines
    assert lines[2] == "1 work task(s) finished their work when cancelled"


def test_a_failed_task_is_logged_with_its_error(caplog: pytest.LogCaptureFixture) -> None:
    """1. A task named "write-7" raises. 2. It is counted failed and logged by name with
    the error."""

    async def boom() -> None:
        raise ValueError("disk on fire")

    async def scenario() -> TaskRegistry:
        registry = TaskRegistry("work")
        task = registry.spawn(boom(), name="write-7")
        await asyncio.wait({task})
        return registry

    with caplog.at_level(logging.INFO, logger="graceful"):
        registry = asyncio.run(scenario())
    assert (registry.started, registry.failed, registry.finished, len(registry)) == (1, 1, 0, 0)
    assert said(caplog) == ["task write-7 failed: ValueError('disk on fire')"]


def test_a_spawn_after_shutdown_is_refused_and_its_coroutine_closed() -> None:
    """1. A registry shut down. 2. spawn raises, naming the registry, and the coroutine is
    closed (never "never awaited")."""

    async def work() -> None:
        return None

    async def scenario() -> None:
        registry = TaskRegistry("log-operation")
        assert await registry.shutdown(1) == 0
        coroutine = work()
        with pytest.raises(RuntimeError, match=r"^task registry 'log-operation' is shut down$"):
            registry.spawn(coroutine)
        assert inspect.getcoroutinestate(coroutine) == inspect.CORO_CLOSED

    asyncio.run(scenario())


def test_the_first_loss_is_logged_at_once_then_summed_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1. A loss log with a 0.3 s interval on a running loop. 2. A loss, then four more
    within 0.1 s. 3. The first is logged at once; the four are logged as one line when
    the interval is up (no further loss needed), with the running total; another reason
    has its own schedule and is logged at once."""

    async def scenario() -> LossLog:
        log = LossLog("points", logger, every=0.3)
        log.add("buffer_full", 1, "buffer full (10)")
        for _ in range(4):
            await asyncio.sleep(0.02)
            log.add("buffer_full", 1, "buffer full (10)")
        log.add("closed", 2, "writer closed")
        await asyncio.sleep(0.45)
        return log

    with caplog.at_level(logging.INFO, logger="graceful"):
        started = time.time()
        log = asyncio.run(scenario())
    lines = said(caplog)
    assert lines == [
        "Lost 1 points (buffer_full: buffer full (10)); 1 buffer_full so far, 1 lost so far in all",
        "Lost 2 points (closed: writer closed); 2 closed so far, 7 lost so far in all",
        "Lost 4 points (buffer_full: buffer full (10)); 5 buffer_full so far, 7 lost so far in all",
    ]
    at = [r.created - started for r in caplog.records]
    assert at[2] - at[0] >= 0.28 and at[2] - at[0] < 0.45, at
    assert log.totals == {"buffer_full": 5, "closed": 2} and log.total == 7
    assert all(r.levelname == "ERROR" for r in caplog.records)


def test_flush_logs_what_is_held_back_and_stops_the_timer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1. Two losses within the interval: the second is held back. 2. flush: it is logged
    now, once (the timer does not log it again), with the verb the log was made with."""

    async def scenario() -> None:
        log = LossLog("lines", logger, every=0.2, verb="Refused")
        log.add("not_accepted", 1, "disk full")
        log.add("not_accepted", 3, "disk full")
        log.flush()
        await asyncio.sleep(0.3)
        log.flush()

    with caplog.at_level(logging.INFO, logger="graceful"):
        asyncio.run(scenario())
    assert said(caplog) == [
        "Refused 1 lines (not_accepted: disk full); 1 not_accepted so far, 1 refused so far in all",
        "Refused 3 lines (not_accepted: disk full); 4 not_accepted so far, 4 refused so far in all",
    ]


def test_without_a_loop_every_loss_is_logged_at_once_and_none_count_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1. Losses counted where no event loop runs (nothing could remind us later). 2. Each
    is logged at once. 3. A loss of 0 items counts and logs nothing."""
    log = LossLog("points", logger, every=60)
    with caplog.at_level(logging.INFO, logger="graceful"):
        log.add("shutdown", 2, "time is up")
        log.add("shutdown", 3, "time is up")
        log.add("rejected", 0, "nothing")
    assert said(caplog) == [
        "Lost 2 points (shutdown: time is up); 2 shutdown so far, 2 lost so far in all",
        "Lost 3 points (shutdown: time is up); 5 shutdown so far, 5 lost so far in all",
    ]
    assert dict(log.totals) == {"shutdown": 5}


def test_reasons_logged_at_every_loss(caplog: pytest.LogCaptureFixture) -> None:
    """A reason named `at_once` (one per write attempt, which the backoff spaces out) is
    logged at every loss, even within the interval, on a running loop."""

    async def scenario() -> None:
        log = LossLog("points", logger, every=60, at_once=frozenset({"rejected"}))
        log.add("rejected", 1, "bad")
        log.add("rejected", 1, "bad")
        log.add("buffer_full", 1, "full")
        log.add("buffer_full", 1, "full")
        log.flush()

    with caplog.at_level(logging.INFO, logger="graceful"):
        asyncio.run(scenario())
    assert [m.split(";")[1].strip() for m in said(caplog)] == [
        "1 rejected so far, 1 lost so far in all",
        "2 rejected so far, 2 lost so far in all",
        "1 buffer_full so far, 3 lost so far in all",
        "2 buffer_full so far, 4 lost so far in all",
    ]


def test_the_counts_add_up_over_many_tasks() -> None:
    """1. Five tasks: two finish, two fail, one is still running at shutdown(0.2).
    2. started 5, finished 2, failed 2, cancelled 1: every task counted once."""

    async def boom() -> None:
        raise ValueError("boom")

    async def scenario() -> TaskRegistry:
        registry = TaskRegistry("work")
        for coroutine in (asyncio.sleep(0), asyncio.sleep(0), boom(), boom(), asyncio.sleep(5)):
            registry.spawn(coroutine)
        assert await registry.shutdown(0.2) == 1
        return registry

    registry = asyncio.run(scenario())
    assert (registry.started, registry.finished, registry.failed, registry.cancelled) == (
        5,
        2,
        2,
        1,
    )


def test_two_tasks_cut_count_two() -> None:
    """shutdown(0) with two tasks running: both counted cancelled, none finished."""

    async def scenario() -> TaskRegistry:
        registry = TaskRegistry("work")
        registry.spawn(asyncio.sleep(5))
        registry.spawn(asyncio.sleep(5))
        assert await registry.shutdown(0) == 2
        return registry

    registry = asyncio.run(scenario())
    assert (registry.cancelled, registry.finished, len(registry)) == (2, 0, 0)


def test_after_a_reminder_fired_the_next_held_loss_gets_its_own(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Interval 0.1 s. 1. A loss (logged), another held back, logged by the reminder.
    2. One more loss right after that reminder: held back again, and logged by a new
    reminder within the interval (not left until some later loss)."""

    async def scenario() -> None:
        log = LossLog("points", logger, every=0.1)
        log.add("buffer_full", 1, "full")
        await asyncio.sleep(0.02)
        log.add("buffer_full", 1, "full")
        await asyncio.sleep(0.12)  # the reminder fires meanwhile
        log.add("buffer_full", 1, "full")
        await asyncio.sleep(0.2)  # the next reminder is due within 0.1 s

    with caplog.at_level(logging.INFO, logger="graceful"):
        asyncio.run(scenario())
    assert [m.split(";")[1].strip() for m in said(caplog)] == [
        "1 buffer_full so far, 1 lost so far in all",
        "2 buffer_full so far, 2 lost so far in all",
        "3 buffer_full so far, 3 lost so far in all",
    ]
