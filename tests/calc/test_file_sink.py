"""FileSink in the pytest process: appends whole lines, counts and clears, a write that is
cancelled before or after its thread began, a failed write cut back (a real EFBIG from
the kernel), and the write thread that never holds the process's exit."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import gc
import logging
import os
import resource
import signal
import stat
import threading
from collections.abc import AsyncIterator, Awaitable, Iterator
from pathlib import Path

import pytest

from calc.sinks import FileSink, SinkError, _Append
from tests.support import wait_until

# x86-64 syscall numbers, as /proc/<pid>/task/<tid>/syscall shows them
OPENAT = 257
WRITE = 1


async def bounded(write: Awaitable[None], timeout: float = 3.0) -> None:
    """Await a write, failing the test if it has not ended within `timeout`. A write
    that hangs is cancelled twice (a first cancel only makes a begun write wait for its
    thread), so the loop is never left holding it."""
    task = asyncio.ensure_future(write)
    await asyncio.wait({task}, timeout=timeout)
    if not task.done():
        for _ in range(2):
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)
        raise AssertionError(f"the write did not end within {timeout} s")
    task.result()


def test_writes_append_whole_lines_to_a_new_file(tmp_path: Path) -> None:
    """1. Two writes to a file that does not exist yet. 2. It is created readable by all
    (0644 under umask 022) and holds every line, newline-terminated, in order."""
    path = tmp_path / "operations.lp"
    sink = FileSink(str(path))
    old = os.umask(0o022)
    try:

        async def scenario() -> None:
            await bounded(sink.write(["a", "b"]))
            await bounded(sink.write(["c"]))
            await bounded(sink.write([]))
            await sink.aclose()

        asyncio.run(scenario())
    finally:
        os.umask(old)
    assert path.read_text() == "a\nb\nc\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_count_counts_points_and_clear_removes_the_file(tmp_path: Path) -> None:
    """1. A file with 2 points and other lines. 2. count is 2. 3. clear removes it; count
    is 0; clear again is fine. 4. A directory in its place: count and clear raise
    SinkError naming it."""
    path = tmp_path / "operations.lp"
    path.write_text("operation,name=sum x=1 1\n#operation\n\nop\noperation,name=sum x=2 2\n")
    sink = FileSink(path)
    assert sink.count() == 2
    sink.clear()
    assert not path.exists()
    assert sink.count() == 0
    sink.clear()
    path.mkdir()
    with pytest.raises(SinkError) as unreadable:
        sink.count()
    assert str(unreadable.value) == (f"cannot read {path}: [Errno 21] Is a directory: '{path}'")
    with pytest.raises(SinkError) as stuck:
        sink.clear()
    assert str(stuck.value).startswith(f"cannot remove {path}: [Errno 21]")


def test_a_failed_write_raises_and_the_next_one_is_not_blocked(tmp_path: Path) -> None:
    """1. The sink's path is a directory. 2. Each write raises the OS error, none hangs
    on the sink's lock."""
    path = tmp_path / "operations.lp"
    path.mkdir()
    sink = FileSink(path)

    async def scenario() -> list[BaseException]:
        errors: list[BaseException] = []
        for _ in range(2):
            try:
                await bounded(sink.write(["x"]))
            except OSError as exc:
                errors.append(exc)
        return errors

    errors = asyncio.run(scenario())
    assert [type(e) for e in errors] == [IsADirectoryError, IsADirectoryError]


def test_an_append_not_begun_can_be_cancelled_and_a_begun_one_cannot() -> None:
    """The hand-over between a write and its thread: 1. Cancelled before the thread took
    it: the cancel holds and the thread will not write. 2. Taken by the thread first:
    the cancel is refused (the write happens) and stays refused."""
    waiting = _Append(b"x")
    assert waiting.cancel() is True
    assert waiting.cancel() is True
    assert waiting.begin() is False
    running = _Append(b"y")
    assert running.begin() is True
    assert running.cancel() is False
    assert running.cancel() is False


