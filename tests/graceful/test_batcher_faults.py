"""BatchWriter under hostile conditions: outages under load, every kind of sink answer,
journals that fail, a writer task that crashes, writes that outlive their timeout."""

from __future__ import annotations

import asyncio
import errno
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
    Lifecycle,
    NotAccepted,
    PermanentWriteError,
    RetryPolicy,
    ShutdownConfig,
    Spool,
)
from tests.graceful.test_tasks_and_batcher import eventually


class ScriptedSink:
    """Answers each write with the next scripted outcome (an exception to raise, or None
    for success); after the script, `then`. Records every attempt and what it stored."""

    def __init__(
        self, script: Sequence[BaseException | None] = (), then: BaseException | None = None
    ) -> None:
        self.script = list(script)
        self.then = then
        self.attempts: list[list[str]] = []
        self.stored: list[str] = []

    async def write(self, items: Sequence[str]) -> None:
        self.attempts.append(list(items))
        outcome = self.script.pop(0) if self.script else self.then
        if outcome is not None:
            raise outcome
        self.stored.extend(items)


def spool_files(directory: Path) -> int:
    return len(list(directory.glob("*.spool")))


def test_backoff_holds_under_load_and_segments_do_not_multiply(tmp_path: Path) -> None:
    """Case 3: 1. A spooled writer, batches of 10, retries with backoff from 1 s; the
    sink is down. 2. 100 adds a second for 3 s. 3. At most one attempt per backoff
    interval (1 s, then 2 s, jittered down to half): no more than 4 attempts, however
    many adds came past the batch size. 4. The spool never held more than one segment
    file for those 300 points."""

    async def scenario() -> tuple[ScriptedSink, BatchWriter[str], int]:
        sink = ScriptedSink(then=ConnectionError("refused"))
        writer = BatchWriter(
            sink.write,
            max_batch=10,
            interval=30,
            retry=RetryPolicy(initial=1.0, maximum=8.0),
            journal=Spool(tmp_path),
        )
        writer.start()
        most_files = 0
        started = time.monotonic()
        for i in range(300):
            writer.add(f"p{i}")
            most_files = max(most_files, spool_files(tmp_path))
            await asyncio.sleep(max(0.0, started + (i + 1) / 100 - time.monotonic()))
        await writer.close(0)
        return sink, writer, most_files

    sink, writer, most_files = asyncio.run(scenario())
    assert 2 <= len(sink.attempts) <= 4, len(sink.attempts)
    assert most_files == 1
    assert (writer.left_in_journal, writer.lost) == (300, 0)


def test_each_kind_of_loss_is_logged_with_its_own_total(caplog: pytest.LogCaptureFixture) -> None:
    """Case 5: 1. Three writes each lose one item for good (rejected). 2. The sink then
    goes down (slow retry) and 490 adds find the buffer full. 3. Within a second of the
    last drop a log line gives the buffer-full total (490), apart from the 3 rejected;
    the totals by reason say the same."""

    async def scenario() -> BatchWriter[str]:
        bad = PermanentWriteError("partial write: dropped=1", rejected=1)
        sink = ScriptedSink([bad, bad, bad], then=ConnectionError("down"))
        writer = BatchWriter(
            sink.write,
            max_batch=1,
            interval=30,
            max_buffer=10,
            retry=RetryPolicy(initial=30, maximum=30),
        )
        writer.start()
        for i in range(3):
            writer.add(f"bad{i}")
            lost_so_far = i + 1
            await eventually(lambda: writer.lost == lost_so_far, 2)  # noqa: B023
        for i in range(500):
            writer.add(f"p{i}")
            if i % 50 == 0:
                await asyncio.sleep(0.01)
        # The timer logs the rest of the burst a second after the first line.
        await eventually(lambda: "490 buffer_full so far" in caplog.text, 2.5)
        assert dict(writer.losses.totals) == {"rejected": 3, "buffer_full": 490}
        await writer.close(0)
        return writer

    with caplog.at_level(logging.ERROR, logger="graceful.batcher"):
        writer = asyncio.run(scenario())
    assert "3 rejected so far" in caplog.text
    # The overall total, in the form log readers look for.
    assert "493 lost so far in all" in caplog.text
    assert writer.losses.totals["shutdown"] == 10


