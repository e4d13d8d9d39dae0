"""BatchWriter's background loop at its edges: the answers of a sink while the writer
runs (not only at close), each settled by the loop itself within its own limits."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from graceful import BatchTooLargeError, BatchWriter, RetryPolicy
from tests.graceful.test_batcher_faults import FlakyJournal, ScriptedSink
from tests.graceful.test_batcher_log import said
from tests.graceful.test_tasks_and_batcher import eventually

#: No jitter: each pause is exact (0.1 s, then 0.2 s, ...).
EXACT = RetryPolicy(initial=0.1, maximum=0.4, multiplier=2.0, jitter=0.0)


class TimedSink:
    """Answers the nth write with script[n] (an exception to raise, or None to store),
    after `first_delay` for the first write only; stores the rest. Records each
    attempt's items and the time each answer was given."""

    def __init__(self, script: Sequence[BaseException | None], first_delay: float) -> None:
        self.script = list(script)
        self.first_delay = first_delay
        self.attempts: list[list[str]] = []
        self.answered: list[float] = []
        self.stored: list[str] = []

    async def write(self, items: Sequence[str]) -> None:
        self.attempts.append(list(items))
        if len(self.attempts) == 1:
            await asyncio.sleep(self.first_delay)
        outcome = self.script.pop(0) if self.script else None
        self.answered.append(time.monotonic())
        if outcome is not None:
            raise outcome
        self.stored.extend(items)


async def a_full_batch_then_three_more(writer: BatchWriter[str], sink: TimedSink) -> None:
    """Items a and b (a full batch of 2, written at once); once it was tried, c, d, e."""
    writer.add("a")
    writer.add("b")
    await eventually(lambda: len(sink.attempts) == 1, 2)
    for item in "cde":
        writer.add(item)


def test_the_running_writer_halves_a_batch_too_large_until_it_fits() -> None:
    """1. A started writer, batches of 4, a retry policy whose pause (5 s) would show;
    the sink refuses any write of more than one item. 2. Four items: a full batch,
    written by the running loop. 3. It tries 4, then 2, then one at a time: attempts
    of 4, 2, 1, 1, 1, 1; every item stored in order, none lost, no crash, no pause."""
    sizes: list[int] = []
    stored: list[str] = []

    async def one_at_a_time(items: Sequence[str]) -> None:
        sizes.append(len(items))
        if len(items) > 1:
            raise BatchTooLargeError("InfluxDB 413: Request Entity Too Large")
        stored.extend(items)

    async def scenario() -> tuple[BatchWriter[str], float]:
        writer = BatchWriter(one_at_a_time, max_batch=4, interval=30, retry=RetryPolicy(5, 5))
        writer.start()
        started = time.monotonic()
        for item in "abcd":
            writer.add(item)
        try:
            await eventually(lambda: writer.written == 4 or len(sizes) > 20, 2)
            return writer, time.monotonic() - started
        finally:
            await writer.close(0.5)

    writer, took = asyncio.run(scenario())
    assert sizes == [4, 2, 1, 1, 1, 1]
    assert stored == list("abcd")
    assert (writer.written, writer.lost, writer.crashes, writer.backing_off) == (4, 0, 0, False)
    assert took < 1


def test_the_running_writer_splits_only_what_is_due() -> None:
    """1. A started writer, batches of 4; the sink refuses any write of more than 2
    items. 2. Six items come at once: one full batch is due (the other two wait for the
    interval). 3. The loop tries 4, then halves of what is due: 2 and 2; the two left
    wait. 4. At close they go in one write of 2: attempts 4, 2, 2, 2, nothing lost."""
    sizes: list[int] = []

    async def two_at_most(items: Sequence[str]) -> None:
        sizes.append(len(items))
        if len(items) > 2:
            raise BatchTooLargeError("413")

    async def scenario() -> tuple[BatchWriter[str], int]:
        writer = BatchWriter(two_at_most, max_batch=4, interval=30)
        for item in "abcdef":
            writer.add(item)
        writer.start()  # woken at once: the fourth add found a full batch
        try:
            await eventually(lambda: writer.written == 4 or len(sizes) > 20, 2)
            await asyncio.sleep(0.05)  # the loop is back to its interval wait: nothing more
            pending = writer.pending
        finally:
            await writer.close(1)
        return writer, pending

    writer, pending = asyncio.run(scenario())
    assert pending == 2
    assert sizes == [4, 2, 2, 2]
    assert (writer.written, writer.lost, writer.crashes) == (6, 0, 0)


