"""What BatchWriter tells its operator: the log lines of each kind of sink answer, in the
order they come, with the counts a reader acts on; the defaults its API documents; and its
own task (one per writer, restarted after a crash, not waited for by a close meanwhile)."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from graceful import (
    BatchTooLargeError,
    BatchWriter,
    HoldWriteError,
    NotAccepted,
    PermanentWriteError,
    RetryPolicy,
    Spool,
)
from tests.graceful.test_batcher_faults import FlakyJournal, ScriptedSink
from tests.graceful.test_tasks_and_batcher import eventually

#: No jitter: the delays the log names are exact (0.1 s, 0.2 s, 0.4 s, ...).
EXACT = RetryPolicy(initial=0.1, maximum=0.4, multiplier=2.0, jitter=0.0)


def said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("graceful")]


def test_the_close_log_tells_each_answer_of_the_sink_in_order(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1. Four points buffered; exact backoff 0.1 s doubling. 2. close(5); the sink
    answers: refused, held (wrong database), too large, then the first half written,
    the second half with one point rejected for good. 3. The log says each in turn, with
    the counts and the next try; the close line sums it up: 3 written, 1 lost."""
    sink = ScriptedSink(
        [
            ConnectionError("refused"),
            HoldWriteError("database not found"),
            BatchTooLargeError("too big"),
            None,
            PermanentWriteError("bad point", rejected=1),
        ]
    )

    async def scenario() -> tuple[BatchWriter[str], int]:
        writer = BatchWriter(sink.write, name="points", interval=30, retry=EXACT)
        for point in ("a", "b", "c", "d"):
            assert writer.add(point)
        return writer, await writer.close(5)

    with caplog.at_level(logging.INFO, logger="graceful"):
        writer, lost = asyncio.run(scenario())
    assert lost == 1
    assert sink.attempts == [list("abcd")] * 3 + [["a", "b"], ["c", "d"]]
    assert sink.stored == ["a", "b"]
    assert (writer.written, writer.lost, writer.attempts, writer.failed_writes) == (3, 1, 5, 2)
    assert writer.losses.totals == {"rejected": 1}
    lines = said(caplog)
    assert re.fullmatch(
        r"Points writer closed in \d\.\d\d s: 3 written, 1 lost in all, 0 left in the journal",
        lines[-1],
    ), lines
    assert lines[:-1] == [
        "Logging 4 points",
        "Writing 4 points failed (ConnectionError('refused')); will retry in 0.1 s",
        "Logging 4 points",
        "Writing points refused (database not found): holding 4, next try in 0.2 s; "
        "fix the configuration",
        "Logging 4 points",
        "4 points too large for one write (too big): splitting",
        "Logging 2 points",
        "Points logged",
        "Logging 2 points",
        "Lost 1 points (rejected: bad point); 1 rejected so far, 1 lost so far in all",
    ]
    levels = {r.getMessage(): r.levelname for r in caplog.records}
    assert levels["Logging 4 points"] == "INFO"
    assert levels["Points logged"] == "INFO"
    assert levels["4 points too large for one write (too big): splitting"] == "WARNING"
    assert levels[lines[1]] == "WARNING"
    assert levels[lines[3]] == "ERROR"
    assert levels[lines[-2]] == "ERROR"


def test_a_rejection_of_none_or_of_more_than_the_batch(caplog: pytest.LogCaptureFixture) -> None:
    """1. The sink says a write was refused for good but names 0 points rejected, then a
    write of 2 with 5 rejected. 2. The first counts all written and warns that none was
    counted lost; the second counts the 2 of the batch lost, no more."""
    sink = ScriptedSink(
        [PermanentWriteError("odd answer", rejected=0), PermanentWriteError("all bad", rejected=5)]
    )

    async def scenario() -> BatchWriter[str]:
        writer = BatchWriter(sink.write, max_batch=2, max_buffer=4, interval=30)
        for point in ("a", "b", "c", "d"):
            writer.add(point)
        await writer.close(2)
        return writer

    with caplog.at_level(logging.INFO, logger="graceful"):
        writer = asyncio.run(scenario())
    assert (writer.written, writer.lost) == (2, 2)
    assert "Writing 2 items: odd answer; none counted lost" in said(caplog)
    assert writer.losses.totals == {"rejected": 2}


