"""The spool at its edges: an append that fails on a segment holding no line or one line,
a settle killed between its two steps, and the documented segment size."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import pytest

from graceful import Spool


def full_disk(fd: int, data: bytes | memoryview) -> int:
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_failed_first_append_leaves_no_segment_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. The disk is full at the first append of a fresh spool. 2. The append raises;
    no segment is counted or left on disk. 3. Closing leaves no directory behind."""
    spool = Spool(tmp_path / "s")
    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError, match="No space"):
        spool.append("refused")
    monkeypatch.undo()
    assert (spool.pending, spool.files) == (0, 0)
    assert list((tmp_path / "s").glob("*.spool")) == []
    spool.close()
    assert not (tmp_path / "s").exists()


def test_a_failed_append_after_one_line_keeps_that_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. One line accepted. 2. The next append fails (disk full). 3. The accepted line
    is still pending, its segment still on disk, and recovered by the next process."""
    spool = Spool(tmp_path)
    spool.append("one")
    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(OSError):
        spool.append("two")
    monkeypatch.undo()
    assert (spool.pending, spool.files) == (1, 1)
    spool.close()
    again = Spool(tmp_path)
    assert again.recover() == ["one"]
    again.close()


def test_a_settle_killed_before_its_rename_leaves_nothing_after_recovery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. 3 lines; settling 1 writes the new count beside the segment, and the process
    dies before moving it into place (os.replace never happens). 2. The next process
    recovers all 3 lines (the count never took effect) and clears the stray file."""
    spool = Spool(tmp_path)
    for line in ("a", "b", "c"):
        spool.append(line)

    def killed(source: object, target: object) -> None:
        raise KeyboardInterrupt  # the process ends here

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        spool.settle(1)
    monkeypatch.undo()
    strays = [
        p.name for p in tmp_path.iterdir() if p.suffix not in (".spool",) and p.name != "lock"
    ]
    assert strays == ["000000000001.done-new"]
    spool.close()
    again = Spool(tmp_path)
    assert again.recover() == ["a", "b", "c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000000000001.spool", "lock"]
    again.close()


def test_segments_hold_1000_lines_by_default(tmp_path: Path) -> None:
    """The documented segment size: 1,000 lines, then a new file."""
    spool = Spool(tmp_path)
    for i in range(1000):
        spool.append(f"line {i}")
    assert spool.files == 1
    spool.append("line 1000")
    assert spool.files == 2
    assert len(list(tmp_path.glob("*.spool"))) == 2
    spool.settle(1001)
    spool.close()


def test_bad_settings_and_lines_are_refused(tmp_path: Path) -> None:
    """A segment size under 1, a line with a newline, a settle of more than is pending or
    of less than nothing: each refused with what was wrong, nothing changed."""
    with pytest.raises(ValueError, match=r"^segment_lines must be at least 1$"):
        Spool(tmp_path / "a", segment_lines=0)
    spool = Spool(tmp_path / "b", segment_lines=1)
    with pytest.raises(ValueError, match=r"^a spooled line must not contain a newline$"):
        spool.append("two\nlines")
    spool.append("x")
    with pytest.raises(ValueError, match=r"^cannot settle 2 of 1 spooled lines$"):
        spool.settle(2)
    with pytest.raises(ValueError, match=r"^cannot settle -1 of 1 spooled lines$"):
        spool.settle(-1)
    assert spool.pending == 1
    spool.settle(1)
    spool.close()


def test_a_failed_append_reports_the_write_error_even_if_cleaning_up_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1. The first append of a segment fails (disk full) and removing the empty segment
    fails too (an I/O error). 2. The append raises the disk-full error, the one that
    says why the line was refused; the spool takes the next line once the disk has
    room."""
    import graceful.spool

    def io_error(path: Path) -> None:
        raise OSError(errno.EIO, "Input/output error")

    spool = Spool(tmp_path)
    monkeypatch.setattr(os, "write", full_disk)
    monkeypatch.setattr(graceful.spool, "_remove", io_error)
    with pytest.raises(OSError) as raised:
        spool.append("refused")
    assert raised.value.errno == errno.ENOSPC
    monkeypatch.undo()
    spool.append("kept")
    assert spool.pending == 1
    spool.settle(1)
    spool.close()


def test_lines_after_the_open_segment_was_settled_go_to_a_new_file(tmp_path: Path) -> None:
    """1. Two lines in the open segment, both settled: its file is deleted. 2. The next
    line goes to a new file (not to the deleted one, where it would be lost), and is
    recovered by the next process. 3. settle(0) is allowed and changes nothing."""
    spool = Spool(tmp_path)
    spool.append("a")
    spool.append("b")
    spool.settle(2)
    assert list(tmp_path.glob("*.spool")) == []
    spool.settle(0)
    spool.append("c")
    assert [p.name for p in tmp_path.glob("*.spool")] == ["000000000002.spool"]
    assert (spool.pending, spool.files) == (1, 1)
    spool.close()
    again = Spool(tmp_path)
    assert again.recover() == ["c"]
    again.close()


def test_the_spool_makes_its_directories_and_keeps_its_files_private(tmp_path: Path) -> None:
    """1. A spool in a directory three levels down that does not exist yet. 2. It is
    made; the lock and the segments are readable by their owner only (0600)."""
    directory = tmp_path / "a" / "b" / "c"
    spool = Spool(directory)
    spool.append("x")
    modes = {p.name: p.stat().st_mode & 0o777 for p in directory.iterdir()}
    assert modes == {"lock": 0o600, "000000000001.spool": 0o600}
    spool.close()


def test_a_spool_directory_that_cannot_be_made_says_which_and_why(tmp_path: Path) -> None:
    """1. The spool's path is a file. 2. SpoolUnavailable names the directory and the
    system's reason."""
    from graceful import SpoolUnavailable

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(SpoolUnavailable) as raised:
        Spool(blocker / "spool")
    assert str(raised.value) == f"cannot use spool directory {blocker / 'spool'}: Not a directory"


