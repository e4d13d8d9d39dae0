"""The write-ahead spool on a real directory: segments, settling, recovery, the lock."""

from __future__ import annotations

import asyncio
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