def test_the_running_writer_gives_up_a_stalled_write_at_its_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1. A started writer, batches of 2, write_timeout 0.1 s, fast retries; the sink's
    first write never answers (it waits until cancelled), later writes succeed. 2. Two
    items: the loop writes them. 3. After 0.1 s the stalled write is cancelled, counted
    failed and logged as having had no answer within 0.1 s; the retry writes both: 2
    written, 2 attempts, 1 failed, none lost, well within a second."""
    calls: list[list[str]] = []
    cancelled: list[bool] = []

    async def stalls_once(items: Sequence[str]) -> None:
        calls.append(list(items))
        if len(calls) == 1:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

    async def scenario() -> tuple[BatchWriter[str], float]:
        writer = BatchWriter(
            stalls_once,
            max_batch=2,
            interval=30,
            write_timeout=0.1,
            retry=RetryPolicy(initial=0.01, maximum=0.05),
        )
        writer.start()
        started = time.monotonic()
        writer.add("a")
        writer.add("b")
        try:
            await eventually(lambda: writer.written == 2, 2)
            return writer, time.monotonic() - started
        finally:
            await writer.close(0.5)

    with caplog.at_level(logging.WARNING, logger="graceful.batcher"):
        writer, took = asyncio.run(scenario())
    assert [line.split("; will retry")[0] for line in said(caplog)] == [
        "Writing 2 items failed (TimeoutError('no answer within 0.1 s'))"
    ]
    assert calls == [["a", "b"], ["a", "b"]]
    assert cancelled == [True]
    assert (writer.written, writer.lost, writer.attempts, writer.failed_writes) == (2, 0, 2, 1)
    assert 0.1 <= took < 1


def test_a_trickle_of_items_does_not_put_off_the_interval_write() -> None:
    """1. A started writer, batches of 100, interval 0.2 s. 2. One item every 0.02 s for
    0.5 s: never a full batch. 3. The interval is not restarted by each add: the first
    write comes about 0.2 s after the start, while the items still trickle in, before
    the write at close."""
    times: list[float] = []

    async def sink(items: Sequence[int]) -> None:
        times.append(time.monotonic())

    async def scenario() -> float:
        writer = BatchWriter(sink, max_batch=100, interval=0.2)
        writer.start()
        started = time.monotonic()
        try:
            for i in range(25):
                writer.add(i)
                await asyncio.sleep(max(0.0, started + (i + 1) * 0.02 - time.monotonic()))
        finally:
            await writer.close(1)
        return started

    started = asyncio.run(scenario())
    # Written at about 0.2 s (and 0.4 s) while the adds go on until 0.5 s, then at close;
    # an interval restarted by each add would write nothing before the close.
    assert len(times) >= 2
    assert 0.15 <= times[0] - started < 0.45


def test_the_smallest_settings_are_taken_and_one_past_them_refused(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1. A writer with batches of 1, a buffer of 1 and an interval of 1 ms is made.
    2. One item is taken; a second, with the buffer full, is counted lost (buffer
    full) and logged with the cap. 3. At close the one item is written: close reports
    0 lost (the earlier loss was not its own). 4. Interval 0 or below, a batch of 0,
    or a buffer smaller than a batch is refused with a clear error."""
    stored: list[int] = []

    async def sink(items: Sequence[int]) -> None:
        stored.extend(items)

    async def scenario() -> tuple[BatchWriter[int], list[bool | int]]:
        writer = BatchWriter(sink, max_batch=1, max_buffer=1, interval=0.001)
        taken = [writer.add(1), writer.add(2)]
        lost_at_close = await writer.close(1)
        return writer, [*taken, lost_at_close]

    with caplog.at_level(logging.ERROR, logger="graceful.batcher"):
        writer, taken = asyncio.run(scenario())
    assert said(caplog) == [
        "Lost 1 items (buffer_full: buffer full (1)); 1 buffer_full so far, 1 lost so far in all"
    ]
    assert taken == [True, False, 0]  # close counts only what it lost itself
    assert stored == [1]
    assert (writer.written, dict(writer.losses.totals)) == (1, {"buffer_full": 1})
    for kwargs in (
        {"interval": 0.0},
        {"interval": -1.0},
        {"max_batch": 0, "max_buffer": 1},
        {"max_batch": 2, "max_buffer": 1},
    ):
        with pytest.raises(
            ValueError, match=r"^need max_batch >= 1, max_buffer >= max_batch and interval > 0$"
        ):
            BatchWriter(sink, **kwargs)


