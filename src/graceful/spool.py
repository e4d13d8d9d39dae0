"""A write-ahead spool for a BatchWriter of text lines: what was accepted but not yet
written survives the process being killed.

Every accepted line is appended to the open segment file (`write` system calls until
every byte is down; no fsync, so it survives the process, not the machine: exactly what a
container restart in the same pod needs, since an `emptyDir` volume lives as long as the
pod). A segment is sealed once it holds `segment_lines` lines, so the number of files
grows with the points, never with write attempts. The oldest lines are settled (written,
or given up for good) in order; a segment is deleted once all its lines are settled, and
a partly settled one records how many in a `.done` file (replaced atomically). At start,
`recover()` returns the lines of every segment left by a previous process, oldest first,
and they are written again: InfluxDB overwrites a point with the same measurement, tags
and timestamp, so a line written twice is stored once.

A segment can hold lines its owner never wrote (a damaged disk, a file copied in by hand):
`recover()` returns only lines that are UTF-8 and pass the owner's `check` (for calc, a
line-protocol point). The others are set aside, never returned, in `rejected-<segment>`
beside the segments (their bytes as found), counted in `rejected` and logged with the
file's path; the segment is then rewritten without them (atomically, its settled lines
kept, so its `.done` count stays true).

Failures keep memory and disk consistent: an append that fails (disk full) is undone
(the file is cut back to its last whole line, and the segment is abandoned so a torn tail
can never be glued to a later line) and raises `OSError`: the line was not accepted. A
settle that fails raises before changing the spool's bookkeeping, so settling again later
(with the count still owed) removes exactly the lines that were written.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger("graceful.spool")

SUFFIX = ".spool"
REJECTED = "rejected-"

#: check(line) -> why the line is not one its owner can use, or None when it is.
LineCheck = Callable[[str], str | None]


class SpoolBusy(RuntimeError):
    """Another live process holds this spool directory."""


class SpoolUnavailable(RuntimeError):
    """The spool directory cannot be made or opened (not a directory, permissions, a
    read-only or full filesystem): the writer cannot keep its promise, so say it at start."""


@dataclass
class _Segment:
    path: Path
    lines: int  # whole lines in the file
    settled: int  # of which the oldest `settled` are done with


class Spool:
    def __init__(
        self, directory: Path, segment_lines: int = 1000, check: LineCheck | None = None
    ) -> None:
        if segment_lines < 1:
            raise ValueError("segment_lines must be at least 1")
        self.directory = directory
        self.segment_lines = segment_lines
        self.check = check
        self.rejected = 0  # recovered lines set aside as not the owner's
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            # One process per spool: a second one would replay and delete live segments.
            self._lock_fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:  # not a directory, no permission, read-only, disk full
            raise SpoolUnavailable(
                f"cannot use spool directory {directory}: {exc.strerror or exc}"
            ) from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise SpoolBusy(f"spool directory {directory} is in use by another process") from None
        self._segments: deque[_Segment] = deque()  # oldest first; the last may be open
        self._next = self._first_free_number()
        self._open_fd: int | None = None
        self._open_size = 0  # bytes of whole lines in the open segment

    def _first_free_number(self) -> int:
        # A number with a rejected file is never used again: that file stays one
        # segment's lines.
        stems = [p.stem.removeprefix(REJECTED) for p in self.directory.glob(f"*{SUFFIX}")]
        return max((int(stem) for stem in stems if stem.isdigit()), default=0) + 1

    def recover(self) -> list[str]:
        """Lines left by an earlier process, oldest first; they are owed a settle."""
        lines: list[str] = []
        # Leftovers of a kill between two steps of a settle: a .done file whose segment is
        # gone, or a .done file never moved into place.
        for stray in [*self.directory.glob("*.done-new"), *self.directory.glob(f"*{SUFFIX}-new")]:
            stray.unlink(missing_ok=True)
        for done in self.directory.glob("*.done"):
            if not done.with_suffix(SUFFIX).exists():
                done.unlink(missing_ok=True)
        segments = sorted(
            (p for p in self.directory.glob(f"*{SUFFIX}") if p.stem.isdigit()),
            key=lambda p: int(p.stem),
        )
        for path in segments:
            # A line cut by a kill (or a failed append) has no newline: it was never
            # accepted, so it is skipped.
            if not path.is_file():  # never read a device or a pipe left in its place
                continue
            whole = [line for line in path.read_bytes().split(b"\n")[:-1] if line]
            settled = min(_settled_count(path), len(whole))
            found = self._set_aside_the_unusable(path, whole, settled)
            if found:
                self._segments.append(_Segment(path, settled + len(found), settled))
                lines.extend(found)
            else:
                _remove(path)
        if lines:
            logger.warning(
                "Recovered %d spooled lines from %d segment(s)", len(lines), len(self._segments)
            )
        return lines

    def _set_aside_the_unusable(self, path: Path, whole: list[bytes], settled: int) -> list[str]:
        """The unsettled lines of a segment its owner can use. The others go to the
        segment's rejected file, and the segment is rewritten without them."""
        found: list[str] = []
        rejected: list[bytes] = []
        reasons: list[str] = []
        for raw in whole[settled:]:
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                reason: str | None = "not UTF-8"
            else:
                reason = self.check(line) if self.check is not None else None
            if reason is None:
                found.append(line)
            else:
                rejected.append(raw)
                reasons.append(reason)
        if not rejected:
            return found
        aside = path.with_name(REJECTED + path.name)
        # Both steps replace a whole file: a kill between them leaves the segment as it
        # was, and the next start sets aside the same lines into the same file.
        _replace(aside, b"".join(raw + b"\n" for raw in rejected))
        kept = whole[:settled] + [line.encode() for line in found]
        _replace(path, b"".join(raw + b"\n" for raw in kept))
        self.rejected += len(rejected)
        logger.error(
            "Set aside %d spooled line(s) of %s that are not usable (first: %s), never "
            "written: kept in %s",
            len(rejected),
            path.name,
            reasons[0],
            aside,
        )
        return found

    def append(self, line: str) -> None:
        """Store one line; raises OSError (and stores nothing) when it cannot."""
        if "\n" in line:
            raise ValueError("a spooled line must not contain a newline")
        data = (line + "\n").encode()
        if self._open_fd is None:
            path = self.directory / f"{self._next:012d}{SUFFIX}"
            self._next += 1
            self._open_fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._open_size = 0
            self._segments.append(_Segment(path, 0, 0))
        segment = self._segments[-1]
        try:
            write_all(self._open_fd, data)
        except OSError:
            self._abandon_open_segment()
            raise
        self._open_size += len(data)
        segment.lines += 1
        if segment.lines >= self.segment_lines:
            self.seal()

    def _abandon_open_segment(self) -> None:
        """After a failed append: cut the torn bytes if we can, and never append to this
        file again (a torn tail left there is skipped on recovery, as after a kill)."""
        fd, segment = self._open_fd, self._segments[-1]
        assert fd is not None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, self._open_size)
        os.close(fd)
        self._open_fd = None
        if segment.lines == 0:
            self._segments.pop()
            with contextlib.suppress(OSError):
                _remove(segment.path)

    def seal(self) -> None:
        """Close the open segment; the next append starts a new one."""
        if self._open_fd is None:
            return
        os.close(self._open_fd)
        self._open_fd = None

    def settle(self, n: int) -> None:
        """The n oldest unsettled lines are done with: delete the segments they empty and
        record how far a partly settled one is. Raises OSError with nothing changed in
        the bookkeeping when the disk refuses; settling again later is safe."""
        if n < 0 or n > self.pending:
            raise ValueError(f"cannot settle {n} of {self.pending} spooled lines")
        emptied: list[_Segment] = []
        partial: tuple[_Segment, int] | None = None
        left = n
        for segment in self._segments:
            if left == 0:
                break
            owed = segment.lines - segment.settled
            if owed <= left:
                emptied.append(segment)
                left -= owed
            else:
                partial = (segment, segment.settled + left)
                left = 0
        # Disk first (each step can be repeated safely), bookkeeping after.
        open_emptied = (
            self._open_fd is not None and bool(emptied) and emptied[-1] is self._segments[-1]
        )
        for segment in emptied:
            _remove(segment.path)
        if partial is not None:
            _write_done_file(partial[0].path, partial[1])
        if open_emptied:
            self.seal()
        for _ in emptied:
            self._segments.popleft()
        if partial is not None:
            partial[0].settled = partial[1]

    @property
    def pending(self) -> int:
        return sum(s.lines - s.settled for s in self._segments)

    @property
    def files(self) -> int:
        """Segment files on disk now."""
        return len(self._segments)

    def close(self) -> None:
        """Seal the open segment and release the directory; what is unsettled stays on
        disk for the next start."""
        self.seal()
        if self._lock_fd < 0:
            return
        if not self._segments:
            # Nothing left for a successor: leave no empty directory behind.
            (self.directory / "lock").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.directory.rmdir()
        os.close(self._lock_fd)
        self._lock_fd = -1


def write_all(fd: int, data: bytes) -> None:
    """os.write may write fewer bytes than asked (a signal, a nearly full disk): go on
    until every byte is down, or raise."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:
            raise OSError("write made no progress")
        view = view[written:]


def _done_file(segment: Path) -> Path:
    return segment.with_suffix(".done")


def _settled_count(path: Path) -> int:
    try:
        return int(_done_file(path).read_text())
    except (FileNotFoundError, ValueError):
        return 0


def _write_done_file(segment: Path, settled: int) -> None:
    # Replaced atomically: a kill mid-write must not leave a count that skips lines
    # never written.
    done = _done_file(segment)
    temporary = done.with_suffix(".done-new")
    temporary.write_text(str(settled))
    os.replace(temporary, done)


def _replace(path: Path, data: bytes) -> None:
    temporary = path.with_name(path.name + "-new")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)
    os.replace(temporary, path)


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)
    _done_file(path).unlink(missing_ok=True)