def test_a_write_that_outlives_its_timeout_counts_once(tmp_path: Path) -> None:
    """Case 9 in the writer: 1. A sink whose write cannot be taken back once begun: when
    cancelled it finishes (0.5 s) and returns. 2. write_timeout 0.2 s. 3. The writer waits
    for that answer: the batch is written once, counted written, none lost, no retry."""
    stored: list[list[str]] = []

    async def finishing_sink(items: Sequence[str]) -> None:
        work = asyncio.ensure_future(asyncio.sleep(0.5))
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            await work  # begun: finish it
        stored.append(list(items))

    async def scenario() -> BatchWriter[str]:
        writer = BatchWriter(
            finishing_sink, interval=30, write_timeout=0.2, retry=RetryPolicy(0.01, 0.05)
        )
        writer.add("a")
        writer.add("b")
        await writer.close(3)
        return writer

    writer = asyncio.run(scenario())
    assert stored == [["a", "b"]]
    assert (writer.written, writer.lost, writer.attempts) == (2, 0, 1)


@pytest.mark.parametrize("retry", [RetryPolicy(initial=0.2, maximum=0.2), None])
def test_a_configuration_error_holds_the_points_and_retries_slowly(
    retry: RetryPolicy | None, caplog: pytest.LogCaptureFixture
) -> None:
    """Case 4, 401/403/404: 1. The sink answers 'database not found' three times, with
    or without a retry policy. 2. Items are held, not dropped: one attempt per pause
    (0.2 s here; the default policy without one), each logged as an error. 3. Once the
    configuration is right, everything is written; nothing lost."""
    hold = HoldWriteError('InfluxDB 404: database not found: "calc"')

    async def scenario() -> tuple[ScriptedSink, BatchWriter[str], float]:
        sink = ScriptedSink([hold, hold, hold])
        writer = BatchWriter(sink.write, max_batch=2, interval=30, retry=retry)
        writer.start()
        started = time.monotonic()
        writer.add("a")
        writer.add("b")
        await eventually(lambda: writer.written == 2, 5)
        took = time.monotonic() - started
        await writer.close(1)
        return sink, writer, took

    with caplog.at_level(logging.ERROR, logger="graceful.batcher"):
        sink, writer, took = asyncio.run(scenario())
    assert len(sink.attempts) == 4
    assert (writer.written, writer.lost) == (2, 0)
    assert caplog.text.count("fix the configuration") == 3
    if retry is not None:
        assert took >= 3 * 0.2 * 0.5


def test_a_batch_too_large_is_split_and_an_item_too_large_alone_is_lost() -> None:
    """Case 4, 413: 1. The sink refuses any batch of more than 2 items, and the item
    'huge' even alone. 2. A batch of 5. 3. Halves are written until they fit: every
    item but 'huge' stored, 'huge' counted lost (rejected), no backoff pause."""

    async def fussy(items: Sequence[str]) -> None:
        if len(items) > 2 or "huge" in items:
            raise BatchTooLargeError("InfluxDB 413: Request Entity Too Large")
        stored.extend(items)

    stored: list[str] = []

    async def scenario() -> tuple[BatchWriter[str], float]:
        writer = BatchWriter(fussy, max_batch=5, interval=30, retry=RetryPolicy(5, 5))
        for item in ("a", "b", "huge", "c", "d"):
            writer.add(item)
        started = time.monotonic()
        await writer.close(5)
        return writer, time.monotonic() - started

    writer, took = asyncio.run(scenario())
    assert stored == ["a", "b", "c", "d"]
    assert (writer.written, writer.lost, dict(writer.losses.totals)) == (4, 1, {"rejected": 1})
    assert took < 1


class FlakyJournal:
    """A real Spool whose append or settle can be made to fail."""

    def __init__(self, directory: Path) -> None:
        self.spool = Spool(directory)
        self.fail_append: BaseException | None = None
        self.fail_settle: list[BaseException] = []

    def recover(self) -> list[str]:
        return self.spool.recover()

    def append(self, item: str) -> None:
        if self.fail_append is not None:
            raise self.fail_append
        self.spool.append(item)

    def settle(self, n: int) -> None:
        if self.fail_settle:
            raise self.fail_settle.pop(0)
        self.spool.settle(n)

    def close(self) -> None:
        self.spool.close()


