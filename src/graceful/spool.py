"""A write-ahead spool for a BatchWriter of text lines: what was accepted but not yet
written survives the process being killed.

Every accepted line is appended to the open segment file (one `write` system call; no
fsync, so it survives the process, not the machine: exactly what a container restart in
the same pod needs, since an `emptyDir` volume lives as long as the pod). Before each batch
is taken, the open segment is sealed; a sealed segment is deleted once all its lines are
settled (written, or rejected for good). At start, `recover()` returns the lines of every
segment left by a previous process, oldest first, and they are written again: InfluxDB
overwrites a point with the same measurement, tags and timestamp, so a line written
twice is stored once.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections import deque
from pathlib import Path

logger = logging.getLogger("graceful.spool")

SUFFIX = ".spool"


class SpoolBusy(RuntimeError):
    """Another live process holds this spool directory."""


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        # One process per spool: a second one would replay and delete live segments.
        self._lock_fd = os.open(directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise SpoolBusy(f"spool directory {directory} is in use by another process") from None
        self._sealed: deque[tuple[Path, int]] = deque()  # oldest first, lines not yet settled
        self._next = self._first_free_number()
        self._open_path: Path | None = None
        self._open_fd: int | None = None
        self._open_count = 0

    def _first_free_number(self) -> int:
        numbers = [int(p.stem) for p in self.directory.glob(f"*{SUFFIX}") if p.stem.isdigit()]
        return max(numbers, default=0) + 1

    def recover(self) -> list[str]:
        """Lines left by an earlier process, oldest first; they count as sealed."""
        lines: list[str] = []
        segments = sorted(
            (p for p in self.directory.glob(f"*{SUFFIX}") if p.stem.isdigit()),
            key=lambda p: int(p.stem),
        )
        for path in segments:
            # A line cut by the kill has no newline: it was never acknowledged as stored.
            text = path.read_text(encoding="utf-8", errors="replace")
            found = [line for line in text.split("\n")[:-1] if line]
            found = found[self._settled_count(path) :]
            if found:
                self._sealed.append((path, len(found)))
                lines.extend(found)
            else:
                self._remove(path)
        if lines:
            logger.warning(
                "Recovered %d spooled lines from %d segment(s)", len(lines), len(self._sealed)
            )
        return lines

    def append(self, line: str) -> None:
        if self._open_fd is None:
            self._open_path = self.directory / f"{self._next:012d}{SUFFIX}"
            self._next += 1
            self._open_fd = os.open(self._open_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._open_count = 0
        os.write(self._open_fd, (line + "\n").encode())
        self._open_count += 1

    def seal(self) -> None:
        """Close the open segment: every line appended so far is now in a sealed one."""
        if self._open_fd is None or self._open_path is None:
            return
        os.close(self._open_fd)
        self._sealed.append((self._open_path, self._open_count))
        self._open_fd = None
        self._open_path = None
        self._open_count = 0

    def settle(self, n: int) -> None:
        """The n oldest lines are done with: delete the segments they empty."""
        while n > 0 and self._sealed:
            path, remaining = self._sealed[0]
            if remaining > n:
                self._sealed[0] = (path, remaining - n)
                # Recovery skips what was settled of a partly settled segment.
                done = self._settled_count(path) + n
                _done_file(path).write_text(str(done))
                return
            n -= remaining
            self._sealed.popleft()
            self._remove(path)

    @staticmethod
    def _settled_count(path: Path) -> int:
        try:
            return int(_done_file(path).read_text())
        except (FileNotFoundError, ValueError):
            return 0

    @staticmethod
    def _remove(path: Path) -> None:
        path.unlink(missing_ok=True)
        _done_file(path).unlink(missing_ok=True)

    @property
    def pending(self) -> int:
        return sum(count for _, count in self._sealed) + self._open_count

    def close(self) -> None:
        """Seal the open segment and release the directory; what is unsettled stays on
        disk for the next start."""
        self.seal()
        if self._lock_fd < 0:
            return
        if not self._sealed:
            # Nothing left for a successor: leave no empty directory behind.
            (self.directory / "lock").unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                self.directory.rmdir()
        os.close(self._lock_fd)
        self._lock_fd = -1


def _done_file(segment: Path) -> Path:
    return segment.with_suffix(".done")