def blocked_write_thread(syscall_number: int = OPENAT) -> threading.Thread | None:
    """The sink's write thread once it is blocked in this system call (by default
    openat: opening a FIFO nobody reads)."""
    for thread in threading.enumerate():
        if thread.name != "file-sink-write" or thread.native_id is None:
            continue
        with contextlib.suppress(OSError):
            syscall = Path(f"/proc/self/task/{thread.native_id}/syscall").read_text()
            if syscall.split()[0] == str(syscall_number):
                return thread
    return None


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    """A FIFO with no reader: a write thread blocks opening it. Afterwards a reader
    drains it, so no thread is left blocked."""
    path = tmp_path / "operations.lp"
    os.mkfifo(path)
    try:
        yield path
    finally:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            wait_until(lambda: blocked_write_thread() is None, 5, what="the write thread")
        finally:
            os.close(fd)


def read_fifo(path: Path, into: list[bytes]) -> threading.Thread:
    def read() -> None:
        with path.open("rb") as f:
            into.append(f.read())

    thread = threading.Thread(target=read, name="fifo-reader")
    thread.start()
    return thread


@contextlib.asynccontextmanager
async def blocked_write(sink: FileSink, lines: list[str]) -> AsyncIterator[asyncio.Task[None]]:
    """A write to the FIFO, handed over once its thread is blocked opening it. On the way
    out a write still pending is cancelled twice, so the loop can always end."""
    task = asyncio.get_running_loop().create_task(sink.write(lines))
    try:
        await asyncio.to_thread(wait_until, blocked_write_thread, 5, 0.01, "a blocked write")
        yield task
    finally:
        for _ in range(2):
            if not task.done():
                task.cancel()
                await asyncio.wait({task}, timeout=0.1)


def no_write_thread() -> bool:
    return not any(t.name == "file-sink-write" for t in threading.enumerate())


def test_a_write_cancelled_after_its_thread_began_finishes_and_counts(fifo: Path) -> None:
    """1. A write to a FIFO nobody reads: its thread blocks. 2. The write is cancelled
    once: it keeps waiting, since the thread cannot be stopped. 3. A reader comes: the
    lines arrive once and the write returns normally. The thread is a daemon: a hung
    write never holds the exit."""
    received: list[bytes] = []

    async def scenario() -> bool:
        async with blocked_write(FileSink(fifo), ["one", "two"]) as task:
            thread = blocked_write_thread()
            assert thread is not None and thread.daemon
            task.cancel()
            await asyncio.sleep(0.05)
            assert not task.done()
            reader = read_fifo(fifo, received)
            await asyncio.wait({task}, timeout=3)
            await asyncio.to_thread(reader.join, 5)
            assert task.done()
            return task.cancelled()

    assert asyncio.run(scenario()) is False
    assert received == [b"one\ntwo\n"]


def test_a_second_cancel_lets_the_caller_go(fifo: Path, caplog: pytest.LogCaptureFixture) -> None:
    """1. A write blocked on a FIFO nobody reads, cancelled twice (the writer gave up).
    2. The write ends cancelled at once; the thread still hangs, the loop is not held.
    3. A reader comes while the loop still runs: the thread's late outcome is taken in
    quietly (no error from the event loop)."""
    received: list[bytes] = []

    async def scenario() -> bool:
        async with blocked_write(FileSink(fifo), ["gone"]) as task:
            task.cancel()
            await asyncio.sleep(0.05)
            task.cancel()
            await asyncio.wait({task}, timeout=3)
            cancelled = task.cancelled()
        reader = read_fifo(fifo, received)
        await asyncio.to_thread(reader.join, 5)
        await asyncio.to_thread(wait_until, no_write_thread, 5, 0.01, "the write thread to end")
        for _ in range(5):  # the thread's outcome reaches the loop a few turns later
            await asyncio.sleep(0.01)
        return cancelled

    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        assert asyncio.run(scenario()) is True
    assert received == [b"gone\n"]
    assert [r for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR] == []