def test_a_write_and_a_close_under_way_are_tasks_named_for_the_writer() -> None:
    """1. A started writer named points, batches of 1; the sink holds its write until
    released. 2. While the write is under way, the loop's tasks include batch-writer-
    points and batch-write-points (the names a task dump or a shutdown log shows).
    3. A close begun meanwhile runs as batch-writer-close-points. 4. Released, the write
    ends and the close returns 0 lost."""
    release = asyncio.Event()

    async def held(items: Sequence[str]) -> None:
        await release.wait()

    def names() -> set[str]:
        return {t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("batch")}

    async def scenario() -> tuple[set[str], set[str], int]:
        writer = BatchWriter(held, name="points", max_batch=1, interval=30)
        writer.start()
        writer.add("a")
        await eventually(lambda: writer.attempts == 1, 2)
        writing = names()
        closing = asyncio.ensure_future(writer.close(2))
        await asyncio.sleep(0)
        during_close = names()
        release.set()
        return writing, during_close, await closing

    writing, during_close, lost = asyncio.run(scenario())
    assert writing == {"batch-writer-points", "batch-write-points"}
    assert "batch-writer-close-points" in during_close
    assert lost == 0


def test_a_wake_during_the_pause_keeps_it_and_the_backoff_starts_over_after_a_success(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1. A started writer, batches of 2, exact pauses from 0.1 s; the sink's first
    write takes 0.05 s and fails, its sixth and eighth fail at once, every other write
    succeeds.
    2. a, b: a full batch, written; c, d, e come while that write runs (a full batch:
    the writer is woken). 3. The failure starts a 0.1 s pause that this wake does not cut
    short, nor end the writer: the retry comes 0.1 s after the failure and writes all
    five (2, 2, 1). 4. f, g, h, i: two full batches; the first is written, the second
    fails: the pause starts over at 0.1 s (not 0.2 s) and the retry writes it. 5. j, k:
    the first write after a flush that ended well fails: again a 0.1 s pause, then
    written. 6. No crash, nothing lost; each failure logged with its 0.1 s pause."""
    down = ConnectionError("down")
    sink = TimedSink([down, None, None, None, None, down, None, down], first_delay=0.05)

    async def scenario() -> BatchWriter[str]:
        writer = BatchWriter(sink.write, max_batch=2, interval=30, retry=EXACT)
        writer.start()
        try:
            await a_full_batch_then_three_more(writer, sink)
            await eventually(lambda: writer.written == 5 or writer.crashes > 0, 2)
            for item in "fghi":
                writer.add(item)
            await eventually(lambda: writer.written == 9 or writer.crashes > 0, 2)
            writer.add("j")
            writer.add("k")
            await eventually(lambda: writer.written == 11 or writer.crashes > 0, 2)
        finally:
            await writer.close(1)
        return writer

    with caplog.at_level(logging.INFO, logger="graceful"):
        writer = asyncio.run(scenario())
    assert sink.attempts == [
        ["a", "b"],
        ["a", "b"],
        ["c", "d"],
        ["e"],
        ["f", "g"],
        ["h", "i"],
        ["h", "i"],
        ["j", "k"],
        ["j", "k"],
    ]
    for failed, retried in ((0, 1), (5, 6), (7, 8)):
        assert 0.1 <= sink.answered[retried] - sink.answered[failed] < 0.5
    assert (writer.written, writer.lost, writer.crashes, writer.failed_writes) == (11, 0, 0, 3)
    retry_lines = [line for line in said(caplog) if "will retry" in line]
    assert (
        retry_lines == ["Writing 2 items failed (ConnectionError('down')); will retry in 0.1 s"] * 3
    )


class BusyLoop(logging.Handler):
    """Stands for other work that holds the event loop: each 'will retry' log line
    schedules 0.15 s of blocking work, to run right after the writer starts its pause."""

    def emit(self, record: logging.LogRecord) -> None:
        if "will retry" in record.getMessage():
            asyncio.get_running_loop().call_soon(time.sleep, 0.15)


def test_a_pause_that_ends_while_the_loop_is_busy_still_writes_everything_due() -> None:
    """1. A started writer, batches of 2, an exact 0.05 s pause; the sink's first write
    takes 0.05 s and fails. 2. a, b are being written when c, d, e come (the writer is
    woken). 3. Other work holds the loop for 0.15 s right after the failure, so the wake
    and the end of the pause are seen together. 4. The retry is the retry of everything
    due: all five written (2, 2, 1), none left for the 30 s interval."""
    sink = TimedSink([ConnectionError("down")], first_delay=0.05)
    busy = BusyLoop()
    logging.getLogger("graceful.batcher").addHandler(busy)

    async def scenario() -> tuple[BatchWriter[str], int]:
        writer = BatchWriter(
            sink.write, max_batch=2, interval=30, retry=RetryPolicy(0.05, 0.05, jitter=0.0)
        )
        writer.start()
        try:
            await a_full_batch_then_three_more(writer, sink)
            await eventually(lambda: len(sink.attempts) >= 3, 2)
            await eventually(lambda: writer.pending == 0, 0.5)
        finally:
            pending = writer.pending
            await writer.close(1)
        return writer, pending

    try:
        writer, pending = asyncio.run(scenario())
    finally:
        logging.getLogger("graceful.batcher").removeHandler(busy)
    assert pending == 0
    assert sink.attempts == [["a", "b"], ["a", "b"], ["c", "d"], ["e"]]
    assert (writer.written, writer.lost, writer.crashes) == (5, 0, 0)


def test_every_crash_of_the_writer_is_counted_and_logged_with_its_number(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. A spooled writer, batches of 2, a 0.1 s pause before a restart; the journal
    fails its first two settles with a bug. 2. a, b: written, the settle crashes the
    writer (1 so far); restarted. 3. c, d: written, the settle crashes it again (2 so
    far); restarted. 4. e, f: written and settled with what was owed: the spool ends
    empty, 2 crashes counted and each logged with its own number."""
    monkeypatch.setattr("graceful.batcher.RESTART_DELAY", 0.1)

    async def scenario() -> tuple[BatchWriter[str], int]:
        journal = FlakyJournal(tmp_path)
        journal.fail_settle = [RuntimeError("bug in the journal")] * 2
        writer = BatchWriter(
            ScriptedSink().write, name="points", max_batch=2, interval=30, journal=journal
        )
        writer.start()
        try:
            for crashes, pair in enumerate(("ab", "cd"), start=1):
                for item in pair:
                    writer.add(item)
                await eventually(lambda n=crashes: writer.crashes >= n, 2)  # type: ignore[misc]
                await asyncio.sleep(0.15)  # the restart pause (0.1 s) is over
            writer.add("e")
            writer.add("f")
            await eventually(lambda: writer.written == 6, 2)
        finally:
            await writer.close(1)
        return writer, journal.spool.pending

    with caplog.at_level(logging.ERROR, logger="graceful.batcher"):
        writer, in_spool = asyncio.run(scenario())
    assert (writer.crashes, writer.written, in_spool) == (2, 6, 0)
    crashes = [line for line in said(caplog) if "crashed" in line]
    assert crashes == [
        "Points writer crashed (1 so far); restarting in 0.1 s",
        "Points writer crashed (2 so far); restarting in 0.1 s",
    ]


def test_close_gives_up_a_write_that_outlasts_its_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1. A started writer, batches of 2, 5 s per write; the sink never answers (it
    waits until cancelled). 2. Two items: the loop's write hangs. 3. close(0.2): the
    loop's write is not waited for past the close's own deadline: close returns within
    a second, the two items counted lost at shutdown, the log saying a write of them was
    still under way, and the hung write cancelled. 4. No task of the writer is left
    running, and nothing more is counted afterwards."""
    cancelled: list[bool] = []

    async def hangs(items: Sequence[str]) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def scenario() -> tuple[BatchWriter[str], int, float]:
        writer = BatchWriter(hangs, max_batch=2, interval=30, write_timeout=5)
        writer.start()
        writer.add("a")
        writer.add("b")
        await eventually(lambda: writer.attempts == 1, 2)
        started = time.monotonic()
        lost = await writer.close(0.2)
        took = time.monotonic() - started
        await eventually(lambda: bool(cancelled), 1)
        await asyncio.sleep(0.05)  # a writer task left running would count the loss again
        left = [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("batch")]
        assert left == []
        return writer, lost, took

    with caplog.at_level(logging.ERROR, logger="graceful.batcher"):
        writer, lost, took = asyncio.run(scenario())
    assert 0.2 <= took < 1
    assert (lost, dict(writer.losses.totals), cancelled) == (2, {"shutdown": 2}, [True])
    assert said(caplog) == [
        "Lost 2 items (shutdown: shutdown time is up; a write of them was still under way, "
        "its outcome unknown); 2 shutdown so far, 2 lost so far in all"
    ]


def test_a_journal_is_never_asked_to_settle_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """1. A spooled writer, batches of 2: a, b written and settled. 2. The journal now
    fails every settle (its disk went bad). 3. close with nothing owed does not call
    settle at all: no 'Cannot settle' error, the failure still queued, the spool empty."""

    async def scenario() -> FlakyJournal:
        journal = FlakyJournal(tmp_path)
        writer = BatchWriter(
            ScriptedSink().write, name="points", max_batch=2, interval=30, journal=journal
        )
        writer.start()
        writer.add("a")
        writer.add("b")
        await eventually(lambda: writer.written == 2, 2)
        journal.fail_settle = [OSError(5, "I/O error")]
        await writer.close(1)
        return journal

    with caplog.at_level(logging.ERROR, logger="graceful.batcher"):
        journal = asyncio.run(scenario())
    assert said(caplog) == []
    assert (len(journal.fail_settle), journal.spool.pending) == (1, 0)


def test_a_write_cancelled_once_is_never_cancelled_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1. A started writer, batches of 2, 0.1 s per write, 0.01 s pauses; the sink's
    write, once begun, cannot be taken back: cancelled, it still finishes when the test
    releases it (a second cancel would stop it). 2. a, b: the write outlasts 0.1 s and
    is cancelled once; it runs on. 3. Each later try waits for that same write, counted
    failed and logged as still running, and never cancels it again. 4. Released, it
    ends: one attempt, one cancel, both items stored once and counted written."""
    release = asyncio.Event()
    attempts: list[list[str]] = []
    stored: list[str] = []
    cancels: list[str] = []

    async def finishes_once_begun(items: Sequence[str]) -> None:
        attempts.append(list(items))
        work = asyncio.ensure_future(release.wait())
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            cancels.append("first")
            try:
                await work  # begun: finish it
            except asyncio.CancelledError:
                cancels.append("again")
                raise
        stored.extend(items)

    async def scenario() -> BatchWriter[str]:
        writer = BatchWriter(
            finishes_once_begun,
            max_batch=2,
            interval=30,
            write_timeout=0.1,
            retry=RetryPolicy(0.01, 0.01, jitter=0.0),
        )
        writer.start()
        try:
            writer.add("a")
            writer.add("b")
            await eventually(lambda: writer.failed_writes >= 2 or len(cancels) > 1, 2)
            release.set()
            await eventually(lambda: writer.written == 2 or len(attempts) > 1, 2)
        finally:
            await writer.close(1)
        return writer

    with caplog.at_level(logging.WARNING, logger="graceful.batcher"):
        writer = asyncio.run(scenario())
    assert (attempts, stored, cancels) == ([["a", "b"]], ["a", "b"], ["first"])
    still = [line for line in said(caplog) if "still running" in line]
    assert still[0] == (
        "Writing 2 items failed (TimeoutError('a write of 2 is still running after being "
        "cancelled; its answer is awaited before any other write')); will retry in 0.0 s"
    )
    assert len(still) == writer.failed_writes >= 2
    assert (writer.attempts, writer.written, writer.lost) == (1, 2, 0)


def test_without_retry_a_timed_out_write_loses_its_batch_and_only_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1. A writer without a retry policy, batches of 2, 0.1 s per write; the sink's
    first write never answers. 2. a, b, c; close. 3. The first batch (a, b) times out:
    counted lost (write_failed) and logged at once with the timeout; c, in the next
    batch, is written."""
    stored: list[str] = []

    async def stalls_once(items: Sequence[str]) -> None:
        if not stored and "a" in items:
            await asyncio.Event().wait()
        stored.extend(items)

    async def scenario() -> tuple[BatchWriter[str], int]:
        writer = BatchWriter(stalls_once, max_batch=2, interval=30, write_timeout=0.1)
        for item in "abc":
            writer.add(item)
        return writer, await writer.close(2)

    with caplog.at_level(logging.ERROR, logger="graceful.batcher"):
        writer, lost = asyncio.run(scenario())
    assert (stored, lost, writer.written, dict(writer.losses.totals)) == (
        ["c"],
        2,
        1,
        {"write_failed": 2},
    )
    assert said(caplog) == [
        "Lost 2 items (write_failed: TimeoutError('no answer within 0.1 s')); "
        "2 write_failed so far, 2 lost so far in all"
    ]


def test_close_without_a_time_limit_flushes_everything() -> None:
    """1. A started writer, batches of 2, fast retries; the sink fails its first write.
    2. a, b, c are buffered; close(None): no deadline. 3. The failure is retried and all
    three are written (2, then 1); close reports 0 lost."""
    sink = ScriptedSink([ConnectionError("down")])

    async def scenario() -> tuple[BatchWriter[str], int]:
        writer = BatchWriter(
            sink.write, max_batch=2, interval=30, retry=RetryPolicy(0.01, 0.01, jitter=0.0)
        )
        for item in "abc":
            writer.add(item)
        return writer, await writer.close(None)

    writer, lost = asyncio.run(scenario())
    assert sink.attempts == [["a", "b"], ["a", "b"], ["c"]]
    assert (lost, writer.written, writer.pending, writer.failed_writes) == (0, 3, 0, 1)


def test_a_write_at_close_gets_no_more_than_the_time_left() -> None:
    """1. A writer with 5 s per write, no retry policy; the sink never answers. 2. a, b;
    close(0.3). 3. The final write is cut at the close's deadline, not after its own 5 s:
    close returns within a second, both items counted lost (write_failed)."""

    async def hangs(items: Sequence[str]) -> None:
        await asyncio.Event().wait()

    async def scenario() -> tuple[BatchWriter[str], int, float]:
        writer = BatchWriter(hangs, max_batch=2, interval=30, write_timeout=5)
        writer.add("a")
        writer.add("b")
        started = time.monotonic()
        lost = await writer.close(0.3)
        return writer, lost, time.monotonic() - started

    writer, lost, took = asyncio.run(scenario())
    assert 0.3 <= took < 1
    assert (lost, dict(writer.losses.totals)) == (2, {"write_failed": 2})