def test_a_point_too_large_alone_is_lost_with_its_reason(caplog: pytest.LogCaptureFixture) -> None:
    """1. Three points; the sink refuses any batch as too large. 2. Halves, then single
    points: each single one is counted lost as too large even alone."""
    sink = ScriptedSink(then=BatchTooLargeError("413"))

    async def scenario() -> BatchWriter[str]:
        writer = BatchWriter(sink.write, interval=30)
        for point in ("a", "b", "c"):
            writer.add(point)
        await writer.close(2)
        return writer

    with caplog.at_level(logging.INFO, logger="graceful"):
        writer = asyncio.run(scenario())
    assert [len(a) for a in sink.attempts] == [3, 1, 1, 1]
    assert (writer.written, writer.lost) == (0, 3)
    assert (
        "Lost 1 items (rejected: too large even alone: 413); 1 rejected so far, 1 lost so far in all"
        in said(caplog)
    )


def test_without_retry_a_failed_write_is_lost_and_logged_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The talk's v9 writer has no retry: 1. The sink refuses. 2. close: one attempt,
    every point counted lost as write_failed, logged at once with the error."""
    sink = ScriptedSink(then=ConnectionError("refused"))

    async def scenario() -> int:
        writer = BatchWriter(sink.write, interval=30)
        writer.add("a")
        writer.add("b")
        return await writer.close(2)

    with caplog.at_level(logging.INFO, logger="graceful"):
        assert asyncio.run(scenario()) == 2
    assert len(sink.attempts) == 1
    assert (
        "Lost 2 items (write_failed: ConnectionError('refused')); 2 write_failed so far, "
        "2 lost so far in all"
    ) in said(caplog)


def test_running_out_of_time_while_retrying_drops_and_says_why(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1. The sink stays down; backoff 0.1 s doubling; close(0.25). 2. Tries at 0 and
    0.1 s; the next pause (0.2 s) would outlast the 0.15 s left: the points are counted
    lost at once, the log saying the time ran out while retrying."""
    sink = ScriptedSink(then=ConnectionError("down"))

    async def scenario() -> int:
        writer = BatchWriter(sink.write, interval=30, retry=EXACT)
        writer.add("a")
        return await writer.close(0.25)

    with caplog.at_level(logging.INFO, logger="graceful"):
        assert asyncio.run(scenario()) == 1
    assert len(sink.attempts) == 2
    assert (
        "Lost 1 items (shutdown: shutdown time is up while retrying); 1 shutdown so far, "
        "1 lost so far in all"
    ) in said(caplog)


def test_no_time_left_at_all_drops_at_once(caplog: pytest.LogCaptureFixture) -> None:
    """1. close(0) with points buffered. 2. No write is tried; they are counted lost as
    the shutdown's time being up."""
    sink = ScriptedSink()

    async def scenario() -> int:
        writer = BatchWriter(sink.write, interval=30)
        writer.add("a")
        return await writer.close(0)

    with caplog.at_level(logging.INFO, logger="graceful"):
        assert asyncio.run(scenario()) == 1
    assert sink.attempts == []
    assert any("(shutdown: shutdown time is up);" in m for m in said(caplog))


def test_v8_drops_its_buffer_at_close_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    """The talk's v8: 1. flush_on_shutdown off, 2 points buffered. 2. close: nothing
    written; both counted lost with the reason."""
    sink = ScriptedSink()

    async def scenario() -> int:
        writer = BatchWriter(sink.write, interval=30, flush_on_shutdown=False)
        writer.add("a")
        writer.add("b")
        return await writer.close(2)

    with caplog.at_level(logging.INFO, logger="graceful"):
        assert asyncio.run(scenario()) == 2
    assert sink.attempts == []
    assert (
        "Lost 2 items (shutdown: writer does not flush on shutdown); 2 shutdown so far, "
        "2 lost so far in all"
    ) in said(caplog)