def test_recovery_skips_what_is_not_a_file_and_reads_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """1. Segment 1 is a device left in its place; segment 2 holds two lines. 2. Recovery
    skips the device and returns segment 2's lines, logging how many from how many
    segments."""
    (tmp_path / "000000000001.spool").symlink_to("/dev/null")
    (tmp_path / "000000000002.spool").write_text("a\nb\n")
    spool = Spool(tmp_path)
    with caplog.at_level(logging.INFO, logger="graceful"):
        assert spool.recover() == ["a", "b"]
    assert caplog.messages == ["Recovered 2 spooled lines from 1 segment(s)"]
    spool.settle(2)
    spool.close()


def test_a_write_of_one_byte_at_a_time_is_completed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """os.write writing a single byte per call (a nearly full disk): the line is still
    written whole."""
    real_write = os.write

    def one_byte(fd: int, data: bytes | memoryview) -> int:
        return real_write(fd, bytes(data[:1]))

    spool = Spool(tmp_path)
    monkeypatch.setattr(os, "write", one_byte)
    spool.append("slow line")
    monkeypatch.undo()
    spool.close()
    again = Spool(tmp_path)
    assert again.recover() == ["slow line"]
    again.settle(1)
    again.close()


def test_closing_an_empty_spool_leaves_a_directory_it_shares(tmp_path: Path) -> None:
    """1. The spool directory also holds a file that is not the spool's. 2. Everything
    settled, close: the spool's lock goes, the directory and the other file stay, and
    close does not fail."""
    (tmp_path / "notes.txt").write_text("someone else's")
    spool = Spool(tmp_path)
    spool.append("x")
    spool.settle(1)
    spool.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_closing_twice_is_harmless(tmp_path: Path) -> None:
    """close() a second time (two shutdown paths) does nothing more: no error, no file
    descriptor of the process closed, and the next process can take the directory."""
    spool = Spool(tmp_path)
    spool.append("x")
    spool.close()
    saved = os.dup(1)  # to put standard output back if a wrong close takes it
    before = sorted(os.listdir("/proc/self/fd"))
    try:
        spool.close()
        after = sorted(os.listdir("/proc/self/fd"))
    finally:
        os.dup2(saved, 1)
        os.close(saved)
    assert after == before
    again = Spool(tmp_path)
    assert again.recover() == ["x"]
    again.settle(1)
    again.close()


def _digits_only(line: str) -> str | None:
    return None if line.isdigit() else "not digits"


def test_recovery_sets_aside_what_the_check_refuses_and_keeps_the_settled_count(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """1. A segment of 6 lines, the first 2 settled (.done = 2), then damaged: a line
    that is not UTF-8 and one the owner's check refuses among the 4 unsettled. 2.
    Recovery returns the 2 good unsettled lines only, counts and logs the 2 others and
    keeps their bytes in `rejected-<segment>`. 3. Settling 1 and recovering in a new
    process returns the last good line: the rewritten segment and its .done agree."""
    directory = tmp_path / "s"
    first = Spool(directory, check=_digits_only)
    for line in ("1", "2", "3", "4"):
        first.append(line)
    first.settle(2)
    first.close()
    (segment,) = directory.glob("*.spool")
    segment.write_bytes(b"1\n2\n3\n\xff\xfe\nword\n4\n")
    caplog.set_level(logging.ERROR, logger="graceful.spool")
    second = Spool(directory, check=_digits_only)
    assert (second.recover(), second.rejected, second.pending) == (["3", "4"], 2, 2)
    rejected = directory / f"rejected-{segment.name}"
    assert rejected.read_bytes() == b"\xff\xfe\nword\n"
    assert caplog.messages == [
        f"Set aside 2 spooled line(s) of {segment.name} that are not usable (first: not "
        f"UTF-8), never written: kept in {rejected}"
    ]
    second.settle(1)
    second.close()
    third = Spool(directory, check=_digits_only)
    assert (third.recover(), third.rejected) == (["4"], 0)
    third.settle(1)
    third.close()
    assert sorted(p.name for p in directory.iterdir()) == [rejected.name]


def test_a_rejected_files_number_is_never_given_to_a_new_segment(tmp_path: Path) -> None:
    """1. A segment holding only garbage: recovery sets it all aside and removes the
    segment. 2. The next segment gets a new number, so the rejected file stays that
    one segment's lines."""
    directory = tmp_path / "s"
    directory.mkdir()
    (directory / "000000000001.spool").write_bytes(b"\x00\x01\xff\n")
    spool = Spool(directory)
    assert (spool.recover(), spool.rejected) == ([], 1)
    spool.append("next")
    spool.close()
    assert sorted(p.name for p in directory.glob("*.spool")) == [
        "000000000002.spool",
        "rejected-000000000001.spool",
    ]
