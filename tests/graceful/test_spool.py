"""The write-ahead spool on a real directory: segments, settling, recovery, the lock."""

from __future__ import annotations

import asyncio
import errno
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from graceful import BatchWriter, RetryPolicy, Spool, SpoolBusy


def segments(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.glob("*.spool"))


def test_lines_survive_until_settled_and_come_back_in_order(tmp_path: Path) -> None:
    """1. Append 3 lines, seal, append 2 more. 2. Settle 2: the first segment stays (one
    line left). 3. A new Spool on the same directory (after the first released it)
    recovers the 3 unsettled lines, oldest first."""
    spool = Spool(tmp_path)
    for line in ("a", "b", "c"):
        spool.append(line)
    spool.seal()
    spool.append("d")
    spool.append("e")
    spool.settle(2)
    assert spool.pending == 3
    assert len(segments(tmp_path)) == 2
    spool.close()
    again = Spool(tmp_path)
    assert again.recover() == ["c", "d", "e"]
    again.settle(3)
    assert segments(tmp_path) == []
    again.close()


def test_a_line_cut_by_a_kill_is_not_recovered(tmp_path: Path) -> None:
    """A segment whose last line has no newline (the process died mid-write) yields only
    its complete lines."""
    (tmp_path / "000000000001.spool").write_text("whole line\nhalf a li")
    spool = Spool(tmp_path)
    assert spool.recover() == ["whole line"]
    spool.close()


def test_a_second_process_cannot_take_a_spool_in_use(tmp_path: Path) -> None:
    first = Spool(tmp_path)
    with pytest.raises(SpoolBusy, match="in use by another process"):
        Spool(tmp_path)
    first.close()
    Spool(tmp_path).close()


class DownSink:
    async def write(self, items: Sequence[str]) -> None:
        raise ConnectionError("down")


class ListSink:
    def __init__(self) -> None:
        self.items: list[str] = []

    async def write(self, items: Sequence[str]) -> None:
        self.items.extend(items)


def test_batch_writer_leaves_unwritten_lines_in_the_spool_for_the_next_start(
    tmp_path: Path,
) -> None:
    """1. A writer with a spool and retries; the sink is down; close(0.2) runs out of time: the 5
    lines are not counted lost but left in the spool. 2. The next writer on the same
    spool recovers them first and writes them with the new ones."""

    async def first_life() -> BatchWriter[str]:
        writer = BatchWriter(
            DownSink().write, interval=30, retry=RetryPolicy(0.01, 0.05), journal=Spool(tmp_path)
        )
        for i in range(5):
            writer.add(f"p{i}")
        await writer.close(0.2)
        return writer

    writer = asyncio.run(first_life())
    assert (writer.lost, writer.left_in_journal) == (0, 5)

    sink = ListSink()

    async def second_life() -> BatchWriter[str]:
        writer = BatchWriter(sink.write, interval=30, journal=Spool(tmp_path))
        writer.add("new")
        await writer.close(2)
        return writer

    writer = asyncio.run(second_life())
    assert writer.recovered == 5
    assert sink.items == ["p0", "p1", "p2", "p3", "p4", "new"]
    assert segments(tmp_path) == []


def test_an_empty_spool_leaves_no_directory_behind(tmp_path: Path) -> None:
    """Everything settled: closing removes the spool's directory; unsettled: it stays."""
    empty = Spool(tmp_path / "empty")
    empty.append("x")
    empty.seal()
    empty.settle(1)
    empty.close()
    assert not (tmp_path / "empty").exists()
    kept = Spool(tmp_path / "kept")
    kept.append("y")
    kept.close()
    assert segments(tmp_path / "kept") != []


def test_segments_grow_with_lines_not_with_seals_or_settles(tmp_path: Path) -> None:
    """1. A spool with 10 lines per segment. 2. 25 lines appended, settled 3 at a time
    in between (as batches would be). 3. Never more than 3 files (25 / 10, rounded up);
    after settling everything, none."""
    spool = Spool(tmp_path, segment_lines=10)
    most = 0
    for i in range(25):
        spool.append(f"line {i}")
        if i % 4 == 3:
            spool.settle(3)
        most = max(most, len(segments(tmp_path)))
    assert most <= 3
    spool.settle(spool.pending)
    assert segments(tmp_path) == []
    spool.close()


def test_a_short_os_write_is_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """1. os.write writes at most 3 bytes per call (as it may on a signal or a nearly
    full disk). 2. Two lines appended. 3. Both are whole on disk and recovered."""
    real_write = os.write

    def short_write(fd: int, data: bytes | memoryview) -> int:
        return real_write(fd, bytes(data[:3]))

    monkeypatch.setattr(os, "write", short_write)
    spool = Spool(tmp_path)
    spool.append("first line")
    spool.append("second line")
    spool.close()
    monkeypatch.undo()
    assert Spool(tmp_path).recover() == ["first line", "second line"]