def test_a_journal_that_cannot_store_refuses_the_item_and_keeps_order(tmp_path: Path) -> None:
    """Case 6: 1. Two items accepted. 2. The journal fails (disk full), then cannot
    encode an item: each add raises NotAccepted, neither item is buffered, and both
    count as refused. 3. The disk recovers; one more item. 4. The sink gets exactly the
    three accepted items, and settling them empties the spool: no line that was never
    written is deleted, none is left over."""
    sink = ScriptedSink()

    async def scenario() -> BatchWriter[str]:
        journal = FlakyJournal(tmp_path)
        writer = BatchWriter(sink.write, interval=30, journal=journal)
        writer.add("a")
        writer.add("b")
        journal.fail_append = OSError(errno.ENOSPC, "No space left on device")
        with pytest.raises(NotAccepted, match="No space left"):
            writer.add("refused")
        assert (writer.pending, journal.spool.pending, writer.refused) == (2, 2, 1)
        journal.fail_append = ValueError("cannot encode the item")
        with pytest.raises(NotAccepted, match="cannot encode"):
            writer.add("unencodable")
        assert (writer.pending, journal.spool.pending, writer.refused) == (2, 2, 2)
        journal.fail_append = None
        writer.add("c")
        await writer.close(2)
        return writer

    writer = asyncio.run(scenario())
    assert sink.stored == ["a", "b", "c"]
    assert (writer.written, writer.lost) == (3, 0)
    assert spool_files(tmp_path) == 0


def test_a_settle_that_fails_is_owed_not_forgotten(tmp_path: Path) -> None:
    """Case 6: 1. The first batch is written but settling it fails on the disk.
    2. The lines stay in the spool (a restart would only rewrite them). 3. The next
    batch's settle pays both: the spool ends empty, and never dropped the second batch's
    lines before they were written."""

    async def scenario() -> FlakyJournal:
        journal = FlakyJournal(tmp_path)
        journal.fail_settle = [OSError(errno.EIO, "I/O error")]
        sink = ScriptedSink()
        writer = BatchWriter(sink.write, max_batch=2, interval=30, journal=journal)
        writer.start()
        writer.add("a")
        writer.add("b")
        await eventually(lambda: writer.written == 2, 2)
        assert journal.spool.pending == 2
        writer.add("c")
        assert journal.spool.pending == 3
        writer.add("d")
        await eventually(lambda: writer.written == 4, 2)
        assert journal.spool.pending == 0
        await writer.close(1)
        return journal

    asyncio.run(scenario())
    assert spool_files(tmp_path) == 0


def test_a_crashed_writer_is_logged_and_restarted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Case 6: 1. Settling the first batch raises an unexpected error: the writer task
    crashes. 2. The crash is logged and the task restarted. 3. Later batches are written
    before shutdown, and the spool is settled for all of them."""

    async def scenario() -> tuple[BatchWriter[str], FlakyJournal]:
        journal = FlakyJournal(tmp_path)
        journal.fail_settle = [RuntimeError("bug in the journal")]
        sink = ScriptedSink()
        writer = BatchWriter(sink.write, max_batch=2, interval=30, journal=journal)
        writer.start()
        writer.add("a")
        writer.add("b")
        await eventually(lambda: writer.crashes == 1, 2)
        writer.add("c")
        writer.add("d")
        await eventually(lambda: writer.written == 4, 3)
        assert journal.spool.pending == 0
        await writer.close(1)
        return writer, journal

    with caplog.at_level(logging.ERROR, logger="graceful.batcher"):
        writer, _ = asyncio.run(scenario())
    assert writer.crashes == 1
    assert "writer crashed (1 so far); restarting" in caplog.text
    assert "bug in the journal" in caplog.text
    assert spool_files(tmp_path) == 0


def test_left_in_the_spool_is_not_reported_as_saved(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Also: 1. A spooled writer, the sink down, close(0.1). 2. The log says the points
    are left in the spool and lost unless the pod's next container starts."""

    async def scenario() -> None:
        writer = BatchWriter(
            ScriptedSink(then=ConnectionError("down")).write,
            interval=30,
            retry=RetryPolicy(0.01, 0.05),
            journal=Spool(tmp_path),
        )
        writer.add("a")
        await writer.close(0.1)

    with caplog.at_level(logging.WARNING, logger="graceful.batcher"):
        asyncio.run(scenario())
    assert "Left 1 items in the spool, lost unless this pod's next container starts" in (
        caplog.text
    )


