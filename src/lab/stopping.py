"""Stopping on SIGINT and SIGTERM: the signals as received, and the exception that says
a run was stopped by one.

Handlers only record. While an experiment runs, the event loop's handlers record here
and the experiment acts (a graceful teardown, or the forced one after a second signal);
between experiments of `lab matrix`, the plain handlers installed by `install` record and
the matrix stops before the next one.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lab.report import Report


class Interrupted(Exception):
    """The run was stopped by SIGINT or SIGTERM; everything was cleaned up. `report` is
    the run's report so far when the teardown was graceful and the load had started."""

    def __init__(self, signum: int, report: Report | None = None) -> None:
        self.signum = signum
        self.report = report
        self.signal_name = signal.Signals(signum).name
        super().__init__(f"interrupted by {self.signal_name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


class Signals:
    """SIGINT and SIGTERM as received, in order. Handlers only record (here, or through
    the event loop while an experiment runs); the code that runs acts on them. One
    instance is shared by `lab matrix` and each of its experiments, so a signal between
    two experiments stops the matrix too."""

    STOPPING = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: list[int] = []

    def record(self, signum: int, frame: object = None) -> None:
        self.received.append(signum)

    @property
    def first(self) -> int | None:
        return self.received[0] if self.received else None

    @contextlib.contextmanager
    def installed(self) -> Iterator[Signals]:
        """Record instead of dying, for the time no event loop handles the signals; the
        previous handlers come back at the end. Only the main thread can have handlers:
        elsewhere this changes nothing."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {sig: signal.signal(sig, self.record) for sig in self.STOPPING}
        try:
            yield self
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