def test_a_failed_append_keeps_nothing_and_tears_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. Two lines appended. 2. The third append writes 4 bytes, then the disk is full
    (ENOSPC). 3. The append raises and the spool still counts 2. 4. The disk has room
    again: a fourth line is appended. 5. Recovery gives exactly lines 1, 2 and 4: the
    torn bytes were neither kept nor glued to the next line."""
    real_write = os.write
    calls = {"n": 0}

    def full_after_4_bytes(fd: int, data: bytes | memoryview) -> int:
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data[:4]))
        raise OSError(errno.ENOSPC, "No space left on device")

    spool = Spool(tmp_path)
    spool.append("one")
    spool.append("two")
    monkeypatch.setattr(os, "write", full_after_4_bytes)
    with pytest.raises(OSError, match="No space"):
        spool.append("three, torn")
    monkeypatch.undo()
    assert spool.pending == 2
    spool.append("four")
    assert spool.pending == 3
    spool.close()
    again = Spool(tmp_path)
    assert again.recover() == ["one", "two", "four"]
    again.close()


def test_a_segment_on_a_full_device_refuses_the_line(tmp_path: Path) -> None:
    """A real ENOSPC from the kernel: 1. The next segment's path is a link to /dev/full.
    2. The append raises and keeps nothing. 3. The next append goes to a fresh segment
    and is recovered."""
    spool = Spool(tmp_path)
    (tmp_path / "000000000001.spool").symlink_to("/dev/full")
    with pytest.raises(OSError) as raised:
        spool.append("refused")
    assert raised.value.errno == errno.ENOSPC
    assert spool.pending == 0
    spool.append("kept")
    spool.close()
    again = Spool(tmp_path)
    assert again.recover() == ["kept"]
    again.close()


def test_every_cut_of_a_segment_recovers_exactly_its_whole_lines(tmp_path: Path) -> None:
    """SIGKILL mid-write, at any byte: 1. A segment of 3 lines (one with a multi-byte
    character), 2 of them settled. 2. For each length the file could have been cut to,
    recovery returns the whole lines after the settled ones, never a torn one."""
    lines = ["alpha", "b\u00e9ta", "gamma"]
    data = "".join(line + "\n" for line in lines).encode()
    for cut in range(len(data) + 1):
        directory = tmp_path / f"cut-{cut}"
        directory.mkdir()
        (directory / "000000000001.spool").write_bytes(data[:cut])
        (directory / "000000000001.done").write_text("1")
        whole = data[:cut].count(b"\n")
        spool = Spool(directory)
        assert spool.recover() == lines[1:whole], cut
        spool.close()


def test_a_failed_settle_changes_nothing_and_can_be_repeated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. Two segments of 2 lines; settling 3 fails on the disk (the .done file cannot
    be written). 2. Nothing is marked: 4 still pending. 3. The same settle again works:
    one line left, which is the one recovered."""
    import graceful.spool

    spool = Spool(tmp_path, segment_lines=2)
    for line in ("a", "b", "c", "d"):
        spool.append(line)

    def no_space(segment: Path, settled: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(graceful.spool, "_write_done_file", no_space)
    with pytest.raises(OSError):
        spool.settle(3)
    assert spool.pending == 4
    monkeypatch.undo()
    spool.settle(3)
    assert spool.pending == 1
    spool.close()
    again = Spool(tmp_path)
    assert again.recover() == ["d"]
    again.close()


TINY_FS_SCRIPT = """
import sys
from pathlib import Path
from graceful import Spool
spool = Spool(Path(sys.argv[1]) / "spool")
accepted = 0
try:
    for i in range(100_000):
        spool.append(f"operation,name=sum,pod=p id=\\"{i:08d}\\",numbers=4.0,result=10.0 {i}")
        accepted += 1
except OSError as exc:
    print("refused", exc.errno, accepted)
spool.close()
lines = (Path(sys.argv[1]) / "spool").glob("*.spool")
whole = sum(p.read_bytes().count(b"\\n") for p in lines)
print("recovered", whole)
"""


def test_a_real_full_filesystem_refuses_lines_cleanly(tmp_path: Path) -> None:
    """1. In a mount namespace of its own, a 64 KiB tmpfs holds the spool. 2. Lines are
    appended until the filesystem is full. 3. The append that fails raises ENOSPC, and
    the lines on disk are exactly the ones accepted: none torn, none missing."""
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"no user+mount namespaces here: {probe.stderr.decode().strip()}")
    mount = tmp_path / "tiny"
    mount.mkdir()
    script = (
        f"mount -t tmpfs -o size=64k tmpfs {mount} && "
        f"exec {sys.executable} -c '{TINY_FS_SCRIPT}' {mount}"
    )
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    refused, recovered = done.stdout.splitlines()
    _, err, accepted = refused.split()
    assert int(err) == errno.ENOSPC
    assert 0 < int(accepted) < 100_000
    assert recovered == f"recovered {accepted}"


def test_leftovers_of_a_kill_mid_settle_are_cleared(tmp_path: Path) -> None:
    """A kill between the steps of a settle leaves a .done file whose segment is gone, or
    a .done-new never moved into place: 1. Both left in the directory. 2. The next
    spool recovers nothing, and closing it leaves no directory behind."""
    directory = tmp_path / "spool"
    directory.mkdir()
    (directory / "000000000003.done").write_text("2")
    (directory / "000000000004.done-new").write_text("1")
    spool = Spool(directory)
    assert spool.recover() == []
    spool.close()
    assert not directory.exists()


def test_a_partly_settled_open_segment_recovers_only_its_rest(tmp_path: Path) -> None:
    """Settling does not need a sealed segment: 1. 3 lines in the open segment, 2 of
    them settled (written). 2. One more line appended to the same file. 3. The process
    dies (the spool is never closed); the next one recovers the 2 unsettled lines only."""
    spool = Spool(tmp_path)
    for line in ("a", "b", "c"):
        spool.append(line)
    spool.settle(2)
    spool.append("d")
    assert segments(tmp_path) == ["000000000001.spool"]
    spool.seal()  # the kernel closes a killed process's files; nothing changes on disk
    os.close(spool._lock_fd)
    again = Spool(tmp_path)
    assert again.recover() == ["c", "d"]
    again.close()