def test_a_write_thread_that_outlives_its_loop_ends_quietly(
    fifo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. A write blocked on a FIFO nobody reads is given up (cancelled twice) and its
    event loop ends. 2. A reader comes: the thread writes, finds no loop to report to,
    and ends without an error."""
    failures: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", failures.append)
    received: list[bytes] = []

    async def scenario() -> None:
        async with blocked_write(FileSink(fifo), ["late"]) as task:
            task.cancel()  # the first cancel only makes the write wait for its thread
            await asyncio.wait({task}, timeout=0.05)
            task.cancel()
            await asyncio.wait({task}, timeout=3)
            assert task.cancelled()

    asyncio.run(scenario())
    read_fifo(fifo, received).join(5)
    wait_until(no_write_thread, 5, what="the write thread to end")
    assert received == [b"late\n"]
    assert failures == []


def test_a_write_refused_midway_is_cut_back_to_the_last_whole_line(tmp_path: Path) -> None:
    """A real EFBIG: 1. The process's file size limit is 100 bytes; the file holds
    'first'. 2. A batch of 122 bytes: the kernel takes part, then refuses. 3. The write
    raises EFBIG and the file is cut back to 'first'. 4. With the limit lifted the next
    line follows whole."""
    path = tmp_path / "operations.lp"
    sink = FileSink(path)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    async def scenario() -> BaseException | None:
        await bounded(sink.write(["first"]))
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, hard))
        try:
            await bounded(sink.write(["x" * 60, "y" * 60]))
        except OSError as exc:
            return exc
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        return None

    try:
        raised = asyncio.run(scenario())
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old_handler)
    assert isinstance(raised, OSError) and raised.errno == errno.EFBIG
    assert path.read_text() == "first\n"
    asyncio.run(bounded(sink.write(["last"])))
    assert path.read_text() == "first\nlast\n"


@contextlib.asynccontextmanager
async def write_into_a_full_pipe(fifo: Path) -> AsyncIterator[tuple[asyncio.Task[None], int]]:
    """A 1 MiB write to a FIFO whose reader never reads: the pipe fills and the write
    thread blocks in write(). Yields the write and the reader's descriptor; closing that
    makes the blocked write fail with EPIPE, as a reader that goes away does."""
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:
        task = asyncio.get_running_loop().create_task(FileSink(fifo).write(["x" * 2**20]))
        await asyncio.to_thread(
            wait_until, lambda: blocked_write_thread(WRITE), 5, 0.01, "a write blocked"
        )
        yield task, reader
    finally:
        with contextlib.suppress(OSError):
            os.close(reader)
        await asyncio.wait({task}, timeout=3)
        await asyncio.to_thread(wait_until, no_write_thread, 5, 0.01, "the write thread to end")


def test_a_failed_write_to_a_fifo_raises_its_own_error(fifo: Path) -> None:
    """A FIFO has no offset to cut back to. 1. A write blocks on a full pipe. 2. The
    reader goes away: the write raises the kernel's EPIPE itself, not an error of the
    cut back that a FIFO cannot have."""

    async def scenario() -> BaseException | None:
        async with write_into_a_full_pipe(fifo) as (task, reader):
            os.close(reader)
            await asyncio.wait({task}, timeout=3)
            assert task.done()
            return task.exception()

    raised = asyncio.run(scenario())
    assert isinstance(raised, BrokenPipeError), repr(raised)


def test_a_write_given_up_that_then_fails_is_taken_in_quietly(
    fifo: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """1. A write blocks on a full pipe and is given up (cancelled twice). 2. The reader
    goes away: the thread's write fails with EPIPE after nobody waits for it. 3. That
    error is taken in: asyncio reports no exception that was never retrieved."""

    async def scenario() -> bool:
        async with write_into_a_full_pipe(fifo) as (task, reader):
            for _ in range(2):
                task.cancel()
                await asyncio.wait({task}, timeout=0.1)
            assert task.cancelled()
            os.close(reader)
            await asyncio.to_thread(wait_until, no_write_thread, 5, 0.01, "the write to fail")
            for _ in range(5):  # the thread's outcome reaches the loop a few turns later
                await asyncio.sleep(0.01)
        return True

    with caplog.at_level(logging.DEBUG, logger="asyncio"):
        assert asyncio.run(scenario())
        gc.collect()  # an unretrieved exception is reported when its future is freed
    assert [
        r.getMessage() for r in caplog.records if r.name == "asyncio" and r.levelno >= logging.ERROR
    ] == []


def test_a_write_to_a_full_device_raises_enospc_though_it_cannot_be_cut_back() -> None:
    """/dev/full: every write fails with ENOSPC, and truncating a device fails too.
    The write raises the ENOSPC; the failed cut back is not what the caller sees."""

    async def scenario() -> BaseException | None:
        try:
            await bounded(FileSink("/dev/full").write(["x"]))
        except OSError as exc:
            return exc
        return None

    raised = asyncio.run(scenario())
    assert isinstance(raised, OSError) and raised.errno == errno.ENOSPC, repr(raised)
