"""BatchWriter's own task: one per writer, restarted after a crash (and not waited for
when the writer closes meanwhile), and what it logs when its journal fails."""

from __future__ import annotations

import asyncio
import errno
import logging
import re
import time
from pathlib import Path

import pytest

from graceful import BatchWriter, NotAccepted
from tests.graceful.test_batcher_faults import FlakyJournal, ScriptedSink
from tests.graceful.test_tasks_and_batcher import eventually


def said(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("graceful")]


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