def test_a_spooled_writer_left_with_points_says_how_many_and_why(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """1. A spooled writer, the sink down, close(0.15) with 2 points. 2. They stay in the
    spool, are not counted lost, and the log and the close line say so."""
    sink = ScriptedSink(then=ConnectionError("down"))

    async def scenario() -> BatchWriter[str]:
        writer = BatchWriter(sink.write, interval=30, retry=EXACT, journal=Spool(tmp_path / "s"))
        writer.add("a")
        writer.add("b")
        await writer.close(0.15)
        return writer

    with caplog.at_level(logging.INFO, logger="graceful"):
        writer = asyncio.run(scenario())
    assert (writer.lost, writer.left_in_journal, writer.pending) == (0, 2, 0)
    lines = said(caplog)
    assert (
        "Left 2 items in the spool, lost unless this pod's next container starts "
        "(shutdown time is up while retrying)"
    ) in lines
    assert re.fullmatch(
        r"Items writer closed in 0\.\d\d s: 0 written, 0 lost in all, 2 left in the journal",
        lines[-1],
    ), lines
    successor = Spool(tmp_path / "s")
    assert successor.recover() == ["a", "b"]
    successor.close()


def test_the_documented_defaults() -> None:
    """BatchWriter's documented defaults (the talk's v8/v9): batches of 500 or every
    30 s, at most 100,000 waiting, no retry, flush on shutdown, 10 s per write, losses
    logged at least once a second; a retry policy backs off from 0.1 s doubling to 5 s
    with half jitter."""

    async def sink(items: Sequence[str]) -> None:
        return None

    writer: BatchWriter[str] = BatchWriter(sink)
    assert (writer.name, writer.max_batch, writer.interval, writer.max_buffer) == (
        "items",
        500,
        30.0,
        100_000,
    )
    assert (writer.retry, writer.flush_on_shutdown, writer.write_timeout) == (None, True, 10.0)
    assert (writer.journal, writer.recovered, writer.pending, writer.lost) == (None, 0, 0, 0)
    assert not writer.backing_off
    # Losses are logged at least once a second while they happen (the class docstring).
    assert (writer.losses.every, writer.losses.verb) == (1.0, "Lost")
    policy = RetryPolicy()
    assert (policy.initial, policy.maximum, policy.multiplier, policy.jitter) == (
        0.1,
        5.0,
        2.0,
        0.5,
    )
    exact = RetryPolicy(jitter=0.0).delays()
    assert [next(exact) for _ in range(8)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]


def test_an_add_after_close_is_refused_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    """1. A closed writer. 2. add returns False, nothing is buffered, and the loss is
    counted and logged as closed."""

    async def scenario() -> BatchWriter[str]:
        writer = BatchWriter(ScriptedSink().write, interval=30)
        await writer.close(1)
        assert writer.add("late") is False
        return writer

    with caplog.at_level(logging.INFO, logger="graceful"):
        writer = asyncio.run(scenario())
    assert (writer.pending, writer.losses.totals) == (0, {"closed": 1})
    assert "Lost 1 items (closed: writer closed); 1 closed so far, 1 lost so far in all" in said(
        caplog
    )


def test_the_background_writer_backs_off_and_logs_each_try(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1. A started writer, batches of 2, exact backoff; the sink fails twice. 2. Two
    points: a full batch, written at once; it fails, is retried after 0.1 s and 0.2 s
    (not sooner, however many points come meanwhile), then written. 3. While backing off
    the writer says so; afterwards it does not."""
    sink = ScriptedSink([ConnectionError("down"), ConnectionError("down")])

    async def scenario() -> tuple[BatchWriter[str], list[bool]]:
        writer = BatchWriter(sink.write, max_batch=2, interval=30, retry=EXACT)
        writer.start()
        writer.add("a")
        writer.add("b")
        await eventually(lambda: len(sink.attempts) == 1, 2)
        backing = [writer.backing_off]
        for point in ("c", "d", "e", "f"):
            writer.add(point)
        await eventually(lambda: writer.pending == 0, 3)
        backing.append(writer.backing_off)
        await writer.close(1)
        return writer, backing

    with caplog.at_level(logging.INFO, logger="graceful"):
        writer, backing = asyncio.run(scenario())
    assert backing == [True, False]
    assert (writer.written, writer.failed_writes, writer.attempts) == (6, 2, 5)
    assert len(sink.attempts) == 5  # 2 failed, then 3 full batches
    assert sink.stored == list("abcdef")
    lines = said(caplog)
    assert lines.count("Writing 2 items failed (ConnectionError('down')); will retry in 0.1 s") == 1
    assert lines.count("Writing 2 items failed (ConnectionError('down')); will retry in 0.2 s") == 1


def test_a_write_still_running_at_the_deadline_is_given_up_and_its_end_observed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1. A sink whose write, once begun, ignores its cancellation for 0.3 s and then
    fails. 2. write_timeout 0.1 s, close(0.25). 3. The write is cancelled once, still runs:
    the point is counted lost with the reason that its write's outcome is unknown.
    4. When that write ends with an error, the error is retrieved (asyncio reports no
    "exception was never retrieved"), and nothing else is written."""
    attempts: list[list[str]] = []

    async def stubborn(items: Sequence[str]) -> None:
        attempts.append(list(items))
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            await asyncio.sleep(0.3)
            raise ConnectionError("late failure") from None

    async def scenario() -> int:
        writer = BatchWriter(stubborn, interval=30, write_timeout=0.1, retry=EXACT)
        writer.add("a")
        lost = await writer.close(0.25)
        await asyncio.sleep(0.5)  # the scenario: the abandoned write ends meanwhile
        gc.collect()
        return lost

    with caplog.at_level(logging.INFO):
        assert asyncio.run(scenario()) == 1
    gc.collect()
    assert attempts == [["a"]]
    lines = said(caplog)
    assert (
        "Lost 1 items (shutdown: shutdown time is up while retrying; a write of them was "
        "still under way, its outcome unknown); 1 shutdown so far, 1 lost so far in all"
    ) in lines, lines
    assert (
        "Writing 1 items failed (TimeoutError('a write of 1 is still running after being "
        "cancelled; its answer is awaited before any other write')); will retry in 0.1 s"
    ) in lines
    assert not [r for r in caplog.records if r.name == "asyncio"], caplog.text


def test_a_crash_is_logged_in_full_and_a_close_does_not_wait_for_the_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """1. A spooled writer whose journal fails its first settle with a bug: the writer's
    task crashes. 2. The crash is logged with its count, the pause before the restart and
    the traceback. 3. close() during that 1 s pause ends the pause at once: the writer
    closes well within it, having written the points."""

    async def scenario() -> tuple[BatchWriter[str], float]:
        journal = FlakyJournal(tmp_path)
        journal.fail_settle = [RuntimeError("bug in the journal")]
        writer = BatchWriter(
            ScriptedSink().write, name="points", max_batch=2, interval=30, journal=journal
        )
        writer.start()
        writer.add("a")
        writer.add("b")
        await eventually(lambda: writer.crashes == 1, 2)
        started = time.monotonic()
        await writer.close(5)
        return writer, time.monotonic() - started

    with caplog.at_level(logging.INFO, logger="graceful"):
        writer, took = asyncio.run(scenario())
    assert took < 0.5
    assert (writer.written, writer.crashes) == (2, 1)
    crash = next(r for r in caplog.records if "crashed" in r.getMessage())
    assert crash.getMessage() == "Points writer crashed (1 so far); restarting in 1.0 s"
    assert crash.levelname == "ERROR" and crash.exc_info is not None
    assert "bug in the journal" in str(crash.exc_info[1])


def test_a_started_writer_has_one_task_named_for_it() -> None:
    """start() twice: still one writer task, named batch-writer-<name> (the name a
    server's shutdown log gives a task left running)."""

    async def scenario() -> list[str]:
        writer = BatchWriter(ScriptedSink().write, name="points", interval=30)
        writer.start()
        writer.start()
        await asyncio.sleep(0)
        names = sorted(
            t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("batch-writer")
        )
        await writer.close(1)
        return names

    assert asyncio.run(scenario()) == ["batch-writer-points"]


def test_a_refused_item_and_a_failed_settle_are_logged_with_the_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """1. The journal cannot store an item (disk full): add raises NotAccepted saying
    so, and the refusal is logged with its running total. 2. A written batch cannot be
    settled in the journal (I/O error): logged as an error to be tried again, and the
    next settle pays what is owed."""

    async def scenario() -> tuple[BatchWriter[str], FlakyJournal, str]:
        journal = FlakyJournal(tmp_path)
        writer = BatchWriter(
            ScriptedSink().write, name="points", max_batch=1, interval=30, journal=journal
        )
        writer.start()
        journal.fail_append = OSError(errno.ENOSPC, "No space left on device")
        with pytest.raises(NotAccepted) as refused:
            writer.add("x")
        journal.fail_append = None
        journal.fail_settle = [OSError(errno.EIO, "I/O error")]
        writer.add("a")
        await eventually(lambda: writer.written == 1, 2)
        assert journal.spool.pending == 1
        writer.add("b")
        await eventually(lambda: writer.written == 2, 2)
        assert journal.spool.pending == 0
        await writer.close(1)
        return writer, journal, str(refused.value)

    with caplog.at_level(logging.INFO, logger="graceful"):
        writer, _, refusal = asyncio.run(scenario())
    assert refusal == (
        "not accepted: the journal cannot store it ([Errno 28] No space left on device)"
    )
    assert writer.refused == 1
    lines = said(caplog)
    assert (
        "Refused 1 points (not_accepted: the journal cannot store them: [Errno 28] No space "
        "left on device); 1 not_accepted so far, 1 refused so far in all"
    ) in lines
    assert (
        "Cannot settle 1 points in the journal (OSError(5, 'I/O error')); will try again"
    ) in lines
    assert re.fullmatch(
        r"Points writer closed in 0\.\d\d s: 2 written, 0 lost in all, 0 left in the journal",
        lines[-1],
    ), lines
