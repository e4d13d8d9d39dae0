"""timeline.png: requests per second by outcome, with the pod events marked."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on a server or in CI

import matplotlib.pyplot as plt

from lab.accounting import Request, timeline
from lab.events import Event

# Event kinds drawn as vertical marks, and their colours.
MARKS = {
    "created": "tab:blue",
    "ready": "tab:green",
    "lb-added": "tab:cyan",
    "lb-removed": "tab:orange",
    "deleted": "tab:purple",
    "sigterm": "tab:red",
    "sigkilled": "black",
    "fault": "magenta",  # a --fault's start and end, labelled with its kind
}


# Phases worth a label on the plot; the others are drawn as unlabelled lines.
LABELLED_PHASES = ("warm-up", "action", "action-complete", "steady", "stop-load", "teardown")


def draw(requests: list[Request], events: list[Event], start_wall: float, path: Path) -> None:
    start_ms = int(start_wall * 1000)
    series = timeline(requests, start_ms)
    seconds = [s for counts in series.values() for s in counts]
    first, last = (min(seconds), max(seconds)) if seconds else (0, 0)
    fig, ax = plt.subplots(figsize=(12, 5))
    try:
        for kind in sorted(series, key=lambda k: (k != "ok", k)):
            # Every second of the load gets a value, zeros included, so a failure burst
            # shows as a spike instead of a line drawn across the quiet seconds.
            xs = list(range(first, last + 1))
            ys = [series[kind].get(x, 0) for x in xs]
            ax.step(xs, ys, where="post", label=kind, linewidth=1.2 if kind == "ok" else 1.6)
        seen: set[str] = set()
        for event in events:
            colour = MARKS.get(event.kind)
            if colour is not None:
                label = event.kind if event.kind not in seen else None
                seen.add(event.kind)
                ax.axvline(event.t, color=colour, alpha=0.35, linewidth=0.8, label=label)
                if event.kind == "fault":
                    ax.annotate(
                        " ".join(event.detail.split()[:2]),
                        (event.t, 0.5),
                        xycoords=("data", "axes fraction"),
                        rotation=90,
                        va="center",
                        ha="right",
                        fontsize=8,
                        color="magenta",
                    )
            elif event.kind == "phase":
                name = event.detail.split()[0] if event.detail else ""
                ax.axvline(event.t, color="grey", linestyle="--", linewidth=0.8)
                if name in LABELLED_PHASES:
                    ax.annotate(
                        name,
                        (event.t, 1),
                        xycoords=("data", "axes fraction"),
                        rotation=90,
                        va="top",
                        ha="right",
                        fontsize=8,
                        color="dimgrey",
                    )
        ax.set_xlabel("seconds since the experiment started")
        ax.set_ylabel("requests per second (symlog)")
        ax.set_yscale("symlog", linthresh=10)
        ax.set_ylim(bottom=0)
        ax.legend(loc="lower left", fontsize=7, ncol=5, framealpha=0.9)
        ax.grid(True, alpha=0.3)
        ax.set_title("requests per second by outcome, with pod events")
        fig.tight_layout()
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
