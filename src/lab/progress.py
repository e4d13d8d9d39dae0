"""What long work is doing now, on the terminal's last line: `lab matrix`'s "experiment 3
of 18: v4 scale-down tcp, 2 min 10 s elapsed, about 5 min left" and the running
experiment's phase, rewritten in place (\\r) every second.

A terminal only: when stderr is a file or a pipe (a log, CI) nothing of it is written, so
logs keep just the event lines. The event lines go above the status line (StatusLine.print
clears it, writes the line, draws it again).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from typing import TextIO

CLEAR = "\r\x1b[K"  # to the line's start, and erase it
TICK_S = 1.0  # the elapsed time is redrawn this often
JOIN_S = 2.0


def is_terminal(stream: TextIO | None) -> bool:
    if stream is None:
        return False
    try:
        return stream.isatty()
    except (OSError, ValueError):  # closed
        return False


class StatusLine:
    """The last line of a terminal, made of named parts (each a function that says its
    text now), joined with " | ". A thread redraws it every TICK_S while it has parts."""

    def __init__(self, stream: TextIO, tick: float = TICK_S) -> None:
        self.stream = stream
        self.tick = tick
        self.parts: dict[str, Callable[[], str]] = {}
        self.lock = threading.Lock()  # one writer at a time: the loop's events, the ticker
        self.drawn = False
        self.ticker: threading.Thread | None = None
        self.stop = threading.Event()

    def set(self, name: str, render: Callable[[], str]) -> None:
        with self.lock:
            self.parts[name] = render
            self._draw()
            if self.ticker is None:
                self.stop.clear()
                self.ticker = threading.Thread(target=self._tick, name="status line", daemon=True)
                self.ticker.start()

    def drop(self, name: str) -> None:
        """Remove a part; the last one removed erases the line and stops the ticker."""
        ticker = None
        with self.lock:
            self.parts.pop(name, None)
            if self.parts:
                self._draw()
                return
            self._write(CLEAR if self.drawn else "")
            self.drawn = False
            ticker, self.ticker = self.ticker, None
            self.stop.set()
        if ticker is not None and ticker is not threading.current_thread():
            ticker.join(JOIN_S)

    def print(self, line: str) -> None:
        """A line that stays, above the status line."""
        with self.lock:
            self._write((CLEAR if self.drawn else "") + line + "\n")
            self.drawn = False
            self._draw()

    def text(self) -> str:
        return " | ".join(render() for render in self.parts.values())

    def _draw(self) -> None:
        if not self.parts:
            return
        width = _columns(self.stream) - 1  # a full line would wrap, and \r then misses
        text = self.text()
        if len(text) > width:
            text = text[: max(width - 3, 0)] + "..."
        self._write(CLEAR + text)
        self.drawn = True

    def _write(self, text: str) -> None:
        if not text:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            # A closed terminal must not stop the work it reports on.
            self.parts.clear()
            self.stop.set()

    def _tick(self) -> None:
        while not self.stop.wait(self.tick):
            with self.lock:
                self._draw()


def _columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (OSError, ValueError):
        return 80


_LINES: dict[int, StatusLine] = {}
_LINES_LOCK = threading.Lock()


def status_line(stream: TextIO | None = None) -> StatusLine | None:
    """The status line of `stream` (default sys.stderr), shared by everything that
    reports progress on it (the matrix and its running experiment); None when the
    stream is not a terminal."""
    stream = sys.stderr if stream is None else stream
    if not is_terminal(stream):
        return None
    with _LINES_LOCK:
        line = _LINES.get(id(stream))
        if line is None or line.stream is not stream:
            line = _LINES[id(stream)] = StatusLine(stream)
        return line


def duration(seconds: float) -> str:
    """45 s, 2 min 10 s, 1 h 5 min: as a person reads a clock."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def seconds_left(done: list[float], planned: int, current_s: float) -> float | None:
    """What is left of `planned` experiments, from the mean of those done (`done`, their
    durations) with one running for `current_s`: the ones not started at the mean each,
    and what the mean leaves of the running one. None before one is done."""
    if not done:
        return None
    if len(done) >= planned:
        return 0.0
    mean = sum(done) / len(done)
    not_started = planned - len(done) - 1
    return mean * not_started + max(mean - current_s, 0.0)


class MatrixProgress:
    """`lab matrix`'s experiment, of how many, elapsed and left: a line as each starts,
    and the status line's first part while it runs."""

    def __init__(self, planned: int, line: StatusLine | None) -> None:
        self.planned = planned
        self.line = line
        self.started = time.monotonic()
        self.done: list[float] = []  # each finished experiment's seconds
        self.index = 0
        self.name = ""
        self.current_start = self.started

    def text(self) -> str:
        now = time.monotonic()
        left = seconds_left(self.done, self.planned, now - self.current_start)
        estimate = (
            "the time left is estimated after the first"
            if left is None
            else f"about {duration(left)} left"
        )
        return (
            f"experiment {self.index} of {self.planned}: {self.name}, "
            f"{duration(now - self.started)} elapsed, {estimate}"
        )

    def begin(self, index: int, name: str) -> None:
        self.index, self.name = index, name
        self.current_start = time.monotonic()
        if self.line is not None:
            self.line.print(self.text())
            self.line.set("matrix", self.text)

    def end(self) -> None:
        self.done.append(time.monotonic() - self.current_start)

    def close(self) -> None:
        if self.line is not None:
            self.line.drop("matrix")
