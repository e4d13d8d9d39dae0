"""The experiment's event log, and the progress display that prints it as it grows."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from typing import TextIO


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
            try:
                print(text, file=self.progress, flush=True)
            except (OSError, ValueError):
                # A closed or broken terminal must not stop the experiment.
                self.progress = None
        return event

    def phase(self, name: str, detail: str = "") -> Event:
        return self.add("", "phase", f"{name}{(' ' + detail) if detail else ''}")

    def of(self, pod: str) -> list[Event]:
        return [e for e in self.events if e.pod == pod]

    def first(self, pod: str, kind: str) -> Event | None:
        return next((e for e in self.events if e.pod == pod and e.kind == kind), None)