def test_close_called_twice_at_once_flushes_once() -> None:
    """A second shutdown path calling close while the first runs: 1. 3 items, a slow
    sink (0.2 s). 2. Two close(2) calls at once. 3. Each item is written once and
    counted once, and both calls return when the one flush is done."""
    writes: list[list[str]] = []

    async def slow(items: Sequence[str]) -> None:
        await asyncio.sleep(0.2)
        writes.append(list(items))

    async def scenario() -> tuple[list[int], BatchWriter[str]]:
        writer = BatchWriter(slow, interval=30)
        for item in ("a", "b", "c"):
            writer.add(item)
        return list(await asyncio.gather(writer.close(2), writer.close(2))), writer

    lost, writer = asyncio.run(scenario())
    assert lost == [0, 0]
    assert writes == [["a", "b", "c"]]
    assert (writer.written, writer.lost) == (3, 0)


def test_a_steady_loss_is_logged_about_once_a_second_not_per_item(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Case 5: 1. The sink is down (slow retry), the buffer (10) full. 2. One add every
    10 ms for 2.5 s: about 240 drops. 3. The buffer-full line comes at the first drop,
    then about once a second with a rising total (3 to 5 lines, never one per drop), and
    the last line's total is every drop. 4. An add after close is logged as closed."""

    async def scenario() -> BatchWriter[str]:
        writer = BatchWriter(
            ScriptedSink(then=ConnectionError("down")).write,
            max_batch=10,
            interval=30,
            max_buffer=10,
            retry=RetryPolicy(initial=30, maximum=30),
        )
        writer.start()
        started = time.monotonic()
        i = 0
        while time.monotonic() - started < 2.5:
            writer.add(f"p{i}")
            i += 1
            await asyncio.sleep(0.01)
        await writer.close(0)
        writer.add("late")
        return writer

    with caplog.at_level(logging.ERROR, logger="graceful.batcher"):
        writer = asyncio.run(scenario())
    totals = [int(m.group(1)) for m in re.finditer(r"; (\d+) buffer_full so far", caplog.text)]
    assert 3 <= len(totals) <= 5, totals
    assert totals == sorted(totals)
    assert totals[-1] == writer.losses.totals["buffer_full"] > 100
    assert "(closed: writer closed); 1 closed so far" in caplog.text


def test_each_rejection_is_logged_at_once(caplog: pytest.LogCaptureFixture) -> None:
    """1. Three writes in a row each lose one item for good (rejected), well within a
    second. 2. Each loss has its own log line with its running total at once, not one
    summed line a second later: a process killed a moment after a rejection leaves none
    of them unlogged (the backoff already spaces such losses out)."""

    async def scenario() -> None:
        bad = PermanentWriteError("partial write: dropped=1", rejected=1)
        sink = ScriptedSink([bad, bad, bad])
        writer = BatchWriter(sink.write, max_batch=1, interval=30, max_buffer=10)
        writer.start()
        started = time.monotonic()
        for i in range(3):
            writer.add(f"bad{i}")
            lost_so_far = i + 1
            await eventually(lambda: writer.lost == lost_so_far, 2)  # noqa: B023
            assert f"{lost_so_far} rejected so far" in caplog.text
        assert time.monotonic() - started < 1.0
        await writer.close(1)

    with caplog.at_level(logging.ERROR, logger="graceful.batcher"):
        asyncio.run(scenario())


def test_a_forced_exit_logs_the_losses_the_rate_limit_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """1. The sink is down (slow retry), the buffer (1) full. 2. Ten adds at once: the
    first drop is logged, the other nine wait for the once-a-second line. 3. A forced
    exit runs the Lifecycle's before-exit actions (the writer's `log_losses_now`, and one
    that fails, which does not stop the rest): the total of 10 is logged at once."""

    async def scenario() -> None:
        writer = BatchWriter(
            ScriptedSink(then=ConnectionError("down")).write,
            max_batch=1,
            interval=30,
            max_buffer=1,
            retry=RetryPolicy(initial=30, maximum=30),
        )
        writer.start()
        writer.add("kept")
        for i in range(10):
            writer.add(f"p{i}")
        assert "1 buffer_full so far" in caplog.text
        assert "10 buffer_full so far" not in caplog.text
        lifecycle = Lifecycle(ShutdownConfig())

        def broken() -> None:
            raise RuntimeError("broken action")

        lifecycle.before_forced_exit(broken)
        lifecycle.before_forced_exit(writer.log_losses_now)
        lifecycle.run_before_forced_exit()
        assert "10 buffer_full so far" in caplog.text
        assert "broken action" in caplog.text
        await writer.close(0)

    with caplog.at_level(logging.ERROR):
        asyncio.run(scenario())
