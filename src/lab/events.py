"""The experiment's event log, and the progress display that prints it as it grows: a
line per event, and on a terminal the phase it is in on the status line (lab.progress)."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from typing import TextIO

from lab.progress import duration, status_line


@dataclass(frozen=True)
class Event:
    t: float  # seconds since the experiment started
    wall: float  # Unix time, to line events up with k6's timestamps
    pod: str  # "" for experiment-wide events (phases)
    kind: str
    detail: str = ""

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


# Events a reader wants to see while it runs; probe noise stays in the log only.
_QUIET = frozenset({"started"})


class EventLog:
    """Append-only list of events; each is also printed as one progress line."""

    def __init__(self, progress: TextIO | None = sys.stderr, sink: TextIO | None = None) -> None:
        self.start_mono = time.monotonic()
        self.start_wall = time.time()
        self.events: list[Event] = []
        self.progress = progress
        self.sink = sink  # every event as a JSON line, written as it happens
        # The phase on the terminal's status line; none in a log or a pipe.
        self.status = status_line(progress) if progress is not None else None
        self.current_phase = ""

    def now(self) -> float:
        return time.monotonic() - self.start_mono

    def add(self, pod: str, kind: str, detail: str = "") -> Event:
        t = self.now()
        event = Event(round(t, 3), round(self.start_wall + t, 3), pod, kind, detail)
        self.events.append(event)
        if self.sink is not None:
            self.sink.write(json.dumps(event.as_dict()) + "\n")
            self.sink.flush()
        if self.progress is not None and kind not in _QUIET:
            who = pod or "lab"
            text = f"[{t:7.1f}s] {who:<28} {kind}{(': ' + detail) if detail else ''}"
            if self.status is not None:
                self.status.print(text)
                return event
            try:
                print(text, file=self.progress, flush=True)
            except (OSError, ValueError):
                # A closed or broken terminal must not stop the experiment.
                self.progress = None
        return event

    def phase(self, name: str, detail: str = "") -> Event:
        self.current_phase = f"{name}{(' ' + detail) if detail else ''}"
        if self.status is not None:
            self.status.set("phase", self.phase_text)
        return self.add("", "phase", self.current_phase)

    def phase_text(self) -> str:
        return f"lab run: phase {self.current_phase}, {duration(self.now())} elapsed"

    def close(self) -> None:
        """The run is over: its phase leaves the status line."""
        if self.status is not None:
            self.status.drop("phase")

    def of(self, pod: str) -> list[Event]:
        return [e for e in self.events if e.pod == pod]

    def first(self, pod: str, kind: str) -> Event | None:
        return next((e for e in self.events if e.pod == pod and e.kind == kind), None)
